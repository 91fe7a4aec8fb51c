//! Tests of the adapter: initialisation, gradients against finite differences, forms, dropout,
//! artifacts and key statistics.
//! Every test here runs on NdArray<f64>: burn 0.21 keeps one global default float dtype per
//! process, so mixing f32 and f64 NdArray tests in one binary races.
use super::*;
use burn::backend::{Autodiff, NdArray};
use burn::module::Param;
use pema_backbone::LmHead;

type F = NdArray<f64>;
type AD = Autodiff<F>;

fn pseudo(n: usize, salt: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 + 1.0) * 0.731 + salt).sin())
        .collect()
}

fn tiny_head<B: Backend>(d: usize, v: usize, dev: &B::Device) -> FusedHead<B> {
    tiny_head_with(d, v, CePath::Auto, dev)
}

/// A tiny head whose row chunks hold 2 rows, so that chunking is exercised.
fn tiny_head_with<B: Backend>(d: usize, v: usize, path: CePath, dev: &B::Device) -> FusedHead<B> {
    let norm: Vec<f32> = (0..d).map(|i| 0.8 + 0.1 * i as f32).collect();
    let head = LmHead::from_host(norm, 1e-6, pseudo(v * d, 0.3), v, "tiny", dev).expect("head");
    let config = crate::HeadCeConfig {
        chunk_elems: 2 * v,
        path,
        ..Default::default()
    };
    FusedHead::new(&head, config).expect("fused head")
}

#[test]
fn init_is_kaiming_uniform_and_zero_b() {
    let dev = Default::default();
    let cfg = AdapterConfig {
        d: 64,
        vocab: 5,
        rank: 8,
        dropout: 0.2,
        kappa: 0.2,
        form: Default::default(),
    };
    let ad = PemaAdapter::<NdArray<f64>>::new(cfg, 7, &dev).expect("adapter");
    let a = host(&ad.a).expect("a");
    let bound = 1.0 / 8.0; // 1/√64
    assert!(a.iter().all(|x| x.abs() <= bound));
    let max = a.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(max > 0.9 * bound, "uniform over the whole range, max {max}");
    assert!(host(&ad.b_rct).expect("b").iter().all(|x| *x == 0.0));
    assert!(host(&ad.b_pd).expect("b").iter().all(|x| *x == 0.0));
    assert_eq!(ad.num_params(), 3 * 64 * 8);
    assert_eq!(AdapterConfig::paper(2048, 10).rank * 2048 * 3, 3_145_728);
}

/// Central finite differences (f64) against autodiff for every weight of A, B_rct, B_pd,
/// through both exact paths of the blockwise head (dense and low-rank), over 2-row chunks.
#[test]
fn gradients_match_finite_differences() {
    for (path, form) in [
        (CePath::Dense, HpdForm::Paper),
        (CePath::LowRank, HpdForm::Paper),
        (CePath::Auto, HpdForm::Residual),
    ] {
        gradients_match_finite_differences_on(path, form);
    }
}

fn gradients_match_finite_differences_on(path: CePath, form: HpdForm) {
    let dev = Default::default();
    let (d, r, v, n) = (5, 3, 7, 5);
    let cfg = AdapterConfig {
        d,
        vocab: v,
        rank: r,
        dropout: 0.2,
        kappa: 0.3,
        form,
    };
    let head = tiny_head_with::<AD>(d, v, path, &dev);
    let (a, b1, b2) = (pseudo(r * d, 0.1), pseudo(d * r, 0.2), pseudo(d * r, 0.4));
    let f: Vec<f32> = pseudo(n * d, 0.9).iter().map(|x| 2.0 * x).collect();
    let y = vec![1i64, 6, 0, 3, 6];
    let loss_of = |a: &[f32], b1: &[f32], b2: &[f32], grad: bool| {
        let mut ad = PemaAdapter::<AD>::from_paper_layout(cfg, a, b1, b2, &dev);
        if form == HpdForm::Residual {
            let (mean, std) = (pseudo(d, 0.6), pseudo(d, 0.8));
            let std = std.iter().map(|s| 0.5 + s.abs()).collect();
            ad = ad.with_key_stats(Some(KeyStats::from_host(mean, std, &dev)));
        }
        if grad {
            ad.a = ad.a.set_require_grad(true);
            ad.b_rct = ad.b_rct.set_require_grad(true);
            ad.b_pd = ad.b_pd.set_require_grad(true);
        }
        let ft = Tensor::<AD, 2>::from_data(TensorData::new(f.clone(), [n, d]), &dev);
        let yt = Tensor::<AD, 1, Int>::from_data(TensorData::new(y.clone(), [n]), &dev);
        let l = ad.losses(&head, ft, yt, Phase::Prediction, false);
        (ad, l.total)
    };
    let (ad, loss) = loss_of(&a, &b1, &b2, true);
    let grads = loss.backward();
    let g = |t: &Tensor<AD, 2>| {
        t.grad(&grads)
            .expect("grad")
            .into_data()
            .into_vec::<f64>()
            .expect("f64")
    };
    // Internal layouts are transposed: bring the gradients to the paper layout.
    let ga = transpose_f64(&g(&ad.a), d, r);
    let gb1 = transpose_f64(&g(&ad.b_rct), r, d);
    let gb2 = transpose_f64(&g(&ad.b_pd), r, d);
    let value = |a: &[f32], b1: &[f32], b2: &[f32]| {
        let (_, l) = loss_of(a, b1, b2, false);
        l.into_data().into_vec::<f64>().expect("f64")[0]
    };
    let h = 1e-3f32;
    let mut worst = 0.0f64;
    for which in 0..3 {
        let len = [a.len(), b1.len(), b2.len()][which];
        for i in 0..len {
            let (mut ap, mut b1p, mut b2p) = (a.clone(), b1.clone(), b2.clone());
            let (mut am, mut b1m, mut b2m) = (a.clone(), b1.clone(), b2.clone());
            let (p, m) = match which {
                0 => (&mut ap[i], &mut am[i]),
                1 => (&mut b1p[i], &mut b1m[i]),
                _ => (&mut b2p[i], &mut b2m[i]),
            };
            *p += h;
            *m -= h;
            let hp = (*p as f64 - *m as f64) / 2.0;
            let fd = (value(&ap, &b1p, &b2p) - value(&am, &b1m, &b2m)) / (2.0 * hp);
            let an = [&ga, &gb1, &gb2][which][i];
            let err = (fd - an).abs() / (1e-4 + fd.abs().max(an.abs()));
            worst = worst.max(err);
            assert!(
                err < 1e-4,
                "{path:?} {form:?} param {which}[{i}]: fd {fd} vs autodiff {an}"
            );
        }
    }
    assert!(worst < 1e-4);
}

fn transpose_f64(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = x[i * cols + j];
        }
    }
    out
}

/// The residual form starts as the PLM: with B_pd = 0, P_PEMA's logits are W_hd·norm(f).
#[test]
fn residual_form_starts_as_the_plm() {
    let dev = Default::default();
    let (d, v) = (6, 11);
    let head = tiny_head::<F>(d, v, &dev);
    let cfg = AdapterConfig {
        d,
        vocab: v,
        rank: 3,
        dropout: 0.2,
        kappa: 0.2,
        form: HpdForm::Residual,
    };
    let stats = KeyStats::from_host(vec![0.5; d], vec![2.0; d], &dev);
    let ad = PemaAdapter::<F>::new(cfg, 9, &dev)
        .expect("adapter")
        .with_key_stats(Some(stats));
    let f = Tensor::<F, 2>::from_data(TensorData::new(pseudo(3 * d, 0.2), [3, d]), &dev);
    let a = ad.logits(&head, f.clone()).into_data();
    let b = head.logits(f).into_data();
    a.assert_approx_eq::<f64>(&b, burn::tensor::Tolerance::absolute(1e-12));
}

#[test]
fn dropout_only_in_training_and_inverted() {
    let dev = Default::default();
    let n = 400;
    let cfg = AdapterConfig {
        d: n,
        vocab: 3,
        rank: n,
        dropout: 0.5,
        kappa: 0.2,
        form: Default::default(),
    };
    let mut ad = PemaAdapter::<NdArray<f64>>::new(cfg, 1, &dev).expect("adapter");
    // A = identity: z = s·dropout(f) element by element.
    ad.a = Param::from_tensor(Tensor::eye(n, &dev));
    let f = Tensor::<NdArray<f64>, 2>::ones([1, n], &dev);
    let s = 1.0 / n as f32;
    let eval = host(&ad.bottleneck(f.clone(), false)).expect("z");
    assert!(
        eval.iter().all(|&z| (z - s).abs() < 1e-9),
        "no dropout at inference"
    );
    let train = host(&ad.bottleneck(f, true)).expect("z");
    // Inverted dropout: kept entries are scaled by 1/(1−p) = 2, dropped ones are 0.
    let zeros = train.iter().filter(|&&z| z == 0.0).count();
    assert!(
        train
            .iter()
            .all(|&z| z == 0.0 || (z - 2.0 * s).abs() < 1e-9)
    );
    assert!(
        (120..280).contains(&zeros),
        "{zeros} of {n} dropped at p = 0.5"
    );
}

fn test_meta<B: Backend>(
    cfg: &AdapterConfig,
    head: &FusedHead<B>,
    key_norm: KeyNorm,
) -> AdapterMeta {
    AdapterMeta {
        format: ADAPTER_FORMAT.into(),
        pema_version: "test".into(),
        rank: cfg.rank,
        scale: cfg.scale(),
        dropout: cfg.dropout,
        kappa: cfg.kappa,
        d: cfg.d,
        vocab: cfg.vocab,
        head_fingerprint: head.fingerprint.clone(),
        head_model: head.model.clone(),
        memory_fingerprint: "m".into(),
        dev_memory_fingerprint: "dm".into(),
        length_ratio: Some(1.1),
        key_norm,
        form: cfg.form,
        training: serde_json::Value::Null,
        weights_sha256: None,
    }
}

#[test]
fn artifact_round_trips_and_refuses_another_head() {
    let dev = Default::default();
    type B = NdArray<f64>;
    let (d, v) = (6, 9);
    let head = tiny_head::<B>(d, v, &dev);
    let cfg = AdapterConfig {
        d,
        vocab: v,
        rank: 4,
        dropout: 0.2,
        kappa: 0.2,
        form: Default::default(),
    };
    let mut ad = PemaAdapter::<B>::new(cfg, 3, &dev).expect("adapter");
    ad.b_pd = Param::from_tensor(Tensor::from_data(
        TensorData::new(pseudo(4 * d, 0.5), [4, d]),
        &dev,
    ));
    let meta = test_meta(&cfg, &head, KeyNorm::None);
    let dir = tempfile::tempdir().expect("tempdir");
    ad.save(dir.path(), &meta).expect("save");
    let (back, meta2) = PemaAdapter::<B>::load(dir.path(), &head, &dev).expect("load");
    assert!(meta2.weights_sha256.is_some());
    let meta2 = AdapterMeta {
        weights_sha256: None,
        ..meta2
    };
    assert_eq!(meta, meta2);
    assert_eq!(host(&back.a).expect("a"), host(&ad.a).expect("a"));
    assert_eq!(host(&back.b_pd).expect("b"), host(&ad.b_pd).expect("b"));
    let f = Tensor::<B, 2>::from_data(TensorData::new(pseudo(2 * d, 0.7), [2, d]), &dev);
    assert_eq!(
        host(&back.logits(&head, f.clone())).expect("l"),
        host(&ad.logits(&head, f)).expect("l")
    );
    // Another head (one weight changed) must be refused with a clear error.
    let mut w = pseudo(v * d, 0.3);
    w[0] += 1.0;
    let norm: Vec<f32> = (0..d).map(|i| 0.8 + 0.1 * i as f32).collect();
    let other = LmHead::<B>::from_host(norm, 1e-6, w, v, "tiny", &dev).expect("head");
    let other = FusedHead::new(&other, Default::default()).expect("fused");
    let err = PemaAdapter::<B>::load(dir.path(), &other, &dev).expect_err("must refuse");
    assert!(matches!(err, AdapterError::HeadMismatch { .. }));
    assert!(err.to_string().contains("refusing"), "{err}");
}

#[test]
fn key_statistics_standardize_and_round_trip() {
    let dev = Default::default();
    type B = NdArray<f64>;
    let (d, v) = (3, 5);
    let head = tiny_head::<B>(d, v, &dev);
    let cfg = AdapterConfig {
        d,
        vocab: v,
        rank: 2,
        dropout: 0.0,
        kappa: 0.2,
        form: Default::default(),
    };
    let stats = KeyStats::<B>::from_host(vec![1.0, -2.0, 1000.0], vec![2.0, 0.5, 100.0], &dev);
    let mut ad = PemaAdapter::<B>::new(cfg, 1, &dev)
        .expect("adapter")
        .with_key_stats(Some(stats));
    ad.b_pd = Param::from_tensor(Tensor::from_data(
        TensorData::new(pseudo(2 * d, 0.5), [2, d]),
        &dev,
    ));
    let f = Tensor::<B, 2>::from_data(TensorData::new(vec![3.0, -1.0, 1100.0], [1, d]), &dev);
    assert_eq!(
        host(&ad.standardize(f.clone())).expect("x"),
        vec![1.0, 2.0, 1.0]
    );
    let mut meta = test_meta(&cfg, &head, KeyNorm::None);
    let dir = tempfile::tempdir().expect("tempdir");
    // Metadata that contradicts the weights is refused.
    assert!(matches!(
        ad.save(dir.path(), &meta),
        Err(AdapterError::Config(_))
    ));
    meta.key_norm = KeyNorm::Standardize;
    ad.save(dir.path(), &meta).expect("save");
    let (back, _) = PemaAdapter::<B>::load(dir.path(), &head, &dev).expect("load");
    assert_eq!(
        host(&back.logits(&head, f.clone())).expect("l"),
        host(&ad.logits(&head, f)).expect("l")
    );
}

fn saved_adapter(dir: &Path, b_pd: Vec<f32>) -> (FusedHead<NdArray<f64>>, AdapterConfig) {
    type B = NdArray<f64>;
    let dev = Default::default();
    let (d, v) = (4, 7);
    let head = tiny_head::<B>(d, v, &dev);
    let cfg = AdapterConfig {
        d,
        vocab: v,
        rank: 2,
        dropout: 0.0,
        kappa: 0.2,
        form: Default::default(),
    };
    let mut ad = PemaAdapter::<B>::new(cfg, 1, &dev).expect("adapter");
    ad.b_pd = Param::from_tensor(Tensor::from_data(TensorData::new(b_pd, [2, d]), &dev));
    ad.save(dir, &test_meta(&cfg, &head, KeyNorm::None))
        .expect("save");
    (head, cfg)
}

#[test]
fn adapter_weights_are_checksummed_and_old_artifacts_still_load() {
    type B = NdArray<f64>;
    let dev = Default::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let (head, _) = saved_adapter(dir.path(), pseudo(8, 0.5));
    PemaAdapter::<B>::load(dir.path(), &head, &dev).expect("sound");
    // One mantissa byte of the last value changed: still finite, but not what was saved.
    let w = dir.path().join(WEIGHTS_FILE);
    let mut bytes = std::fs::read(&w).expect("read");
    let at = bytes.len() - 4;
    bytes[at] ^= 0x01;
    std::fs::write(&w, bytes).expect("write");
    let e = PemaAdapter::<B>::load(dir.path(), &head, &dev).expect_err("corrupt");
    assert!(
        e.to_string().contains("sha256") && e.to_string().contains(WEIGHTS_FILE),
        "{e}"
    );
    // An artifact without a recorded checksum (written before it existed) loads unchecked.
    let cfg = dir.path().join(CONFIG_FILE);
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).expect("read")).expect("json");
    json.as_object_mut()
        .expect("object")
        .remove("weights_sha256");
    std::fs::write(&cfg, json.to_string()).expect("write");
    PemaAdapter::<B>::load(dir.path(), &head, &dev).expect("old artifact loads");
}

#[test]
fn adapter_with_nan_weights_is_refused() {
    type B = NdArray<f64>;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = pseudo(8, 0.5);
    b[3] = f32::NAN;
    let (head, _) = saved_adapter(dir.path(), b);
    let e = PemaAdapter::<B>::load(dir.path(), &head, &Default::default()).expect_err("NaN");
    assert!(e.to_string().contains("non-finite"), "{e}");
}
