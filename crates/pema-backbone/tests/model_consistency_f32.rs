//! The f32 counterpart of `model_consistency.rs`: KV-cache decoding differs from a full
//! recomputation by rounding only (≤ 1e-4 of the largest logit).

use burn::backend::NdArray;
use burn::tensor::Tensor;
use pema_backbone::Family;
use pema_backbone::testing::tiny_model;

#[test]
fn f32_differences_are_rounding_only() {
    let dev = Default::default();
    for family in [Family::Llama, Family::Gemma3] {
        let m = tiny_model::<NdArray<f32>>(family, 7, &dev).expect("model");
        let seq: Vec<u32> = vec![1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45];
        let mut cache = m.new_cache(vec![0]);
        let h = m
            .forward(std::slice::from_ref(&seq), &mut cache)
            .expect("forward");
        let full = m.logits(h.reshape([12, 32]));
        let mut cache = m.new_cache(vec![0]);
        let mut rows = Vec::new();
        for &tok in &seq {
            let h = m.forward(&[vec![tok]], &mut cache).expect("step");
            rows.push(m.logits(h.reshape([1, 32])));
        }
        let inc = Tensor::cat(rows, 0);
        let scale = full.clone().abs().max().into_scalar();
        let diff = (full - inc).abs().max().into_scalar();
        assert!(diff <= 1e-4 * scale, "{family:?}: {diff} vs scale {scale}");
    }
}
