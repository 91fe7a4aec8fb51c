//! Decoding refuses inputs it cannot honour instead of panicking or falling back silently:
//! prompts beyond the context length, a kNN datastore of another model (width, vocabulary),
//! invalid kNN parameter files; `--length N` bounds the PLM and kNN-LM alike.

use burn::backend::NdArray;
use pema_backbone::testing::{tiny_model, tiny_vocabulary, word_level_tokenizer_json};
use pema_backbone::{Family, PemaTokenizer, Transformer};
use pema_memory::{ExactKnn, InMemory, Metric, Pair, PromptTemplate};
use pema_pipeline::{DecodeMethod, DecodeRequest, PipelineError, decode_pairs};
use pema_schedule::{KnnGridPoint, KnnLmParams, KnnTuneReport, LengthSpec, StandardizedSource};

type B = NdArray<f32>;

fn setup() -> (Transformer<B>, PemaTokenizer, PromptTemplate) {
    let model = tiny_model::<B>(Family::Llama, 4, &Default::default()).expect("model");
    let json = word_level_tokenizer_json(&tiny_vocabulary(61));
    let tok = PemaTokenizer::from_json(&json, true, Some(1), vec![2]).expect("tokenizer");
    let template = PromptTemplate::from_text("plain", "{source}").expect("template");
    (model, tok, template)
}

fn pairs(sources: &[&str]) -> Vec<Pair> {
    sources
        .iter()
        .enumerate()
        .map(|(i, s)| Pair {
            source: s.to_string(),
            target: "a b".into(),
            line: 2 * i + 1,
        })
        .collect()
}

fn request<'a>(p: &'a [Pair], t: &'a PromptTemplate, length: LengthSpec) -> DecodeRequest<'a> {
    DecodeRequest {
        pairs: p,
        template: t,
        length,
        length_ratio: 1.5,
    }
}

#[test]
fn decode_refuses_a_prompt_longer_than_the_context() {
    let (model, tok, template) = setup();
    // 300 words > the tiny model's context length of 256.
    let long = ["a"; 300].join(" ");
    let p = pairs(&["b c", &long]);
    let req = request(&p, &template, LengthSpec::Ratio);
    let e = decode_pairs(&model, &tok, &req, DecodeMethod::Plm).expect_err("too long");
    assert!(
        matches!(e, PipelineError::PromptTooLong { line: 3, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("256"), "{e}");
}

#[test]
fn decode_honours_a_fixed_length_for_the_plm() {
    let (model, tok, template) = setup();
    let p = pairs(&["a b c d e f", "g h i j k l m", "n o p"]);
    let req = request(&p, &template, LengthSpec::Steps(2));
    let d = decode_pairs(&model, &tok, &req, DecodeMethod::Plm).expect("decode");
    assert!(d.tokens <= 2 * p.len(), "{} tokens", d.tokens);
}

fn datastore(d: usize, value: u32) -> InMemory {
    InMemory {
        keys: (0..4 * d).map(|i| (i as f32 * 0.37).sin()).collect(),
        values: vec![3, 4, value, 5],
        d,
        tag: "ds".into(),
    }
}

fn knn_decode(mem: &InMemory) -> PipelineError {
    let (model, tok, template) = setup();
    let keys = StandardizedSource::new(mem, vec![0.0; mem.d], vec![1.0; mem.d]).expect("std");
    let index = ExactKnn::<B>::new(&keys, Metric::L2, 0, &Default::default()).expect("index");
    let p = pairs(&["a b"]);
    let method = DecodeMethod::KnnLm {
        index: &index,
        keys: &keys,
        params: KnnLmParams {
            k: 2,
            temperature: 1.0,
            lambda: 0.5,
        },
    };
    let req = request(&p, &template, LengthSpec::Steps(3));
    decode_pairs(&model, &tok, &req, method).expect_err("refused")
}

#[test]
fn knn_decoding_refuses_a_datastore_of_another_width() {
    // The tiny model has d = 32.
    let e = knn_decode(&datastore(16, 6));
    assert!(e.to_string().contains("hidden size is 32"), "{e}");
}

#[test]
fn knn_decoding_refuses_values_outside_the_vocabulary() {
    // The tiny model has 61 tokens.
    let e = knn_decode(&datastore(32, 100));
    assert!(e.to_string().contains("entry 2 has value 100"), "{e}");
}

#[test]
fn knn_params_file_with_invalid_values_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("knn.json");
    let point = |k, temperature, lambda| KnnGridPoint {
        params: KnnLmParams {
            k,
            temperature,
            lambda,
        },
        nll: 1.0,
    };
    for bad in [point(0, 1.0, 0.5), point(4, -1.0, 0.5), point(4, 1.0, 1.5)] {
        let report = KnnTuneReport {
            best: bad,
            plm_nll: 2.0,
            mean_nearest_distance: 1.0,
            grid: vec![bad],
            dev_entries: 3,
        };
        std::fs::write(&path, serde_json::to_string(&report).expect("json")).expect("write");
        let e = pema_pipeline::knn::read_params(&path).expect_err("invalid");
        assert!(matches!(e, PipelineError::Params { .. }), "{e}");
        assert!(e.to_string().contains("knn.json"), "{e}");
    }
}
