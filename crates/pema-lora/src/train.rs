//! The causal-LM loss on target tokens and the LoRA training loop with early stopping.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData, activation};
use pema_adapter::{AdamOptimizer, TorchAdam};
use pema_backbone::generate::left_pad;
use pema_backbone::model::Transformer;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::config::LoraConfig;
use crate::data::Example;
use crate::error::{LoraError, Result};
use crate::lora::{Lora, lift, merge};
use crate::report::{LoraReport, peak_rss_bytes};

/// Summed negative log-likelihood (nats) of the target tokens of `batch`, as a `[1]` tensor,
/// and the number of target tokens. The batch is left-padded; logits are computed only at the
/// positions that predict target tokens.
pub fn batch_nll<B: Backend>(
    model: &Transformer<B>,
    batch: &[&Example],
) -> Result<(Tensor<B, 1>, usize)> {
    if batch.is_empty() {
        return Err(LoraError::Data("empty batch".into()));
    }
    for ex in batch {
        ex.validate()?;
    }
    // Input: prompt + target[..n-1]; the last prompt position predicts target[0].
    let seqs: Vec<Vec<u32>> = batch
        .iter()
        .map(|ex| {
            ex.prompt
                .iter()
                .chain(&ex.target[..ex.target.len() - 1])
                .copied()
                .collect()
        })
        .collect();
    let (padded, pad) = left_pad(&seqs);
    let t = padded[0].len();
    let mut cache = model.new_cache(pad.clone());
    let h = model.forward(&padded, &mut cache)?;
    let [b, _, d] = h.dims();
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for (i, ex) in batch.iter().enumerate() {
        let start = i * t + pad[i] + ex.prompt.len() - 1;
        for (j, &y) in ex.target.iter().enumerate() {
            rows.push((start + j) as i64);
            labels.push(i64::from(y));
        }
    }
    let n = rows.len();
    let device = model.device();
    let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), &device);
    let labels = Tensor::<B, 2, Int>::from_data(TensorData::new(labels, [n, 1]), &device);
    let h = h.reshape([b * t, d]).select(0, rows);
    let lp = activation::log_softmax(model.logits(h), 1);
    let nll = lp.gather(1, labels).sum().neg();
    Ok((nll, n))
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> Result<f64> {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .map_err(|e| LoraError::Data(format!("reading a loss: {e:?}")))?
        .first()
        .copied()
        .ok_or_else(|| LoraError::Data("empty loss tensor".into()))
}

/// Mean NLL per target token of `examples` under `model`, in batches of `batch_size`.
pub fn mean_nll<B: Backend>(
    model: &Transformer<B>,
    examples: &[Example],
    batch_size: usize,
) -> Result<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (s, k) = batch_nll(model, &refs)?;
        sum += scalar(s)?;
        n += k;
    }
    if n == 0 {
        return Err(LoraError::Data("no target tokens to score".into()));
    }
    Ok(sum / n as f64)
}

/// One optimiser step on `batch`: the frozen model lifted to the autodiff backend with
/// `Wᵀ + A·B·α/r` in the adapted layers, mean target-token NLL, backward, Adam at learning
/// rate `lr`. Returns the updated weights and the batch loss.
pub fn train_step<B: AutodiffBackend>(
    base: &Transformer<B>,
    lora: &Lora<B::InnerBackend>,
    optim: &mut AdamOptimizer<Lora<B>, B>,
    lr: f64,
    batch: &[&Example],
) -> Result<(Lora<B::InnerBackend>, f64)> {
    let ad = Lora::<B>::from_inner(lora.clone()).tracked();
    let mut model = base.clone();
    ad.apply_to(&mut model)?;
    let (sum, n) = batch_nll(&model, batch)?;
    let loss = sum.div_scalar(n as f64);
    let value = scalar(loss.clone().inner())?;
    if !value.is_finite() {
        return Err(LoraError::Data(format!(
            "training loss became {value}: lower the learning rate"
        )));
    }
    let grads = GradientsParams::from_grads(loss.backward(), &ad);
    if grads.len() != 2 * ad.slots.len() {
        return Err(LoraError::Config(
            "a LoRA parameter received no gradient".into(),
        ));
    }
    Ok((optim.step(lr, ad, grads).valid(), value))
}

/// PyTorch's Adam (β 0.9, 0.999) with the run's ε, over every `A_i` and `B_i`.
pub fn adam_for<B: AutodiffBackend>(cfg: &LoraConfig) -> AdamOptimizer<Lora<B>, B> {
    TorchAdam {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: cfg.epsilon,
    }
    .into()
}

/// Trains LoRA weights for `model` (on the inner backend of `B`) on `train` pairs, with early
/// stopping on the dev loss of `dev` (skipped when `dev` is empty). Returns the weights of the
/// best dev loss and the report.
pub fn train<B: AutodiffBackend>(
    model: &Transformer<B::InnerBackend>,
    train: &[Example],
    dev: &[Example],
    cfg: &LoraConfig,
) -> Result<(Lora<B::InnerBackend>, LoraReport)> {
    cfg.validate()?;
    if train.is_empty() {
        return Err(LoraError::Data("no training pairs".into()));
    }
    for ex in train.iter().chain(dev) {
        ex.validate()?;
    }
    let clock = Instant::now();
    let mut lora = Lora::init(model, cfg)?;
    let mut adam = adam_for::<B>(cfg);
    let base = lift::<B>(model);
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(1));
    let mut order: Vec<usize> = (0..train.len()).collect();

    let mut report = LoraReport {
        steps: 0,
        epochs: 0,
        seconds: 0.0,
        train_loss: Vec::new(),
        dev_loss: Vec::new(),
        best_step: 0,
        best_dev_loss: None,
        stopped_early: false,
        trainable_params: lora.trainable_params(),
        train_pairs: train.len(),
        train_tokens: train.iter().map(|e| e.target.len()).sum(),
        peak_rss_bytes: None,
    };
    let mut best = lora.clone();
    let mut since_best = 0usize;
    let validate = |lora: &Lora<B::InnerBackend>| -> Result<f64> {
        mean_nll(&merge(model, lora)?, dev, cfg.dev_batch_size)
    };
    if !dev.is_empty() {
        let l = validate(&lora)?;
        report.dev_loss.push((0, l));
        report.best_dev_loss = Some(l);
    }
    let max_steps = cfg.max_steps.unwrap_or(u64::MAX);
    'outer: for _epoch in 0..cfg.max_epochs {
        report.epochs += 1;
        order.shuffle(&mut rng);
        for chunk in order.chunks(cfg.batch_size) {
            if report.steps >= max_steps {
                break 'outer;
            }
            let batch: Vec<&Example> = chunk.iter().map(|&i| &train[i]).collect();
            let (next, loss) = train_step::<B>(&base, &lora, &mut adam, cfg.lr, &batch)?;
            lora = next;
            report.steps += 1;
            report.train_loss.push(loss);
            if !dev.is_empty() && report.steps.is_multiple_of(cfg.validate_every) {
                let l = validate(&lora)?;
                report.dev_loss.push((report.steps, l));
                if cfg.progress {
                    eprintln!(
                        "lora: step {} epoch {} train {loss:.4} dev {l:.4}",
                        report.steps, report.epochs
                    );
                }
                if report.best_dev_loss.is_none_or(|b| l < b) {
                    report.best_dev_loss = Some(l);
                    report.best_step = report.steps;
                    best = lora.clone();
                    since_best = 0;
                } else {
                    since_best += 1;
                    if since_best >= cfg.patience.max(1) {
                        report.stopped_early = true;
                        break 'outer;
                    }
                }
            }
        }
    }
    let last_validated = report.dev_loss.last().map(|&(s, _)| s);
    if dev.is_empty() {
        best = lora;
        report.best_step = report.steps;
    } else if last_validated != Some(report.steps) {
        let l = validate(&lora)?;
        report.dev_loss.push((report.steps, l));
        if report.best_dev_loss.is_none_or(|b| l < b) {
            report.best_dev_loss = Some(l);
            report.best_step = report.steps;
            best = lora;
        }
    }
    report.seconds = clock.elapsed().as_secs_f64();
    report.peak_rss_bytes = peak_rss_bytes();
    Ok((best, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LoraTarget;
    use burn::backend::{Autodiff, NdArray};
    use pema_backbone::Family;
    use pema_backbone::testing::tiny_model;

    type B = NdArray<f32>;
    type AD = Autodiff<B>;

    fn toy_examples(n: usize) -> Vec<Example> {
        (0..n)
            .map(|i| Example {
                prompt: (0..3 + i % 3)
                    .map(|k| (5 + 7 * i + k) as u32 % 61)
                    .collect(),
                target: vec![(30 + 3 * i) as u32 % 61, (11 + 5 * i) as u32 % 61, 3],
            })
            .collect()
    }

    #[test]
    fn left_padded_batch_scores_like_single_examples() {
        let dev = Default::default();
        let m = tiny_model::<B>(Family::Gemma3, 7, &dev).expect("model");
        let ex = toy_examples(3);
        let refs: Vec<&Example> = ex.iter().collect();
        let (sum, n) = batch_nll(&m, &refs).expect("batch");
        let sum = scalar(sum).expect("sum");
        assert_eq!(n, 9);
        let mut single = 0.0;
        for e in &ex {
            // Reference: the backbone's own token log-probs of prompt + target.
            let seq: Vec<u32> = e.prompt.iter().chain(&e.target).copied().collect();
            let lp = m.token_log_probs(&seq).expect("lp");
            single -= lp[e.prompt.len() - 1..].iter().sum::<f64>();
        }
        assert!(
            (sum - single).abs() < 1e-3 * single.abs(),
            "{sum} vs {single}"
        );
    }

    #[test]
    fn training_drives_the_loss_down_on_memorised_pairs() {
        let dev = Default::default();
        let m = tiny_model::<B>(Family::Gemma3, 3, &dev).expect("model");
        let train_set = toy_examples(8);
        let before = mean_nll(&m, &train_set, 8).expect("nll");
        let cfg = LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: LoraTarget::ALL.to_vec(),
            lr: 5e-3,
            batch_size: 4,
            max_epochs: 1000,
            max_steps: Some(120),
            validate_every: 40,
            ..LoraConfig::default()
        };
        let (lora, report) = train::<AD>(&m, &train_set, &train_set, &cfg).expect("train");
        let after = mean_nll(&merge(&m, &lora).expect("merge"), &train_set, 8).expect("nll");
        eprintln!("before {before} after {after} report {:?}", report.dev_loss);
        assert_eq!(report.steps, 120);
        assert_eq!(report.train_loss.len(), 120);
        assert!(after < 0.05 * before, "loss {before} -> {after}");
        let best = report.best_dev_loss.expect("dev loss");
        assert!(
            (best - after).abs() < 1e-3 * after.max(1e-3),
            "{best} vs {after}"
        );
        assert_eq!(report.best_step, 120);
        assert!((report.dev_loss[0].1 - before).abs() < 1e-4 * before);
        // rank 4 on q,k,v,o,gate,up,down of 3 blocks: Σ 4·(in + out).
        let per_block =
            4 * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32) + 2 * (32 + 48) + (48 + 32));
        assert_eq!(report.trainable_params, 3 * per_block);
        assert!(report.peak_rss_bytes.is_some_and(|b| b > 1 << 20));
    }

    #[test]
    fn early_stopping_keeps_the_best_dev_weights() {
        let dev = Default::default();
        let m = tiny_model::<B>(Family::Gemma3, 5, &dev).expect("model");
        let all = toy_examples(12);
        let (train_set, dev_set) = all.split_at(8);
        let cfg = LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: LoraTarget::ALL.to_vec(),
            lr: 2e-2,
            batch_size: 4,
            max_epochs: 1000,
            max_steps: Some(400),
            validate_every: 10,
            patience: 2,
            ..LoraConfig::default()
        };
        let (lora, report) = train::<AD>(&m, train_set, dev_set, &cfg).expect("train");
        eprintln!(
            "{:?} best {} of {}",
            report.dev_loss, report.best_step, report.steps
        );
        assert!(report.stopped_early, "{:?}", report.dev_loss);
        assert!(report.steps < 400);
        let min = report
            .dev_loss
            .iter()
            .map(|&(_, l)| l)
            .fold(f64::INFINITY, f64::min);
        assert_eq!(report.best_dev_loss, Some(min));
        assert!(report.best_step < report.steps);
        // The returned weights are the best ones, not the last ones.
        let kept = mean_nll(&merge(&m, &lora).expect("merge"), dev_set, 16).expect("nll");
        assert!((kept - min).abs() < 1e-4 * min.max(1e-3), "{kept} vs {min}");
    }

    #[test]
    fn peak_rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().is_some_and(|b| b > 1 << 20));
        }
    }
}
