//! The serving engine on tiny models in f64 (differences are rounding, ~1e-14; the bound 1e-9
//! tests the logic): a shared prefix gives the outputs of recomputing it, continuous batching
//! gives the outputs of one-at-a-time decoding, and the CPU kernels (host attention, host KV
//! cache) give the reference kernels' outputs.

use std::collections::HashMap;

use burn::backend::NdArray;
use burn::tensor::Tensor;
use pema_backbone::testing::tiny_model;
use pema_backbone::{
    CpuKernels, Engine, Family, GenerateOptions, Greedy, Plm, StepOutput, StepPolicy, Transformer,
};

type B = NdArray<f64>;

const TOL: f64 = 1e-9;

fn host(t: Tensor<B, 2>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("vec")
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Greedy decoding that records f(c) and the logits of every (sequence, step).
#[derive(Default)]
struct Recorder {
    seen: HashMap<(usize, usize), (Vec<f64>, Vec<f64>)>,
    max_rows: usize,
}

impl StepPolicy<B> for Recorder {
    fn next_tokens(&mut self, out: &StepOutput<B>) -> Vec<u32> {
        let [n, d] = out.context.0.dims();
        let v = out.logits.dims()[1];
        let c = host(out.context.0.clone());
        let l = host(out.logits.clone());
        self.max_rows = self.max_rows.max(n);
        for r in 0..n {
            let key = (out.seqs[r], out.steps[r]);
            let row = (
                c[r * d..(r + 1) * d].to_vec(),
                l[r * v..(r + 1) * v].to_vec(),
            );
            assert!(self.seen.insert(key, row).is_none(), "{key:?} twice");
        }
        Greedy.next_tokens(out)
    }
}

fn prompts() -> Vec<Vec<u32>> {
    // A shared beginning [1, 7, 3, 9, 4, 11], then different continuations; one prompt shares
    // only part of it, one is exactly the prefix, one is shorter than it, one shares nothing.
    let p = [1u32, 7, 3, 9, 4, 11];
    vec![
        [&p[..], &[20, 21, 22]].concat(),
        [&p[..], &[30]].concat(),
        [&p[..4], &[40, 41, 42, 43, 44]].concat(),
        p.to_vec(),
        p[..3].to_vec(),
        vec![2, 50, 51],
        [&p[..], &[52, 53, 54, 55, 56, 57, 58]].concat(),
    ]
}

fn options(n: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: (0..n).map(|i| 3 + (i * 5) % 9).collect(),
        stop_tokens: vec![],
    }
}

fn run(
    e: &Engine<'_, B>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> (Vec<Vec<u32>>, Recorder) {
    let mut rec = Recorder::default();
    let out = e.generate(prompts, opts, &mut rec).expect("generate");
    (out, rec)
}

fn assert_same(
    family: Family,
    what: &str,
    a: &(Vec<Vec<u32>>, Recorder),
    b: &(Vec<Vec<u32>>, Recorder),
) {
    assert_eq!(a.0, b.0, "{family:?} {what}: tokens");
    assert_eq!(a.1.seen.len(), b.1.seen.len(), "{family:?} {what}: steps");
    for (k, (c, l)) in &a.1.seen {
        let (c2, l2) = &b.1.seen[k];
        let dc = max_diff(c, c2);
        let dl = max_diff(l, l2);
        assert!(
            dc < TOL && dl < TOL,
            "{family:?} {what} {k:?}: |Δf| {dc}, |Δlogit| {dl}"
        );
    }
}

fn one_at_a_time(
    m: &Transformer<B>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
) -> (Vec<Vec<u32>>, Recorder) {
    let mut all = (Vec::new(), Recorder::default());
    for (i, p) in prompts.iter().enumerate() {
        let o = GenerateOptions {
            max_new_tokens: vec![opts.max_for(i)],
            stop_tokens: opts.stop_tokens.clone(),
        };
        let (out, rec) = run(&Engine::new(m), std::slice::from_ref(p), &o);
        all.0.push(out[0].clone());
        for ((_, step), v) in rec.seen {
            all.1.seen.insert((i, step), v);
        }
    }
    all
}

#[test]
fn continuous_batching_equals_one_at_a_time() {
    let dev = Default::default();
    for family in [Family::Llama, Family::Gemma3] {
        let m = tiny_model::<B>(family, 21, &dev).expect("model");
        let ps = prompts();
        let mut opts = options(ps.len());
        let alone = one_at_a_time(&m, &ps, &opts);
        for max_batch in [1, 2, 3, 100] {
            let e = Engine::new(&m).with_max_batch(max_batch);
            let got = run(&e, &ps, &opts);
            assert!(got.1.max_rows <= max_batch);
            assert_same(family, &format!("max_batch {max_batch}"), &got, &alone);
        }
        // Stop tokens end sequences at different steps; a zero budget yields nothing.
        opts.stop_tokens = vec![alone.0[0][1], alone.0[2][0]];
        opts.max_new_tokens[5] = 0;
        let alone = one_at_a_time(&m, &ps, &opts);
        assert!(alone.0[5].is_empty() && alone.0[2].len() == 1);
        let got = run(&Engine::new(&m).with_max_batch(2), &ps, &opts);
        assert_same(family, "stop tokens", &got, &alone);
    }
}

#[test]
fn shared_prefix_equals_recomputing_it() {
    let dev = Default::default();
    for family in [Family::Llama, Family::Gemma3] {
        let m = tiny_model::<B>(family, 5, &dev).expect("model");
        let ps = prompts();
        let opts = options(ps.len());
        let plain = run(&Engine::new(&m).with_max_batch(3), &ps, &opts);
        // A prefix longer than some prompts' shared part, ending in a token no prompt has there.
        let mut e = Engine::new(&m).with_max_batch(3);
        e.set_prefix(&[1, 7, 3, 9, 4, 11, 59]).expect("prefix");
        assert_eq!(e.prefix_len(), 7);
        let got = run(&e, &ps, &opts);
        assert_same(family, "prefix", &got, &plain);
        // Teacher forcing and scoring reuse it too.
        let conts: Vec<Vec<u32>> = (0..ps.len()).map(|i| vec![5 + i as u32, 8, 13]).collect();
        let a = e.teacher_forced_contexts(&ps, &conts).expect("tf");
        let b = Engine::new(&m)
            .teacher_forced_contexts(&ps, &conts)
            .expect("tf");
        for (x, y) in a.into_iter().zip(b) {
            assert_eq!(x.dims(), y.dims());
            let d = max_diff(&host(x), &host(y));
            assert!(d < TOL, "{family:?} teacher forcing: {d}");
        }
        let seq = [&ps[0][..], &[3, 3, 8]].concat();
        let d = max_diff(
            &host(e.log_probs_all(&seq).expect("lp")),
            &host(m.log_probs_all(&seq).expect("lp")),
        );
        assert!(d < TOL, "{family:?} log-probs: {d}");
    }
}

#[test]
fn cpu_kernels_equal_the_reference() {
    let dev = Default::default();
    for family in [Family::Llama, Family::Gemma3] {
        let m = tiny_model::<B>(family, 9, &dev).expect("model");
        let ps = prompts();
        let opts = options(ps.len());
        let reference = run(&Engine::new(&m).with_max_batch(4), &ps, &opts);
        let mut e = Engine::new(&m)
            .with_kernels(Box::new(CpuKernels::new()))
            .with_max_batch(4);
        assert_eq!(e.kernels_name(), "cpu");
        e.set_prefix(&ps[0][..6]).expect("prefix");
        let got = run(&e, &ps, &opts);
        assert_same(family, "cpu kernels", &got, &reference);
        let conts: Vec<Vec<u32>> = (0..ps.len()).map(|i| vec![2 + i as u32; 20]).collect();
        let a = e.teacher_forced_contexts(&ps, &conts).expect("tf");
        let b = m.teacher_forced_contexts(&ps, &conts).expect("tf");
        for (x, y) in a.into_iter().zip(b) {
            let d = max_diff(&host(x), &host(y));
            assert!(d < TOL, "{family:?} teacher forcing (cpu): {d}");
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let dev = Default::default();
    let m = tiny_model::<B>(Family::Llama, 1, &dev).expect("model");
    let e = Engine::new(&m);
    let opts = GenerateOptions::uniform(2, vec![]);
    assert!(e.generate(&[vec![1, 9999]], &opts, &mut Greedy).is_err());
    assert!(e.generate(&[], &opts, &mut Greedy).is_err());
    assert!(e.teacher_forced_contexts(&[vec![1]], &[vec![]]).is_err());
    assert!(
        m.forward_ragged(&pema_backbone::Reference, &[&[1, 2]], &mut [])
            .is_err()
    );
    /// A policy that returns one token too many.
    struct Bad;
    impl StepPolicy<B> for Bad {
        fn next_tokens(&mut self, out: &StepOutput<B>) -> Vec<u32> {
            vec![0; out.rows() + 1]
        }
    }
    assert!(e.generate(&[vec![1, 2]], &opts, &mut Bad).is_err());
}

#[test]
fn generation_stops_at_the_context_length() {
    use pema_backbone::build_transformer;
    use pema_backbone::testing::{random_weights, tiny_config};
    let dev = Default::default();
    let mut cfg = tiny_config(Family::Llama);
    cfg.context_length = 12;
    let w = random_weights(&cfg, 3);
    let model: Transformer<B> = build_transformer(cfg, &w, &dev).expect("model");
    // usize::MAX new tokens and no stop token: the context length ends every sequence.
    let opts = GenerateOptions::uniform(usize::MAX, Vec::new());
    let out = model
        .generate(&[vec![1, 5, 6, 7, 8], vec![1, 9]], &opts, &mut Greedy)
        .expect("generate");
    assert_eq!(out[0].len(), 12 - 5);
    assert_eq!(out[1].len(), 12 - 2);
    let e = model
        .generate(&[vec![3; 12]], &opts, &mut Greedy)
        .expect_err("full prompt");
    assert!(e.to_string().contains("context length 12"), "{e}");
}
