//! Tests of the training loop's rules.
use super::phase::permutation;
use super::*;

#[test]
fn early_stopping_fires_when_the_loss_exceeds_both_previous_ones() {
    let mut h = Vec::new();
    assert_eq!(record_validation(&mut h, 100, 5.0), (true, false));
    assert_eq!(record_validation(&mut h, 200, 4.0), (true, false));
    // Above the last one only: no stop.
    assert_eq!(record_validation(&mut h, 300, 4.5), (false, false));
    // 4.2 < 4.5: no stop, and not a new best (4.0).
    assert_eq!(record_validation(&mut h, 400, 4.2), (false, false));
    // 4.6 > 4.2 and > 4.5: stop.
    assert_eq!(record_validation(&mut h, 500, 4.6), (false, true));
}

#[test]
fn permutations_are_seeded_and_complete() {
    let p = permutation(100, 7);
    assert_eq!(p, permutation(100, 7));
    assert_ne!(p, permutation(100, 8));
    let mut s = p.clone();
    s.sort_unstable();
    assert_eq!(s, (0..100).collect::<Vec<u64>>());
}

#[test]
fn a_phase_updates_only_its_matrices_and_keeps_adam_state_for_them_alone() {
    use super::step::{adam_for, trainable};
    use burn::backend::{Autodiff, NdArray};
    use burn::module::Module;
    use burn::optim::Optimizer;
    type B = NdArray<f64>;
    type AD = Autodiff<B>;
    let dev = Default::default();
    let (d, v, n) = (6, 5, 8);
    let wave = |k: usize, s: f64| (0..k).map(|i| ((i as f64) * s).sin() as f32).collect();
    let head =
        pema_backbone::LmHead::<B>::from_host(vec![1.0; d], 1e-6, wave(v * d, 0.7), v, "t", &dev)
            .expect("head");
    let head = FusedHead::new(&head, Default::default()).expect("fused head");
    let cfg = TrainConfig {
        rank: 3,
        dropout: 0.0,
        ..TrainConfig::default()
    };
    let mut adapter = PemaAdapter::<B>::new(cfg.adapter(d, v), 1, &dev).expect("adapter");
    // Non-zero B_rct and B_pd, so that every matrix has a gradient to give.
    adapter.b_rct = Param::from_tensor(adapter.b_rct.val().add_scalar(0.1));
    adapter.b_pd = Param::from_tensor(adapter.b_pd.val().add_scalar(0.2));
    assert_eq!(adapter.num_params(), 3 * 3 * d);
    assert_eq!(Module::num_params(&adapter), 3 * 3 * d);
    let keys = Tensor::<B, 2>::from_data(TensorData::new(wave(n * d, 1.3), [n, d]), &dev);
    let ys = Tensor::<B, 1, Int>::from_data(
        TensorData::new((0..n as i64).map(|i| i % 5).collect::<Vec<_>>(), [n]),
        &dev,
    );
    for (phase, plan, moved) in [
        (
            Phase::Reconstruction,
            PhasePlan::TwoPhase,
            [true, true, false],
        ),
        (Phase::Prediction, PhasePlan::TwoPhase, [true, false, true]),
        (Phase::Prediction, PhasePlan::Joint, [true, true, true]),
        (Phase::Prediction, PhasePlan::BpdOnly, [false, false, true]),
    ] {
        assert_eq!(
            [
                trainable::<AD>(&adapter, phase, plan)
                    .a
                    .val()
                    .is_require_grad(),
                trainable::<AD>(&adapter, phase, plan)
                    .b_rct
                    .val()
                    .is_require_grad(),
                trainable::<AD>(&adapter, phase, plan)
                    .b_pd
                    .val()
                    .is_require_grad()
            ],
            moved
        );
        let mut optim = adam_for::<AD>(&cfg);
        let out = train_step::<AD>(
            &adapter,
            &mut optim,
            1e-2,
            &head.lift::<AD>(),
            keys.clone(),
            ys.clone(),
            phase,
            plan,
        )
        .expect("step");
        let changed =
            |x: &Tensor<B, 2>, y: &Tensor<B, 2>| host(x).expect("x") != host(y).expect("y");
        assert_eq!(
            [
                changed(&adapter.a, &out.adapter.a),
                changed(&adapter.b_rct, &out.adapter.b_rct),
                changed(&adapter.b_pd, &out.adapter.b_pd),
            ],
            moved,
            "{phase:?} {plan:?}"
        );
        assert_eq!(
            optim.to_record().len(),
            moved.iter().filter(|m| **m).count(),
            "Adam state for the trained matrices only"
        );
    }
}

#[test]
fn a_resumed_phase_sees_the_stop_its_last_validation_fired() {
    let mut history = Vec::new();
    let mut fired = Vec::new();
    for (step, loss) in [
        (5, 3.0),
        (10, 2.5),
        (15, 2.6),
        (20, 2.4),
        (25, 2.45),
        (30, 2.5),
    ] {
        let (_, stop) = record_validation(&mut history, step, loss);
        fired.push(stop);
        // What a resume from this validation's checkpoint concludes, the live run concluded.
        assert_eq!(stop_rule_fired_at(&history, step), stop, "step {step}");
        assert!(
            !stop_rule_fired_at(&history, step + 1),
            "a later step is no stop"
        );
    }
    assert_eq!(fired, [false, false, false, false, false, true]);
}
