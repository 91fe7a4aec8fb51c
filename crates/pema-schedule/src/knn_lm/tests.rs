//! Tests of the kNN-LM baseline.

use super::*;
use burn::backend::NdArray;
use pema_backbone::ContextRepr;
use pema_memory::{InMemory, Metric};

type B = NdArray<f32>;

fn nb(distance: f32, value: u32) -> Neighbor {
    Neighbor {
        distance,
        value,
        id: 0,
    }
}

#[test]
fn knn_distribution_sums_to_one_and_merges_values() {
    let n = [nb(0.0, 3), nb(1.0, 5), nb(1.0, 3), nb(9.0, 7)];
    let p = knn_log_probs(&n, 3, 1.0);
    assert_eq!(p.len(), 2, "k = 3 sees values 3 and 5 only");
    let total: f64 = p.iter().map(|(_, l)| l.exp()).sum();
    assert!((total - 1.0).abs() < 1e-12);
    let p3 = p.iter().find(|(v, _)| *v == 3).expect("3").1.exp();
    let e = (-1f64).exp();
    assert!((p3 - (1.0 + e) / (1.0 + 2.0 * e)).abs() < 1e-12);
    // Very low temperature: all mass on the nearest neighbour.
    let cold = knn_log_probs(&n, 4, 1e-3);
    assert!((cold.iter().find(|(v, _)| *v == 3).expect("3").1).abs() < 1e-9);
}

#[test]
fn mixing_extremes_and_value() {
    assert_eq!(mix_pair(-1.0, -2.0, 0.0), -2.0);
    assert_eq!(mix_pair(-1.0, -2.0, 1.0), -1.0);
    let m = mix_pair(0.5f64.ln(), 0.25f64.ln(), 0.4);
    assert!((m.exp() - (0.4 * 0.5 + 0.6 * 0.25)).abs() < 1e-12);
    assert_eq!(
        mix_pair(f64::NEG_INFINITY, f64::NEG_INFINITY, 0.5),
        f64::NEG_INFINITY
    );
}

fn toy() -> (InMemory, FusedHead<B>) {
    // d = 2, vocab 4: keys near (1, 0) say token 2, keys near (0, 1) say token 3.
    let keys = vec![1.0, 0.0, 1.1, 0.1, 0.0, 1.0, 0.1, 1.2];
    let mem = InMemory {
        keys,
        values: vec![2, 2, 3, 3],
        d: 2,
        tag: "toy".into(),
    };
    let w = vec![0.0f32; 4 * 2];
    let head = pema_backbone::LmHead::<B>::from_host(
        vec![1.0, 1.0],
        1e-6,
        w,
        4,
        "toy",
        &Default::default(),
    )
    .expect("head");
    let head = FusedHead::new(&head, Default::default()).expect("fused");
    (mem, head)
}

#[test]
fn policy_follows_neighbours_when_lambda_is_high() {
    let (mem, _) = toy();
    let dev = Default::default();
    let std = StandardizedSource::new(&mem, vec![0.0, 0.0], vec![1.0, 1.0]).expect("std");
    let index = ExactKnn::<B>::new(&std, Metric::L2, 0, &dev).expect("index");
    // PLM prefers token 1 in both rows (moderately).
    let logits = vec![0.0, 2.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0];
    let out = StepOutput {
        seqs: vec![0, 1],
        steps: vec![0, 0],
        context: ContextRepr(Tensor::from_data(
            TensorData::new(vec![1.0, 0.05, 0.05, 1.0], [2, 2]),
            &dev,
        )),
        logits: Tensor::from_data(TensorData::new(logits, [2, 4]), &dev),
    };
    let params = |lambda| KnnLmParams {
        k: 2,
        temperature: 1.0,
        lambda,
    };
    let mut p0 = KnnLmPolicy::new(&index, &std, params(0.0), 2, 4).expect("policy");
    assert_eq!(p0.next_tokens(&out), vec![1, 1]);
    let mut p9 = KnnLmPolicy::new(&index, &std, params(0.9), 2, 4).expect("policy");
    assert_eq!(p9.next_tokens(&out), vec![2, 3]);
    assert!(KnnLmPolicy::new(&index, &std, params(1.5), 2, 4).is_err());
}

#[test]
fn tuning_prefers_the_memory_when_it_predicts_the_dev_values() {
    let (mem, head) = toy();
    let dev = Default::default();
    let std = StandardizedSource::new(&mem, vec![0.0, 0.0], vec![1.0, 1.0]).expect("std");
    let index = ExactKnn::<B>::new(&std, Metric::L2, 0, &dev).expect("index");
    let dev_mem = InMemory {
        keys: vec![0.9, 0.0, 0.0, 0.9],
        values: vec![2, 3],
        d: 2,
        tag: "dev".into(),
    };
    let r = tune_knn_lm(
        &index,
        &std,
        &dev_mem,
        &head,
        &[1, 2],
        &[0.5, 1.0],
        &[0.0, 0.5, 0.99],
        100,
    )
    .expect("tune");
    // Uniform head: PLM NLL = ln 4; the memory is right, so the largest λ wins.
    assert!((r.plm_nll - 4f64.ln()).abs() < 1e-6, "{}", r.plm_nll);
    assert_eq!(r.best.params.lambda, 0.99);
    assert!(r.best.nll < 0.1 * r.plm_nll);
    assert_eq!(r.grid.len(), 2 * 2 * 3);
}

fn toy_index(mem: &InMemory) -> (StandardizedSource<'_>, ExactKnn<B>) {
    let std = StandardizedSource::new(mem, vec![0.0, 0.0], vec![1.0, 1.0]).expect("std");
    let index = ExactKnn::<B>::new(&std, Metric::L2, 0, &Default::default()).expect("index");
    (std, index)
}

fn dev_mem() -> InMemory {
    InMemory {
        keys: vec![0.9, 0.0, 0.0, 0.9],
        values: vec![2, 3],
        d: 2,
        tag: "dev".into(),
    }
}

#[test]
fn knn_rejects_a_head_of_another_width() {
    let (mem, _) = toy();
    let (std, index) = toy_index(&mem);
    // A head of width 3 (another model): refused before any tensor operation.
    let dev = Default::default();
    let head =
        pema_backbone::LmHead::<B>::from_host(vec![1.0; 3], 1e-6, vec![0.0; 12], 4, "x", &dev)
            .expect("head");
    let head = FusedHead::new(&head, Default::default()).expect("fused");
    let e =
        tune_knn_lm(&index, &std, &dev_mem(), &head, &[1], &[1.0], &[0.5], 10).expect_err("width");
    assert!(e.to_string().contains("hidden size is 3"), "{e}");
    let e = KnnLmPolicy::new(
        &index,
        &std,
        KnnLmParams {
            k: 1,
            temperature: 1.0,
            lambda: 0.5,
        },
        3,
        4,
    )
    .err()
    .expect("policy width");
    assert!(e.to_string().contains("hidden size is 3"), "{e}");
}

#[test]
fn knn_rejects_values_outside_the_heads_vocabulary() {
    let (mut mem, head) = toy();
    mem.values[1] = 7;
    let (std, index) = toy_index(&mem);
    let e =
        tune_knn_lm(&index, &std, &dev_mem(), &head, &[1], &[1.0], &[0.5], 10).expect_err("vocab");
    assert!(e.to_string().contains("entry 1 has value 7"), "{e}");
    let p = KnnLmParams {
        k: 1,
        temperature: 1.0,
        lambda: 0.5,
    };
    assert!(KnnLmPolicy::new(&index, &std, p, 2, 4).is_err());
    let (mem, _) = toy();
    let (std, index) = toy_index(&mem);
    let mut dev = dev_mem();
    dev.values[0] = 9;
    let e = tune_knn_lm(&index, &std, &dev, &head, &[1], &[1.0], &[0.5], 10).expect_err("dev");
    assert!(e.to_string().contains("value 9"), "{e}");
}

#[test]
fn knn_tuning_clamps_k_to_the_datastore_size_and_checks_the_grid() {
    let (mem, head) = toy();
    let (std, index) = toy_index(&mem);
    let r = tune_knn_lm(
        &index,
        &std,
        &dev_mem(),
        &head,
        &[1_000_000_000, 2],
        &[1.0],
        &[0.5],
        10,
    )
    .expect("tune");
    assert!(r.best.params.k <= 4, "{}", r.best.params.k);
    assert!(r.grid.iter().all(|g| g.params.k <= 4));
    for (ks, ts, ls) in [
        (vec![0], vec![1.0], vec![0.5]),
        (vec![1], vec![0.0], vec![0.5]),
        (vec![1], vec![f64::NAN], vec![0.5]),
        (vec![1], vec![1.0], vec![1.5]),
    ] {
        assert!(tune_knn_lm(&index, &std, &dev_mem(), &head, &ks, &ts, &ls, 10).is_err());
    }
}

#[test]
fn knn_policy_never_falls_back_silently() {
    let (mem, _) = toy();
    let (std, index) = toy_index(&mem);
    let dev = Default::default();
    let p = KnnLmParams {
        k: 2,
        temperature: 1.0,
        lambda: 0.5,
    };
    let mut policy = KnnLmPolicy::new(&index, &std, p, 2, 4).expect("policy");
    // A step whose context has the wrong width: the search fails, the policy records it.
    let out = StepOutput {
        seqs: vec![0],
        steps: vec![0],
        context: ContextRepr(Tensor::from_data(
            TensorData::new(vec![1.0, 0.0, 0.0], [1, 3]),
            &dev,
        )),
        logits: Tensor::from_data(TensorData::new(vec![0.0, 2.0, 0.0, 0.0], [1, 4]), &dev),
    };
    assert!(policy.error().is_none());
    let _ = policy.next_tokens(&out);
    let e = policy.error().expect("recorded");
    assert!(e.to_string().contains("kNN-LM decoding"), "{e}");
}
