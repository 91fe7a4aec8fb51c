//! LoRA gradients through the whole model agree with central finite differences (f64).
//!
//! In its own test binary: burn 0.21's NdArray keeps one default float dtype per process.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use pema_backbone::Family;
use pema_backbone::testing::{pseudo_random, tiny_model};
use pema_lora::{Example, Lora, LoraConfig, LoraTarget, batch_nll, lift, mean_nll, merge};

type B = NdArray<f64>;
type AD = Autodiff<B>;

fn host(t: &Tensor<B, 2>) -> Vec<f64> {
    t.to_data().convert::<f64>().into_vec::<f64>().expect("f64")
}

#[test]
fn lora_gradients_match_finite_differences() {
    let dev = Default::default();
    for family in [Family::Gemma3, Family::Llama] {
        let model = tiny_model::<B>(family, 11, &dev).expect("model");
        let cfg = LoraConfig {
            rank: 2,
            alpha: 3.0,
            targets: LoraTarget::ALL.to_vec(),
            ..LoraConfig::default()
        };
        let mut lora = Lora::init(&model, &cfg).expect("init");
        // B = 0 would give A a zero gradient: start from a non-zero B.
        for (i, b) in lora.b.iter_mut().enumerate() {
            let [r, c] = b.dims();
            let v: Vec<f64> = pseudo_random(100 + i as u64, r * c)
                .into_iter()
                .map(|x| f64::from(x) * 0.3)
                .collect();
            *b = burn::module::Param::from_tensor(Tensor::from_data(
                TensorData::new(v, [r, c]),
                &dev,
            ));
        }
        let examples = vec![
            Example {
                prompt: vec![1, 7, 9, 20, 33],
                target: vec![12, 40, 3],
            },
            Example {
                prompt: vec![1, 50, 4],
                target: vec![8, 3],
            },
        ];
        // Analytic gradients through the lifted model.
        let base = lift::<AD>(&model);
        let tracked: Vec<Tensor<AD, 2>> = lora
            .params()
            .into_iter()
            .map(|p| Tensor::<AD, 2>::from_inner(p).require_grad())
            .collect();
        let mut m = base.clone();
        lora.with_params(tracked.clone())
            .apply_to(&mut m)
            .expect("apply");
        let refs: Vec<&Example> = examples.iter().collect();
        let (sum, n) = batch_nll(&m, &refs).expect("nll");
        let grads = sum.div_scalar(n as f64).backward();
        let params = lora.params();
        let loss_at = |params: Vec<Tensor<B, 2>>| {
            let l = lora.with_params(params);
            mean_nll(&merge(&model, &l).expect("merge"), &examples, 8).expect("nll")
        };
        // burn 0.21's default `sigmoid` (hence Llama's SiLU) computes in f32 even on f64
        // backends: a step of 1e-6 would only measure its rounding. Gemma (tanh GELU) is f64
        // throughout and gets the strict check.
        let (eps, abs_tol, rel_tol) = match family {
            Family::Gemma3 => (1e-6, 1e-7, 1e-5),
            Family::Llama => (1e-3, 2e-4, 2e-3),
        };
        let mut checked = 0;
        // A and B of the first q slot, the first down slot and the last slot.
        let n_targets = 7;
        for slot in [0, 6, params.len() / 2 - 1, n_targets + 3] {
            for which in [2 * slot, 2 * slot + 1] {
                let g = tracked[which].grad(&grads).expect("grad");
                let g = host(&g);
                let p = host(&params[which]);
                let dims = params[which].dims();
                for &k in &[0, p.len() / 2, p.len() - 1] {
                    let shifted = |delta: f64| {
                        let mut v = p.clone();
                        v[k] += delta;
                        let mut ps = params.clone();
                        ps[which] = Tensor::from_data(TensorData::new(v, dims), &dev);
                        loss_at(ps)
                    };
                    let fd = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
                    let err = (g[k] - fd).abs();
                    assert!(
                        err <= abs_tol + rel_tol * fd.abs(),
                        "{family:?} param {which} entry {k}: autodiff {} vs finite difference {fd}",
                        g[k]
                    );
                    assert!(
                        fd.abs() > 1e-7,
                        "{family:?} param {which}: gradient vanished"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 24);
    }
}
