//! Training refuses bad settings with errors that name them: rank 0, a non-positive length
//! ratio, a resume under changed hyper-parameters (each difference listed), and reports a
//! non-finite dev loss at the step where it happened.

use burn::backend::{Autodiff, NdArray};
use pema_adapter::{AdapterError, FusedHead, PhaseConfig, TrainConfig, train};
use pema_backbone::LmHead;
use pema_memory::InMemory;

type B = NdArray<f32>;
type AD = Autodiff<B>;

fn mem(n: usize, d: usize, v: usize, salt: f32) -> InMemory {
    InMemory {
        keys: (0..n * d)
            .map(|i| ((i as f32) * 0.173 + salt).sin())
            .collect(),
        values: (0..n).map(|i| (i * 7 % v) as u32).collect(),
        d,
        tag: format!("m{salt}"),
    }
}

fn head(d: usize, v: usize) -> FusedHead<B> {
    let w: Vec<f32> = (0..v * d).map(|i| ((i as f32) * 0.7).cos()).collect();
    let h =
        LmHead::<B>::from_host(vec![1.0; d], 1e-6, w, v, "t", &Default::default()).expect("head");
    FusedHead::new(&h, Default::default()).expect("fused")
}

fn cfg() -> TrainConfig {
    TrainConfig {
        rank: 2,
        dropout: 0.0,
        phase1: PhaseConfig {
            batch_size: 8,
            max_epochs: 2,
            max_steps: Some(6),
        },
        phase2: PhaseConfig {
            batch_size: 8,
            max_epochs: 2,
            max_steps: Some(6),
        },
        validate_every: 2,
        log_every: 2,
        progress: false,
        ..TrainConfig::default()
    }
}

#[test]
fn rank_zero_and_a_negative_length_ratio_are_named() {
    let e = TrainConfig { rank: 0, ..cfg() }
        .validate()
        .expect_err("rank 0");
    assert!(e.to_string().contains("rank"), "{e}");
    assert!(!e.to_string().contains("vocab"), "{e}");
    let e = TrainConfig {
        length_ratio: Some(-3.0),
        ..cfg()
    }
    .validate()
    .expect_err("ratio");
    assert!(
        e.to_string().contains("length ratio") && e.to_string().contains("-3"),
        "{e}"
    );
    assert!(
        TrainConfig {
            length_ratio: Some(f64::NAN),
            ..cfg()
        }
        .validate()
        .is_err()
    );
}

#[test]
fn resume_refuses_changed_hyper_parameters_listing_each() {
    let dev = Default::default();
    let (d, v) = (4, 5);
    let h = head(d, v);
    let (tr, dv) = (mem(40, d, v, 0.0), mem(10, d, v, 1.0));
    let out = tempfile::tempdir().expect("tempdir");
    let halted = TrainConfig {
        halt_after_steps: Some(3),
        ..cfg()
    };
    let e = train::<AD>(&h, &tr, &dv, &halted, out.path(), &dev).expect_err("halt");
    assert!(matches!(e, AdapterError::Halted { .. }), "{e}");
    let changed = TrainConfig {
        lr: 2e-3,
        seed: 1,
        ..cfg()
    };
    let e = train::<AD>(&h, &tr, &dv, &changed, out.path(), &dev).expect_err("changed");
    assert!(matches!(e, AdapterError::ResumeMismatch { .. }), "{e}");
    let text = e.to_string();
    assert!(text.contains("lr: 0.001 → 0.002"), "{text}");
    assert!(text.contains("seed: 0 → 1"), "{text}");
    // The budget may change on resume.
    let longer = TrainConfig {
        phase2: PhaseConfig {
            max_steps: Some(8),
            ..cfg().phase2
        },
        ..cfg()
    };
    train::<AD>(&h, &tr, &dv, &longer, out.path(), &dev).expect("resumed with a longer budget");
}

#[test]
fn a_non_finite_dev_loss_reports_its_step() {
    let dev = Default::default();
    let (d, v) = (4, 5);
    let h = head(d, v);
    let tr = mem(40, d, v, 0.0);
    let mut dv = mem(10, d, v, 1.0);
    dv.keys[5] = f32::NAN;
    let out = tempfile::tempdir().expect("tempdir");
    let e = train::<AD>(&h, &tr, &dv, &cfg(), out.path(), &dev).expect_err("NaN dev");
    match e {
        AdapterError::NonFinite { step, ref what, .. } => {
            assert_eq!((step, what.as_str()), (2, "dev loss"), "{e}");
        }
        other => panic!("expected NonFinite, got {other}"),
    }
}
