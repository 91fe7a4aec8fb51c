//! LoRA on the real Gemma 3 270M weights (skips when `assets/` is absent): two steps, finite
//! losses that go down on the batch trained on, and the prompt/target tokenisation the decoder
//! expects (the target ends with the single newline token).

use std::path::PathBuf;
use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use pema_backbone::load_model_dir;
use pema_lora::{LoraConfig, encode_pairs, merge, newline_id, train};
use pema_memory::{Pair, PromptTemplate};

type B = NdArray<f32>;

#[test]
fn two_lora_steps_on_gemma3_270m() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/gemma-3-270m");
    if !dir.join("model.gguf").exists() {
        eprintln!(
            "SKIPPED: {} is absent; run `cargo xtask fetch-assets` to run this test",
            dir.join("model.gguf").display()
        );
        return;
    }
    let t0 = Instant::now();
    let m = load_model_dir::<B>(&dir, &Default::default()).expect("load gemma");
    let load_s = t0.elapsed().as_secs_f64();
    let pairs = vec![
        Pair {
            source: "Where is the train station?".into(),
            target: "Wo ist der Bahnhof?".into(),
            line: 1,
        },
        Pair {
            source: "Thank you very much.".into(),
            target: "Vielen Dank.".into(),
            line: 2,
        },
    ];
    let ex = encode_pairs(&m.tokenizer, &PromptTemplate::mt(), &pairs).expect("encode");
    let nl = newline_id(&m.tokenizer).expect("newline");
    assert!(m.tokenizer.stop_ids().contains(&nl));
    assert_eq!(m.tokenizer.token_text(nl).as_deref(), Some("\n"));
    for e in &ex {
        assert_eq!(e.target.last(), Some(&nl));
        assert_eq!(e.prompt.first(), m.tokenizer.bos_id().as_ref());
    }
    let cfg = LoraConfig {
        lr: 1e-3,
        batch_size: 2,
        max_steps: Some(2),
        max_epochs: 10,
        ..LoraConfig::default()
    };
    let t1 = Instant::now();
    let (lora, report) = train::<Autodiff<B>>(&m.model, &ex, &ex, &cfg).expect("train");
    eprintln!(
        "gemma-3-270m LoRA: load {load_s:.1}s, 2 steps + 3 dev passes {:.1}s, losses {:?}, dev {:?}, \
         {} trainable, peak RSS {:?} bytes",
        t1.elapsed().as_secs_f64(),
        report.train_loss,
        report.dev_loss,
        report.trainable_params,
        report.peak_rss_bytes
    );
    assert_eq!(report.steps, 2);
    assert!(report.train_loss.iter().all(|l| l.is_finite() && *l > 0.0));
    assert!(
        report.train_loss[1] < report.train_loss[0],
        "{:?}",
        report.train_loss
    );
    // q and v of 18 blocks at rank 8: 8·(640 + 1024) + 8·(640 + 256) per block.
    assert_eq!(
        report.trainable_params,
        18 * 8 * ((640 + 1024) + (640 + 256))
    );
    let merged = merge(&m.model, &lora).expect("merge");
    assert_eq!(merged.blk.len(), 18);
}
