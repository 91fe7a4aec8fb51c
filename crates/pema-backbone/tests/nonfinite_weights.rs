//! NaN or ±∞ weights are refused when loaded, naming the tensor.

use burn::backend::NdArray;
use pema_backbone::testing::{random_weights, tiny_config};
use pema_backbone::{Family, LmHead, build_transformer};

type B = NdArray<f32>;

#[test]
fn nan_weights_are_refused_naming_the_tensor() {
    let cfg = tiny_config(Family::Llama);
    let mut w = random_weights(&cfg, 1);
    if let Some((v, _)) = w.get_mut("blk.1.ffn_up.weight") {
        v[5] = f32::NAN;
    }
    let e = build_transformer::<B>(cfg.clone(), &w, &Default::default()).expect_err("NaN weight");
    let text = e.to_string();
    assert!(
        text.contains("blk.1.ffn_up.weight") && text.contains("NaN"),
        "{text}"
    );
    let mut w = random_weights(&cfg, 1);
    if let Some((v, _)) = w.get_mut("output_norm.weight") {
        v[0] = f32::INFINITY;
    }
    let e = build_transformer::<B>(cfg, &w, &Default::default()).expect_err("inf weight");
    assert!(e.to_string().contains("output_norm.weight"), "{e}");
}

#[test]
fn a_head_with_infinite_weights_is_refused() {
    let mut w = vec![0.5f32; 4 * 2];
    w[3] = f32::NEG_INFINITY;
    let e = LmHead::<B>::from_host(vec![1.0, 1.0], 1e-6, w, 4, "t", &Default::default())
        .expect_err("inf");
    assert!(e.to_string().contains("output.weight"), "{e}");
}
