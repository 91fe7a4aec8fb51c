//! An interrupted run resumed from its checkpoint ends with exactly the weights of an
//! uninterrupted run (the only test in this binary: dropout draws from the backend's global
//! RNG, which parallel tests would otherwise share).

use burn::backend::{Autodiff, NdArray};
use pema_adapter::{AdapterError, PemaAdapter, PhaseConfig, TrainConfig, train};
use pema_backbone::LmHead;
use pema_memory::InMemory;

type B = NdArray<f32>;
type AD = Autodiff<B>;

fn mem(n: usize, d: usize, v: usize, salt: f32, tag: &str) -> InMemory {
    let keys = (0..n * d)
        .map(|i| ((i as f32) * 0.173 + salt).sin())
        .collect();
    let values = (0..n).map(|i| (i * 7 % v) as u32).collect();
    InMemory {
        keys,
        values,
        d,
        tag: tag.into(),
    }
}

#[test]
fn resumed_training_matches_an_uninterrupted_run() {
    let dev = Default::default();
    let (d, v) = (8, 5);
    let w: Vec<f32> = (0..v * d).map(|i| ((i as f32) * 0.7).cos()).collect();
    let head = LmHead::<B>::from_host(vec![1.0; d], 1e-6, w, v, "t", &dev).expect("head");
    let head = pema_adapter::FusedHead::new(&head, Default::default()).expect("fused head");
    let (tr, dv) = (mem(200, d, v, 0.0, "tr"), mem(50, d, v, 1.0, "dv"));
    let cfg = |halt: Option<u64>| TrainConfig {
        rank: 4,
        phase1: PhaseConfig {
            batch_size: 32,
            max_epochs: 3,
            max_steps: Some(20),
        },
        phase2: PhaseConfig {
            batch_size: 16,
            max_epochs: 3,
            max_steps: Some(30),
        },
        validate_every: 10,
        log_every: 5,
        progress: false,
        halt_after_steps: halt,
        ..TrainConfig::default()
    };
    let full = tempfile::tempdir().expect("tempdir");
    train::<AD>(&head, &tr, &dv, &cfg(None), full.path(), &dev).expect("full");

    // Halted in phase 1 at step 15 (checkpoint at 10), then in phase 2 at step 15 (checkpoint
    // at 10): every resume redoes the steps after the last checkpoint.
    let part = tempfile::tempdir().expect("tempdir");
    let e1 = train::<AD>(&head, &tr, &dv, &cfg(Some(15)), part.path(), &dev).expect_err("halt 1");
    assert!(
        matches!(
            e1,
            AdapterError::Halted {
                phase: 1,
                step: 15,
                ..
            }
        ),
        "{e1}"
    );
    let e2 = train::<AD>(&head, &tr, &dv, &cfg(Some(25)), part.path(), &dev).expect_err("halt 2");
    assert!(
        matches!(
            e2,
            AdapterError::Halted {
                phase: 2,
                step: 15,
                ..
            }
        ),
        "{e2}"
    );
    let report = train::<AD>(&head, &tr, &dv, &cfg(None), part.path(), &dev).expect("resumed");
    assert_eq!(report.phase1.steps, 20);
    assert_eq!(report.phase2.steps, 30);

    let (a, _) = PemaAdapter::<B>::load(full.path(), &head, &dev).expect("full artifact");
    let (b, _) = PemaAdapter::<B>::load(part.path(), &head, &dev).expect("resumed artifact");
    for (x, y) in a
        .paper_layout()
        .expect("a")
        .iter()
        .zip(b.paper_layout().expect("b").iter())
    {
        assert_eq!(x.1, y.1, "tensor {} differs after resuming", x.0);
    }
}
