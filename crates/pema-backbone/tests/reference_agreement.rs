//! Agreement with an independent implementation, llama.cpp through llama-cpp-python:
//! - `fixtures/reference/<model>.json` (gen.py): llama.cpp on the quantised GGUF as shipped;
//!   mean NLL within 0.1 nats, identical tokenisation.
//! - `fixtures/reference/<model>.f32.json` (gen_f32.py): llama.cpp on the same weights
//!   dequantised to F32, so both sides compute in f32 (on quantised weights llama.cpp also
//!   quantises activations, which moves log-probs by up to ~0.1): same top-1 everywhere,
//!   |Δ log-prob| < 0.05 over the top-10, and mean NLL within 0.01.
//!
//! Skips with a printed reason when the assets are absent.

use std::path::PathBuf;

use burn::backend::NdArray;
use pema_backbone::load_model_dir;
use serde_json::Value;

type B = NdArray<f32>;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn check_model(name: &str) {
    let dir = root().join("assets").join(name);
    if !dir.join("model.gguf").exists() {
        eprintln!(
            "SKIPPED {name}: {} absent; run `cargo xtask fetch-assets`",
            dir.display()
        );
        return;
    }
    let read = |file: String| -> Value {
        let path = root().join("fixtures/reference").join(file);
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json")
    };
    let reference = read(format!("{name}.json"));
    let reference_f32 = read(format!("{name}.f32.json"));
    let m = load_model_dir::<B>(&dir, &Default::default()).expect("load");

    // Tokenisation: ours (no BOS, no special tokens added) equals llama.cpp's.
    for case in reference["tokenization"].as_array().expect("tokenization") {
        let t = case["text"].as_str().expect("text");
        let ours = m.tokenizer.encode_continuation(t).expect("encode");
        assert_eq!(ours, ids(&case["ids"]), "{name}: tokenisation of {t:?}");
    }

    // Mean NLL on the same tokens.
    for (label, case) in reference["nll"].as_object().expect("nll") {
        let toks = ids(&case["ids"]);
        let want = case["mean_nll"].as_f64().expect("mean_nll");
        let want_f32 = reference_f32["nll"][label]["mean_nll"]
            .as_f64()
            .expect("f32 nll");
        assert_eq!(toks, ids(&reference_f32["nll"][label]["ids"]));
        let (got, n) = m.model.nll(&toks).expect("nll");
        eprintln!(
            "{name} {label}: pema {got:.4} vs llama.cpp {want:.4} (quantised) / {want_f32:.4} (F32) \
             nats/token over {n}"
        );
        assert_eq!(n as u64, case["n_predicted"].as_u64().expect("n"));
        assert!(
            (got - want).abs() < 0.1,
            "{name} {label}: NLL {got} vs {want}"
        );
        assert!(
            (got - want_f32).abs() < 0.01,
            "{name} {label}: NLL {got} vs F32 {want_f32}"
        );
    }

    // Next-token log-probs at several positions of 3 prompts.
    let mut worst = 0f64;
    for (label, case) in reference_f32["prompts"].as_object().expect("prompts") {
        let toks = ids(&case["ids"]);
        let lp = m.model.log_probs_all(&toks).expect("log-probs");
        for p in case["positions"].as_array().expect("positions") {
            let pos = p["pos"].as_u64().expect("pos") as usize;
            let row: Vec<f32> = lp
                .clone()
                .narrow(0, pos, 1)
                .into_data()
                .into_vec::<f32>()
                .expect("row");
            let top10 = p["top10"].as_array().expect("top10");
            let ref_top1 = top10[0][0].as_u64().expect("id") as usize;
            let our_top1 = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .expect("argmax");
            assert_eq!(our_top1, ref_top1, "{name} {label} pos {pos}: top-1");
            for e in top10 {
                let id = e[0].as_u64().expect("id") as usize;
                let want = e[1].as_f64().expect("logprob");
                let d = (row[id] as f64 - want).abs();
                worst = worst.max(d);
                assert!(
                    d < 0.05,
                    "{name} {label} pos {pos} id {id}: {} vs {want}",
                    row[id]
                );
            }
        }
    }
    eprintln!("{name}: max |Δ log-prob| over all reference top-10 entries = {worst:.4}");
}

#[test]
fn smollm2_agrees_with_llama_cpp() {
    check_model("smollm2-135m");
}

#[test]
fn gemma3_agrees_with_llama_cpp() {
    check_model("gemma-3-270m");
}
