//! Tests on the real assets (`cargo xtask fetch-assets`). Each test prints why it skips when
//! the assets are absent, so CI without assets stays green and says so.

use std::path::PathBuf;

use burn::backend::NdArray;
use pema_backbone::{GenerateOptions, Greedy, LoadedModel, Plm, load_model_dir};

type B = NdArray<f32>;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Loads `assets/<name>` or prints a skip reason and returns `None`.
fn load(name: &str) -> Option<LoadedModel<B>> {
    let dir = workspace_root().join("assets").join(name);
    if !dir.join("model.gguf").exists() {
        eprintln!(
            "SKIPPED: {} is absent; run `cargo xtask fetch-assets` to run this test",
            dir.join("model.gguf").display()
        );
        return None;
    }
    Some(load_model_dir::<B>(&dir, &Default::default()).expect("load real model"))
}

const THREE_SHOT: &str = "English: Good morning.\nGerman: Guten Morgen.\n\
English: Thank you very much.\nGerman: Vielen Dank.\n\
English: I like to read books.\nGerman: Ich lese gerne Bücher.\n\
English: Where is the train station?\nGerman:";

#[test]
fn gemma3_translates_where_is_the_train_station() {
    let Some(m) = load("gemma-3-270m") else {
        return;
    };
    let prompt = m.tokenizer.encode_prompt(THREE_SHOT).expect("encode");
    let opts = GenerateOptions::uniform(16, m.tokenizer.stop_ids());
    let out = m
        .model
        .generate(&[prompt], &opts, &mut Greedy)
        .expect("generate");
    let text = m.tokenizer.decode(&out[0]).expect("decode");
    assert_eq!(text.trim(), "Wo ist der Bahnhof?", "got {text:?}");
}

#[test]
fn smollm2_completes_an_easy_prompt() {
    let Some(m) = load("smollm2-135m") else {
        return;
    };
    let prompt = m
        .tokenizer
        .encode_prompt("The capital of France is")
        .expect("encode");
    let opts = GenerateOptions::uniform(4, m.tokenizer.eos_ids().to_vec());
    let out = m
        .model
        .generate(&[prompt], &opts, &mut Greedy)
        .expect("generate");
    let text = m.tokenizer.decode(&out[0]).expect("decode");
    assert!(text.contains("Paris"), "got {text:?}");
}
