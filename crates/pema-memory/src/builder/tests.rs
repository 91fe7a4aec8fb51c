//! Tests of the memory builder.

use super::*;
use crate::toy::{ToyPlm, ToyTokenizer};
use crate::{MemorySource, MemoryStore};
use burn::backend::NdArray;
use burn::tensor::Tensor;
use std::cell::RefCell;

type B = NdArray<f32>;

fn model(d: usize) -> ModelInfo {
    ModelInfo {
        name: "toy".into(),
        weights_sha256: "1".repeat(64),
        hidden_size: d,
        state: KeyState::pre_final_norm(1),
    }
}

fn pairs_file(dir: &Path, n: usize) -> PairsFile {
    let mut text = String::new();
    for i in 0..n {
        let tgt = "ZQ".repeat(i % 5);
        text.push_str(&format!(
            "{{\"en\":\"source number {i}\",\"du\":\"{tgt}\"}}\n"
        ));
    }
    let p = dir.join("pairs.jsonl");
    std::fs::write(&p, text).expect("write pairs");
    PairsFile::read(&p).expect("pairs")
}

fn entries(dir: &Path) -> (Vec<f32>, Vec<u32>, Vec<Provenance>) {
    let s = MemoryStore::open(dir).expect("open");
    let ids: Vec<u64> = (0..s.len() as u64).collect();
    let (mut k, mut v) = (Vec::new(), Vec::new());
    s.gather(&ids, &mut k, &mut v).expect("gather");
    let p = ids
        .iter()
        .map(|&i| s.provenance(i).expect("prov"))
        .collect();
    (k, v, p)
}

#[test]
fn free_running_follows_the_paper() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pairs = pairs_file(tmp.path(), 13);
    let dev = Default::default();
    let plm = ToyPlm::<B>::new(6, &dev);
    let tok = ToyTokenizer;
    let cfg = BuildConfig {
        batch_size: 3,
        pairs_per_shard: 5,
        ..BuildConfig::default()
    };
    let out = tmp.path().join("mem");
    let sum = build_memory(&plm, &tok, &model(6), &pairs, &cfg, &out).expect("build");
    assert_eq!((sum.pairs_total, sum.pairs_skipped, sum.shards), (13, 0, 3));
    // Reference: greedy toy decoding, key t = f(prompt + ŵ_<t), value y_t.
    let (mut rk, mut rv, mut rp) = (Vec::new(), Vec::new(), Vec::new());
    for (i, p) in pairs.pairs.iter().enumerate() {
        let mut hist = tok
            .encode_prompt(&cfg.template.render(&p.source))
            .expect("enc");
        let gold = tok.encode_target(&p.target).expect("enc");
        let mut steps = 0;
        for _ in 0..gold.len() + 10 {
            rk.push(plm.context_of(&hist));
            steps += 1;
            let t = plm.next_of(&hist);
            hist.push(t);
            if tok.stop_ids().contains(&t) {
                break;
            }
        }
        rk.truncate(rk.len() - (steps - steps.min(gold.len())));
        for (t, &y) in gold.iter().enumerate().take(steps) {
            rv.push(y);
            rp.push(Provenance {
                pair: i as u32,
                step: t as u32,
            });
        }
    }
    let (k, v, p) = entries(&out);
    assert_eq!(v, rv);
    assert_eq!(p, rp);
    assert_eq!(k, rk.concat());
    assert!(crate::verify(&out).is_ok());
    // Running again on a complete memory skips everything and changes nothing.
    let before = std::fs::read(out.join("manifest.json")).expect("read");
    let again = build_memory(&plm, &tok, &model(6), &pairs, &cfg, &out).expect("rebuild");
    assert_eq!(again.pairs_skipped, 13);
    assert_eq!(
        before,
        std::fs::read(out.join("manifest.json")).expect("read")
    );
}

#[test]
fn teacher_forced_uses_the_gold_prefix() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pairs = pairs_file(tmp.path(), 7);
    let dev = Default::default();
    let plm = ToyPlm::<B>::new(4, &dev);
    let tok = ToyTokenizer;
    let cfg = BuildConfig {
        mode: BuildMode::TeacherForced,
        dtype: KeyDtype::F16,
        batch_size: 2,
        pairs_per_shard: 3,
        ..BuildConfig::default()
    };
    let out = tmp.path().join("mem");
    build_memory(&plm, &tok, &model(4), &pairs, &cfg, &out).expect("build");
    let (k, v, _) = entries(&out);
    let mut rk = Vec::new();
    let mut rv = Vec::new();
    for p in &pairs.pairs {
        let mut hist = tok
            .encode_prompt(&cfg.template.render(&p.source))
            .expect("enc");
        for y in tok.encode_target(&p.target).expect("enc") {
            rk.extend(
                plm.context_of(&hist)
                    .iter()
                    .map(|&x| half::f16::from_f32(x).to_f32()),
            );
            rv.push(y);
            hist.push(y);
        }
    }
    assert_eq!(v, rv);
    assert_eq!(k, rk);
}

/// A PLM wrapper that records everything the PLM side is given.
struct Spy {
    inner: ToyPlm<B>,
    seen: RefCell<Vec<Vec<u32>>>,
    teacher_calls: RefCell<usize>,
}

impl Plm<B> for Spy {
    fn hidden_size(&self) -> usize {
        self.inner.d
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab
    }
    fn device(&self) -> burn::backend::ndarray::NdArrayDevice {
        self.inner.device
    }
    fn generate(
        &self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
        policy: &mut dyn StepPolicy<B>,
    ) -> pema_backbone::error::Result<Vec<Vec<u32>>> {
        self.seen.borrow_mut().extend(prompts.iter().cloned());
        self.inner.generate(prompts, options, policy)
    }
    fn teacher_forced_contexts(
        &self,
        prompts: &[Vec<u32>],
        continuations: &[Vec<u32>],
    ) -> pema_backbone::error::Result<Vec<Tensor<B, 2>>> {
        *self.teacher_calls.borrow_mut() += 1;
        self.inner.teacher_forced_contexts(prompts, continuations)
    }
}

#[test]
fn free_running_never_shows_targets_to_the_plm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pairs = pairs_file(tmp.path(), 9);
    let dev = Default::default();
    let spy = Spy {
        inner: ToyPlm::new(3, &dev),
        seen: RefCell::new(Vec::new()),
        teacher_calls: RefCell::new(0),
    };
    let cfg = BuildConfig::default();
    build_memory(
        &spy,
        &ToyTokenizer,
        &model(3),
        &pairs,
        &cfg,
        &tmp.path().join("m"),
    )
    .expect("build");
    let marker = ToyTokenizer.encode_target("ZQ").expect("enc");
    let seen = spy.seen.borrow();
    assert_eq!(seen.len(), 9);
    for p in seen.iter() {
        assert!(
            !p.windows(2).any(|w| w == marker.as_slice()),
            "target leaked: {p:?}"
        );
    }
    assert_eq!(*spy.teacher_calls.borrow(), 0);
}

#[test]
fn resume_refuses_different_metadata_and_limit_works() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pairs = pairs_file(tmp.path(), 10);
    let dev = Default::default();
    let plm = ToyPlm::<B>::new(3, &dev);
    let out = tmp.path().join("m");
    let cfg = BuildConfig {
        limit: Some(4),
        ..BuildConfig::default()
    };
    let s = build_memory(&plm, &ToyTokenizer, &model(3), &pairs, &cfg, &out).expect("b");
    assert_eq!(s.pairs_total, 4);
    let cfg2 = BuildConfig {
        template: PromptTemplate::formality(),
        ..cfg.clone()
    };
    let e =
        build_memory(&plm, &ToyTokenizer, &model(3), &pairs, &cfg2, &out).expect_err("mismatch");
    assert!(matches!(e, MemoryError::ResumeMismatch { .. }), "{e}");
    assert!(e.to_string().contains("template"), "{e}");
    let e = build_memory(&plm, &ToyTokenizer, &model(4), &pairs, &cfg, &out).expect_err("width");
    assert!(matches!(e, MemoryError::Invalid(_)), "{e}");
}

#[test]
fn a_pair_longer_than_the_context_is_refused_with_its_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("pairs.tsv");
    let long = "x".repeat(500);
    std::fs::write(&p, format!("a\tb\n\nsrc\t{long}\n")).expect("write");
    let pairs = PairsFile::read(&p).expect("pairs");
    let dev = Default::default();
    let mut plm = ToyPlm::<B>::new(3, &dev);
    plm.context_length = Some(64);
    for mode in [BuildMode::FreeRunning, BuildMode::TeacherForced] {
        let cfg = BuildConfig {
            mode,
            ..BuildConfig::default()
        };
        let out = tmp.path().join(mode.short());
        let e =
            build_memory(&plm, &ToyTokenizer, &model(3), &pairs, &cfg, &out).expect_err("too long");
        assert!(matches!(e, MemoryError::TooLong { line: 3, .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("line 3") && text.contains("500 tokens") && text.contains("64"),
            "{text}"
        );
    }
}

#[test]
fn an_empty_pairs_file_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let p = tmp.path().join("empty.jsonl");
    std::fs::write(&p, "\n\n").expect("write");
    let pairs = PairsFile::read(&p).expect("pairs");
    let plm = ToyPlm::<B>::new(3, &Default::default());
    let out = tmp.path().join("m");
    let e = build_memory(
        &plm,
        &ToyTokenizer,
        &model(3),
        &pairs,
        &BuildConfig::default(),
        &out,
    )
    .expect_err("empty");
    assert!(matches!(e, MemoryError::NoPairs { .. }), "{e}");
    assert!(e.to_string().contains("empty.jsonl"), "{e}");
    assert!(!out.join("manifest.json").exists());
}

#[test]
fn a_zero_batch_size_is_refused_not_clamped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pairs = pairs_file(tmp.path(), 3);
    let plm = ToyPlm::<B>::new(3, &Default::default());
    let cfg = BuildConfig {
        batch_size: 0,
        ..BuildConfig::default()
    };
    let e = build_memory(
        &plm,
        &ToyTokenizer,
        &model(3),
        &pairs,
        &cfg,
        &tmp.path().join("m"),
    )
    .expect_err("batch 0");
    assert!(e.to_string().contains("--batch-size"), "{e}");
    assert!(validate_batch_size(1).is_ok());
}

#[test]
fn the_summary_gives_entries_per_pair_and_the_vocabulary_is_recorded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pairs = pairs_file(tmp.path(), 10);
    let mut plm = ToyPlm::<B>::new(3, &Default::default());
    // A newline at every step: the PLM stops after its first token.
    plm.newline_every = 1;
    let out = tmp.path().join("m");
    let s = build_memory(
        &plm,
        &ToyTokenizer,
        &model(3),
        &pairs,
        &BuildConfig::default(),
        &out,
    )
    .expect("build");
    assert!(s.entries_per_pair <= 1.0, "{}", s.entries_per_pair);
    assert!(s.is_low_yield());
    let m = MemoryStore::open(&out).expect("open");
    assert_eq!(m.manifest().meta.vocab_size, Some(ToyTokenizer::VOCAB));
}
