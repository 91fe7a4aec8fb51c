//! The defects of issue #16 as a user meets them through the binary: each now a clear error
//! (or a warning, or a bounded run) where it was a panic, an abort, a run without end or a
//! silently wrong answer.

use std::path::Path;

use crate::common::*;
use pema_backbone::Family;
use pema_backbone::testing::{
    random_weights, tiny_config, tiny_vocabulary, word_level_tokenizer_json, write_model_dir,
};

/// A memory from `pairs` (`n` of them) built with the sandbox's model into `name`.
fn memory(s: &Sandbox, model: &Path, name: &str, n: usize) -> String {
    let pairs = s.pairs(&format!("{name}.tsv"), n);
    let out = arg(&s.path(name));
    pema([
        "memory",
        "build",
        "--model",
        &arg(model),
        "--pairs",
        &arg(&pairs),
        "--out",
        &out,
        "--no-progress",
    ])
    .succeeds();
    out
}

fn head(s: &Sandbox, model: &Path, name: &str) -> String {
    let out = arg(&s.path(name));
    pema(["export-head", "--model", &arg(model), "--out", &out]).succeeds();
    out
}

/// A second model directory: another seed, and optionally another width.
fn other_model(s: &Sandbox, hidden: usize) -> std::path::PathBuf {
    let mut c = tiny_config(Family::Llama);
    c.hidden_size = hidden;
    let dir = s.path(&format!("other-{hidden}"));
    write_model_dir(&dir, &c, random_weights(&c, 99)).expect("other model");
    dir
}

#[test]
fn an_empty_pairs_file_builds_no_memory() {
    let s = Sandbox::new();
    let empty = s.write("empty.tsv", "");
    pema(s.build(&arg(&empty), &arg(&s.path("m")), &[])).fails_with(&["empty.tsv", "no pair"]);
}

#[test]
fn a_pair_longer_than_the_context_is_refused_with_its_line() {
    let s = Sandbox::new();
    let long = format!("a b\tc d\n{}\tb c\n", vec!["a"; 400].join(" "));
    let pairs = s.write("long.tsv", &long);
    for mode in ["teacher", "free"] {
        pema(s.build(&arg(&pairs), &arg(&s.path(mode)), &["--mode", mode]))
            .fails_with(&["line 2", "context length 256"]);
    }
    pema(s.decode(&arg(&pairs), &arg(&s.path("h")), &[]))
        .fails_with(&["line 2", "context length is 256"]);
}

#[test]
fn generation_without_a_stop_ends_at_the_context_length() {
    let s = Sandbox::new();
    let out = pema([
        "generate",
        "--model",
        &arg(&s.model()),
        "--prompt",
        "a b",
        "--stop-at-newline",
        "--max-tokens",
        "18446744073709551615",
    ]);
    let words = out.succeeds().split_whitespace().count();
    assert!(words <= 256, "{words} tokens past the context length");
}

#[test]
fn nan_weights_are_refused_naming_the_tensor() {
    let s = Sandbox::new();
    let c = tiny_config(Family::Llama);
    let mut w = random_weights(&c, 7);
    w.get_mut("blk.1.ffn_up.weight").expect("tensor").0[5] = f32::NAN;
    let dir = s.path("nan");
    write_model_dir(&dir, &c, w).expect("model");
    pema(["generate", "--model", &arg(&dir), "--prompt", "a"]).fails_with(&["blk.1.ffn_up.weight"]);
}

#[test]
fn a_tokenizer_larger_than_the_model_vocabulary_is_refused() {
    let s = Sandbox::new();
    let words = tiny_vocabulary(80);
    std::fs::write(
        s.model().join("tokenizer.json"),
        word_level_tokenizer_json(&words),
    )
    .expect("write");
    pema(["generate", "--model", &arg(&s.model()), "--prompt", "a"]).fails_with(&["80", "61"]);
}

#[test]
fn knn_tune_with_the_head_of_a_wider_model_is_an_error_not_a_panic() {
    let s = Sandbox::new();
    let mem = memory(&s, &s.model(), "mem", 8);
    let wide = other_model(&s, 48);
    let h = head(&s, &wide, "wide-head.safetensors");
    pema(on_memories(
        "knn-tune",
        [&mem, &mem, &h, &arg(&s.path("k.json"))],
        &[],
    ))
    .fails_with(&["32", "48"]);
}

#[test]
fn knn_tune_clamps_k_to_the_datastore() {
    let s = Sandbox::new();
    let mem = memory(&s, &s.model(), "mem", 8);
    let dev = memory(&s, &s.model(), "dev", 4);
    let h = head(&s, &s.model(), "head.safetensors");
    let out = s.path("k.json");
    pema(on_memories(
        "knn-tune",
        [&mem, &dev, &h, &arg(&out)],
        &["--k", "1000000000"],
    ))
    .succeeds();
    let params: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("params")).expect("JSON");
    let k = params["best"]["params"]["k"].as_u64().expect("k");
    let entries = pema(["memory", "info", &mem, "--json"]);
    let manifest: serde_json::Value = serde_json::from_str(entries.succeeds()).expect("manifest");
    assert!(k <= manifest["entries"].as_u64().expect("entries"), "k {k}");
}

#[test]
fn decoding_with_a_knn_memory_of_another_model_is_refused() {
    let s = Sandbox::new();
    let other = other_model(&s, 32);
    let mem = memory(&s, &other, "other-mem", 8);
    let dev = memory(&s, &other, "other-dev", 4);
    let h = head(&s, &other, "other-head.safetensors");
    let params = arg(&s.path("k.json"));
    pema(on_memories("knn-tune", [&mem, &dev, &h, &params], &[])).succeeds();
    let pairs = s.pairs("p.tsv", 3);
    let r = pema(s.decode(
        &arg(&pairs),
        &arg(&s.path("h")),
        &["--knn-memory", &mem, "--knn-params", &params],
    ));
    r.fails_with(&["other-mem"]);
}

#[test]
fn training_refuses_a_memory_that_fails_verify() {
    let s = Sandbox::new();
    let mem = memory(&s, &s.model(), "mem", 8);
    let dev = memory(&s, &s.model(), "dev", 4);
    let h = head(&s, &s.model(), "head.safetensors");
    let keys = s.path("mem").join("shard-000000.keys");
    let mut b = std::fs::read(&keys).expect("keys");
    b[10] ^= 0x40;
    std::fs::write(&keys, b).expect("corrupt");
    assert_eq!(pema(["memory", "verify", &mem]).code, Some(1));
    pema(on_memories(
        "train",
        [&mem, &dev, &h, &arg(&s.path("a"))],
        &["--rank", "4"],
    ))
    .fails_with(&["sha256"]);
}

#[test]
fn verify_warns_about_leftovers_of_an_interrupted_build() {
    let s = Sandbox::new();
    let mem = memory(&s, &s.model(), "mem", 4);
    std::fs::write(s.path("mem").join("manifest.json.tmp"), "{").expect("write");
    let out = pema(["memory", "verify", &mem]);
    assert!(out.succeeds().contains("warning:"), "{}", out.stdout);
    assert!(out.stdout.contains("manifest.json.tmp"), "{}", out.stdout);
}

#[test]
fn damaged_adapter_weights_fail_their_checksum() {
    let s = Sandbox::new();
    let mem = memory(&s, &s.model(), "mem", 8);
    let dev = memory(&s, &s.model(), "dev", 4);
    let h = head(&s, &s.model(), "head.safetensors");
    let ad = s.path("adapter");
    let train = |lr: &str| {
        pema(on_memories(
            "train",
            [&mem, &dev, &h, &arg(&ad)],
            &[
                "--rank",
                "4",
                "--batch1",
                "8",
                "--batch2",
                "8",
                "--epochs",
                "2",
                "--no-progress",
                "--lr",
                lr,
            ],
        ))
    };
    train("0.001").succeeds();
    // Resuming with another learning rate is refused, naming the change.
    std::fs::remove_file(ad.join("adapter.json")).expect("rm");
    train("0.01").fails_with(&["lr"]);
    let _ = std::fs::remove_dir_all(&ad);
    train("0.001").succeeds();
    let weights = ad.join("adapter.safetensors");
    let mut b = std::fs::read(&weights).expect("weights");
    let n = b.len();
    b[n - 3] ^= 0x01;
    std::fs::write(&weights, b).expect("damage");
    let pairs = s.pairs("p.tsv", 2);
    pema(s.decode(&arg(&pairs), &arg(&s.path("h")), &["--adapter", &arg(&ad)]))
        .fails_with(&["sha256"]);
}
