//! Tiny-model consistency tests: KV-cache decoding vs full recomputation, left padding vs
//! single-sequence runs, teacher forcing vs decoding. No downloads.
//!
//! They run in f64 so that the bound (max |Δlogit| < 1e-4) tests the logic, not rounding: in
//! f64 the differences are ~1e-14. In f32 the same comparisons differ by up to ~2e-5 relative
//! to the largest logit (matmul blocking differs between a prefill and a one-token step), which
//! `tests/model_consistency_f32.rs` bounds separately. (The two live in different test binaries:
//! burn 0.21's NdArray<f32> and NdArray<f64> share one device whose default float dtype is
//! process-global, so mixing them in one process makes the f64 run silently compute in f32.)

use burn::backend::NdArray;
use burn::tensor::Tensor;
use pema_backbone::generate::left_pad;
use pema_backbone::testing::tiny_model;
use pema_backbone::{Family, GenerateOptions, Greedy, Plm, StepOutput, StepPolicy, Transformer};

type B = NdArray<f64>;

fn max_abs_diff(a: Tensor<B, 2>, b: Tensor<B, 2>) -> f64 {
    (a - b).abs().max().into_scalar()
}

fn full_logits(m: &Transformer<B>, seq: &[u32]) -> Tensor<B, 2> {
    let mut cache = m.new_cache(vec![0]);
    let h = m.forward(&[seq.to_vec()], &mut cache).expect("forward");
    let [_, t, d] = h.dims();
    m.logits(h.reshape([t, d]))
}

fn families() -> [Family; 2] {
    [Family::Llama, Family::Gemma3]
}

#[test]
fn kv_cache_decoding_equals_full_recomputation() {
    let dev = Default::default();
    for family in families() {
        let m = tiny_model::<B>(family, 7, &dev).expect("model");
        // 12 tokens: longer than the tiny Gemma window (4), so local layers are exercised.
        let seq: Vec<u32> = vec![1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45];
        let full = full_logits(&m, &seq);
        let mut cache = m.new_cache(vec![0]);
        let mut rows = Vec::new();
        let h = m
            .forward(&[seq[..3].to_vec()], &mut cache)
            .expect("prefill");
        rows.push(m.logits(h.reshape([3, 32])));
        for &tok in &seq[3..] {
            let h = m.forward(&[vec![tok]], &mut cache).expect("step");
            rows.push(m.logits(h.reshape([1, 32])));
        }
        let incremental = Tensor::cat(rows, 0);
        let diff = max_abs_diff(full, incremental);
        assert!(diff < 1e-4, "{family:?}: max |Δlogit| = {diff}");
    }
}

#[test]
fn left_padded_batch_equals_each_prompt_alone() {
    let dev = Default::default();
    for family in families() {
        let m = tiny_model::<B>(family, 11, &dev).expect("model");
        let prompts: Vec<Vec<u32>> = vec![
            vec![1, 3, 5, 7, 9, 11, 13, 15, 17],
            vec![1, 4],
            vec![1, 8, 16, 24, 32, 40],
        ];
        let opts = GenerateOptions::uniform(8, vec![]);
        let batched = m.generate(&prompts, &opts, &mut Greedy).expect("batched");
        for (i, p) in prompts.iter().enumerate() {
            let alone = m
                .generate(std::slice::from_ref(p), &opts, &mut Greedy)
                .expect("alone");
            assert_eq!(batched[i], alone[0], "{family:?} prompt {i}");
        }
        // Logits, not just argmax: last-position logits of the padded batch vs alone.
        let (padded, pad) = left_pad(&prompts);
        let mut cache = m.new_cache(pad);
        let h = m.forward(&padded, &mut cache).expect("forward");
        let [b, t, d] = h.dims();
        let last = m.logits(h.narrow(1, t - 1, 1).reshape([b, d]));
        for (i, p) in prompts.iter().enumerate() {
            let alone = full_logits(&m, p);
            let n = p.len();
            let diff = max_abs_diff(last.clone().narrow(0, i, 1), alone.narrow(0, n - 1, 1));
            assert!(diff < 1e-4, "{family:?} prompt {i}: max |Δlogit| = {diff}");
        }
    }
}

/// Records f(c) at every step while decoding greedily.
struct Recorder(Vec<Tensor<B, 2>>);

impl StepPolicy<B> for Recorder {
    fn next_tokens(&mut self, out: &StepOutput<B>) -> Vec<u32> {
        self.0.push(out.context.0.clone());
        Greedy.next_tokens(out)
    }
}

#[test]
fn teacher_forcing_on_the_greedy_output_reproduces_the_decoding_contexts() {
    let dev = Default::default();
    for family in families() {
        let m = tiny_model::<B>(family, 3, &dev).expect("model");
        let prompt = vec![1u32, 6, 12, 18, 24];
        let mut rec = Recorder(Vec::new());
        let generated = m
            .generate(
                std::slice::from_ref(&prompt),
                &GenerateOptions::uniform(7, vec![]),
                &mut rec,
            )
            .expect("generate");
        let tf = m
            .teacher_forced_contexts(&[prompt], &[generated[0].clone()])
            .expect("teacher forcing");
        let decoded = Tensor::cat(rec.0, 0);
        let diff = max_abs_diff(decoded, tf[0].clone());
        assert!(diff < 1e-4, "{family:?}: max |Δf(c)| = {diff}");
    }
}

#[test]
fn stop_tokens_and_invalid_inputs() {
    let dev = Default::default();
    let m = tiny_model::<B>(Family::Llama, 5, &dev).expect("model");
    let prompt = vec![1u32, 2, 3];
    let free = m
        .generate(
            std::slice::from_ref(&prompt),
            &GenerateOptions::uniform(5, vec![]),
            &mut Greedy,
        )
        .expect("generate");
    let first = free[0][0];
    let stopped = m
        .generate(
            &[prompt],
            &GenerateOptions::uniform(5, vec![first]),
            &mut Greedy,
        )
        .expect("generate");
    assert_eq!(stopped[0], vec![first]);
    assert!(
        m.generate(&[vec![]], &GenerateOptions::uniform(5, vec![]), &mut Greedy)
            .is_err()
    );
    assert!(m.forward(&[vec![9999]], &mut m.new_cache(vec![0])).is_err());
}
