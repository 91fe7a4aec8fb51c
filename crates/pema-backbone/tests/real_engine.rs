//! The serving engine on real Gemma 3 (prints SKIPPED without `assets/`): CPU kernels, a
//! shared 3-shot prefix and continuous batching (3 at a time over 5 prompts) decode exactly
//! what the reference does one prompt at a time, and teacher-forced contexts agree to f32
//! rounding.

use std::path::PathBuf;

use burn::backend::Flex;
use pema_backbone::{CpuKernels, Engine, GenerateOptions, Greedy, Plm, load_model_dir};

type B = Flex;

const PREFIX: &str = "English: Good morning.\nGerman: Guten Morgen.\n\
English: Thank you very much.\nGerman: Vielen Dank.\n\
English: I would like a cup of coffee.\nGerman: Ich möchte eine Tasse Kaffee.\nEnglish: ";

const SOURCES: [&str; 5] = [
    "Where is the train station?",
    "The weather is nice today.",
    "I have two brothers and a sister.",
    "Please close the door.",
    "The museum opens at nine o'clock in the morning.",
];

#[test]
fn gemma3_engine_matches_the_reference() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/gemma-3-270m");
    if !dir.join("model.gguf").exists() {
        eprintln!(
            "SKIPPED: {} is absent (cargo xtask fetch-assets)",
            dir.display()
        );
        return;
    }
    let m = load_model_dir::<B>(&dir, &Default::default()).expect("load");
    let prompts: Vec<Vec<u32>> = SOURCES
        .iter()
        .map(|s| {
            m.tokenizer
                .encode_prompt(&format!("{PREFIX}{s}\nGerman:"))
                .expect("encode")
        })
        .collect();
    let opts = GenerateOptions::uniform(20, m.tokenizer.stop_ids());
    let reference: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            m.model
                .generate(std::slice::from_ref(p), &opts, &mut Greedy)
                .expect("gen")[0]
                .clone()
        })
        .collect();
    let mut e = Engine::new(&m.model)
        .with_kernels(Box::new(CpuKernels::new()))
        .with_max_batch(3);
    e.set_prefix(&m.tokenizer.encode_prompt(PREFIX).expect("encode"))
        .expect("prefix");
    assert!(e.prefix_len() > 40, "prefix of {} tokens", e.prefix_len());
    let got = e.generate(&prompts, &opts, &mut Greedy).expect("engine");
    assert_eq!(got, reference);
    let first = m.tokenizer.decode(&got[0]).expect("decode");
    assert_eq!(first.trim(), "Wo ist der Bahnhof?");
    let a = e.teacher_forced_contexts(&prompts, &reference).expect("tf");
    let b = m
        .model
        .teacher_forced_contexts(&prompts, &reference)
        .expect("tf");
    for (x, y) in a.into_iter().zip(b) {
        let scale = y.clone().abs().max().into_scalar();
        let d = (x - y).abs().max().into_scalar();
        assert!(d <= 1e-4 * scale, "teacher forcing: {d} vs scale {scale}");
    }
}
