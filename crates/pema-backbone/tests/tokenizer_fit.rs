//! A tokenizer must fit the model it is loaded with: no id of its base vocabulary, BOS or EOS
//! at or beyond the model's vocabulary; a smaller tokenizer (padded embedding) is accepted.

use burn::backend::NdArray;
use pema_backbone::testing::{tiny_vocabulary, word_level_tokenizer_json, write_tiny_model_dir};
use pema_backbone::{PemaTokenizer, load_model_dir};

type B = NdArray<f32>;

#[test]
fn a_tokenizer_larger_than_the_model_vocabulary_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_tiny_model_dir(dir.path(), 1).expect("model");
    load_model_dir::<B>(dir.path(), &Default::default()).expect("matching tokenizer loads");
    // 61 ids in the model, 80 in the tokenizer.
    let json = word_level_tokenizer_json(&tiny_vocabulary(80));
    std::fs::write(dir.path().join("tokenizer.json"), json).expect("write");
    let e = load_model_dir::<B>(dir.path(), &Default::default())
        .err()
        .expect("larger tokenizer");
    let text = e.to_string();
    assert!(
        text.contains("tokenizer.json") && text.contains("79") && text.contains("61"),
        "{text}"
    );
    // A smaller tokenizer (the model pads its embedding) is accepted.
    let json = word_level_tokenizer_json(&tiny_vocabulary(40));
    std::fs::write(dir.path().join("tokenizer.json"), json).expect("write");
    load_model_dir::<B>(dir.path(), &Default::default()).expect("smaller tokenizer loads");
}

#[test]
fn bos_or_eos_outside_the_model_vocabulary_is_refused() {
    let json = word_level_tokenizer_json(&tiny_vocabulary(61));
    let tok = PemaTokenizer::from_json(&json, true, Some(1), vec![2]).expect("tok");
    tok.check_model_vocab(61).expect("fits");
    let tok = PemaTokenizer::from_json(&json, true, Some(1), vec![70]).expect("tok");
    let e = tok.check_model_vocab(61).expect_err("eos");
    assert!(e.to_string().contains("EOS id 70"), "{e}");
}
