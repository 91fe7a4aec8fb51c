//! Training opens its memories verified: a shard whose bytes no longer match the manifest's
//! sha256 is refused with the verify error (it was used silently before).

use pema_memory::{
    BuildMode, KeyDtype, KeyState, MemoryError, MemoryMeta, MemoryWriter, Provenance, ShardData,
};
use pema_pipeline::PipelineError;

fn write_memory(dir: &std::path::Path) {
    let meta = MemoryMeta {
        model_name: "m".into(),
        model_sha256: "0".repeat(64),
        hidden_size: 2,
        vocab_size: Some(10),
        state: KeyState::pre_final_norm(0),
        dtype: KeyDtype::F32,
        tokenizer_fingerprint: "t".into(),
        template_name: "mt".into(),
        template: "{source}".into(),
        mode: BuildMode::External,
        max_extra_steps: 10,
        data_file: "pairs".into(),
        data_sha256: "0".repeat(64),
        pairs_total: 2,
        pairs_per_shard: 2,
        batch_size: 1,
    };
    let mut w = MemoryWriter::open_or_create(dir, meta).expect("writer");
    let mut s = ShardData::new(0, 2);
    for (i, v) in [3u32, 4, 5].iter().enumerate() {
        let pr = Provenance {
            pair: (i / 2) as u32,
            step: (i % 2) as u32,
        };
        s.push(&[i as f32, 1.0], *v, pr);
    }
    w.commit_shard(&s).expect("commit");
    w.finish().expect("finish");
}

#[test]
fn training_refuses_a_memory_that_fails_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_memory(dir.path());
    pema_pipeline::train::open_memory(dir.path(), "training").expect("sound memory opens");
    let keys = dir.path().join("shard-000000.keys");
    let mut b = std::fs::read(&keys).expect("read");
    b[0] ^= 0x10;
    std::fs::write(&keys, b).expect("write");
    assert!(!pema_memory::verify(dir.path()).is_ok());
    let e = pema_pipeline::train::open_memory(dir.path(), "training").expect_err("corrupt");
    assert!(
        matches!(e, PipelineError::Memory(MemoryError::Checksum { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("shard-000000.keys"), "{e}");
}

#[test]
fn gu_positions_come_from_provenance_and_refuse_the_wrong_pairs() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_memory(dir.path());
    let dev = pema_pipeline::train::open_memory(dir.path(), "λ tuning").expect("memory");
    let words: Vec<String> = ["<unk>", "a", "b", "c"].map(String::from).to_vec();
    let json = pema_backbone::testing::word_level_tokenizer_json(&words);
    let tokenizer =
        pema_backbone::PemaTokenizer::from_json(&json, false, None, vec![]).expect("tok");
    let pair = |source: &str| pema_pipeline::pairs::Pair {
        source: source.into(),
        target: "c".into(),
        line: 1,
    };
    // Entries (pair, step): (0, 0), (0, 1), (1, 0); sources of 3 and 1 tokens, ratio 1.5.
    let pairs = [pair("a b c"), pair("a")];
    let gu = pema_pipeline::train::GuDev {
        pairs: &pairs,
        tokenizer: &tokenizer,
    };
    let pos = pema_pipeline::train::dev_positions(&dev, gu, 1.5).expect("positions");
    let got: Vec<(usize, f64)> = pos.iter().map(|p| (p.step, p.horizon)).collect();
    assert_eq!(got, [(0, 5.0), (1, 5.0), (0, 2.0)]);
    // A pairs file shorter than the memory's provenance is another file: a typed error.
    let gu = pema_pipeline::train::GuDev {
        pairs: &pairs[..1],
        tokenizer: &tokenizer,
    };
    let e = pema_pipeline::train::dev_positions(&dev, gu, 1.5).expect_err("wrong pairs");
    assert!(matches!(e, PipelineError::Invalid(_)), "{e}");
    assert!(e.to_string().contains("pair 1"), "{e}");
}
