//! One training phase: the step loop over shuffled batches, periodic validation on the dev
//! memory with the paper's early-stopping rule, and the batch and seed helpers.

use super::step::{StepOutcome, adam_for, train_step};
use super::*;

pub(super) fn fresh_start<B: AutodiffBackend>(
    adapter: PemaAdapter<B::InnerBackend>,
    cfg: &TrainConfig,
) -> PhaseStart<B> {
    PhaseStart {
        best: adapter.clone(),
        adapter,
        optim: adam_for::<B>(cfg),
        step: 0,
        epoch: 0,
        batch: 0,
        dev_history: Vec::new(),
        best_step: 0,
        best_metrics: None,
    }
}

pub(super) fn run_phase<B: AutodiffBackend>(
    ctx: &mut Ctx<'_, B>,
    phase: Phase,
    start: PhaseStart<B>,
) -> Result<(PemaAdapter<B::InnerBackend>, PhaseReport)> {
    let cfg = ctx.cfg;
    let pcfg: PhaseConfig = match phase {
        Phase::Reconstruction => cfg.phase1,
        Phase::Prediction => cfg.phase2,
    };
    let pn = phase.number();
    let n = ctx.train.len();
    let bs = pcfg.batch_size.min(n);
    let per_epoch = n.div_ceil(bs);
    let max_steps = pcfg
        .max_steps
        .unwrap_or(u64::MAX)
        .min((pcfg.max_epochs * per_epoch) as u64);
    let PhaseStart {
        mut adapter,
        best,
        mut optim,
        mut step,
        mut epoch,
        mut batch,
        dev_history,
        best_step,
        best_metrics,
    } = start;
    let mut record = Record {
        best,
        best_step,
        best_metrics,
        dev_history,
    };
    let t0 = Instant::now();
    let pb = progress_bar(cfg.progress, max_steps, step, pn);
    let mut running: Option<Tensor<B::InnerBackend, 1>> = None;
    let mut running_n = 0u64;
    // A run killed just after checkpointing the validation that fired the early-stopping
    // rule resumes stopped, as the uninterrupted run stopped there.
    let mut early_stopped = stop_rule_fired_at(&record.dev_history, step);
    let mut last_validated = step;
    let (mut keys, mut values) = (Vec::new(), Vec::new());

    'epochs: while !early_stopped && epoch < pcfg.max_epochs {
        let perm = permutation(n, mix(mix(cfg.seed, pn as u64), epoch as u64));
        while batch < per_epoch {
            if step >= max_steps {
                break 'epochs;
            }
            let ids = &perm[batch * bs..((batch + 1) * bs).min(n)];
            let (f, y) = load_batch::<B::InnerBackend>(
                ctx.train,
                "train",
                ids,
                ctx.head.vocab_size(),
                ctx.device,
                &mut keys,
                &mut values,
            )?;
            B::seed(ctx.device, mix(mix(cfg.seed, 100 + pn as u64), step));
            let StepOutcome {
                adapter: next,
                loss,
            } = train_step::<B>(
                &adapter,
                &mut optim,
                cfg.lr,
                &ctx.head_ad,
                f,
                y,
                phase,
                cfg.plan,
            )?;
            adapter = next;
            running = Some(match running {
                Some(r) => r + loss,
                None => loss,
            });
            running_n += 1;
            step += 1;
            batch += 1;
            pb.inc(1);

            let validate_now = step % cfg.validate_every == 0;
            if (step % cfg.log_every == 0 || validate_now)
                && let Some(r) = running.take()
            {
                let mean = scalar(r)? / running_n as f64;
                running_n = 0;
                check_train_loss(ctx, &pb, pn, step, mean)?;
                ctx.log.write(&serde_json::json!({
                    "event": "train", "phase": pn, "step": step, "epoch": epoch,
                    "loss": mean, "lr": cfg.lr, "elapsed_s": t0.elapsed().as_secs_f64(),
                }))?;
                pb.set_message(format!("loss {mean:.4}"));
            }
            if validate_now {
                last_validated = step;
                let (m, stop) =
                    validate(ctx, &adapter, phase, (step, epoch), &mut record, false, t0)?;
                pb.set_message(format!("dev {:.4}", m.loss));
                let snap = PhaseStart {
                    adapter: adapter.clone(),
                    best: record.best.clone(),
                    optim: optim.clone(),
                    step,
                    epoch,
                    batch,
                    dev_history: record.dev_history.clone(),
                    best_step: record.best_step,
                    best_metrics: record.best_metrics,
                };
                write_checkpoint(ctx, phase, &snap)?;
                if stop {
                    early_stopped = true;
                    break 'epochs;
                }
            }
            ctx.steps_this_run += 1;
            if cfg
                .halt_after_steps
                .is_some_and(|h| ctx.steps_this_run >= h)
            {
                pb.abandon();
                return Err(AdapterError::Halted {
                    steps: ctx.steps_this_run,
                    phase: pn,
                    step,
                    checkpoint: ctx.last_checkpoint.clone(),
                });
            }
        }
        epoch += 1;
        batch = 0;
    }
    // A final validation when the phase ended between validation points.
    if step > last_validated || record.best_metrics.is_none() {
        if let Some(r) = running.take() {
            let mean = scalar(r)? / running_n.max(1) as f64;
            check_train_loss(ctx, &pb, pn, step, mean)?;
        }
        validate(ctx, &adapter, phase, (step, epoch), &mut record, true, t0)?;
    }
    pb.finish_and_clear();
    let report = PhaseReport {
        phase: pn,
        steps: step,
        best_step: record.best_step,
        best: record.best_metrics,
        dev_history: record.dev_history,
        early_stopped,
        seconds: t0.elapsed().as_secs_f64(),
    };
    ctx.log
        .write(&serde_json::json!({"event": "phase_end", "report": report}))?;
    Ok((record.best, report))
}

/// A phase's best weights and validation history so far.
struct Record<B: Backend> {
    best: PemaAdapter<B>,
    best_step: u64,
    best_metrics: Option<DevMetrics>,
    dev_history: Vec<(u64, f64)>,
}

/// Validates `adapter` on the dev memory at `(step, epoch)`, records the loss (keeping the
/// weights when they are the best so far, or the first ones), logs a `dev` event (`final` at
/// the end of a phase); returns the metrics and whether the early-stopping rule fired.
fn validate<B: AutodiffBackend>(
    ctx: &mut Ctx<'_, B>,
    adapter: &PemaAdapter<B::InnerBackend>,
    phase: Phase,
    (step, epoch): (u64, usize),
    record: &mut Record<B::InnerBackend>,
    last: bool,
    t0: Instant,
) -> Result<(DevMetrics, bool)> {
    let m = evaluate(ctx, adapter, phase, step)?;
    let (improved, stop) = record_validation(&mut record.dev_history, step, m.loss);
    if improved || record.best_metrics.is_none() {
        record.best = adapter.clone();
        record.best_step = step;
        record.best_metrics = Some(m);
    }
    let mut event = serde_json::json!({
        "event": "dev", "phase": phase.number(), "step": step, "epoch": epoch,
        "loss": m.loss, "rct": m.rct, "pd": m.pd, "accuracy": m.accuracy,
        "best": improved, "elapsed_s": t0.elapsed().as_secs_f64(),
    });
    if last {
        event["final"] = serde_json::Value::Bool(true);
    }
    ctx.log.write(&event)?;
    Ok((m, stop))
}

/// Fails with [`AdapterError::NonFinite`] (naming the last checkpoint) on a non-finite mean
/// training loss.
fn check_train_loss<B: AutodiffBackend>(
    ctx: &Ctx<'_, B>,
    pb: &ProgressBar,
    phase: u8,
    step: u64,
    mean: f64,
) -> Result<()> {
    if mean.is_finite() {
        return Ok(());
    }
    pb.abandon();
    Err(AdapterError::NonFinite {
        phase,
        step,
        what: "train loss".into(),
        value: mean,
        checkpoint: ctx.last_checkpoint.clone(),
    })
}

pub(super) fn evaluate<B: AutodiffBackend>(
    ctx: &Ctx<'_, B>,
    adapter: &PemaAdapter<B::InnerBackend>,
    phase: Phase,
    step: u64,
) -> Result<DevMetrics> {
    let all =
        pema_memory::evenly_spaced(ctx.dev.len(), ctx.cfg.dev_max_entries.unwrap_or(usize::MAX));
    let n = all.len();
    let bs = ctx.cfg.dev_batch_size;
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    let (mut loss, mut rct, mut pd, mut correct) = (0.0, 0.0, 0.0, 0u64);
    let mut start = 0usize;
    while start < n {
        let end = (start + bs).min(n);
        let ids = &all[start..end];
        let (f, y) = load_batch::<B::InnerBackend>(
            ctx.dev,
            "dev",
            ids,
            ctx.head.vocab_size(),
            ctx.device,
            &mut keys,
            &mut values,
        )?;
        let w = (end - start) as f64;
        let l = adapter.losses(ctx.head, f, y.clone(), phase, false);
        loss += scalar(l.total)? * w;
        rct += scalar(l.rct)? * w;
        if let Some(p) = l.pd {
            pd += scalar(p)? * w;
        }
        if let Some(top1) = l.top1 {
            let hit = top1.equal(y).int().sum();
            correct += scalar_int(hit)?;
        }
        start = end;
    }
    let nf = n as f64;
    let m = DevMetrics {
        loss: loss / nf,
        rct: rct / nf,
        pd: (phase == Phase::Prediction).then_some(pd / nf),
        accuracy: (phase == Phase::Prediction).then_some(correct as f64 / nf),
    };
    if !m.loss.is_finite() {
        return Err(AdapterError::NonFinite {
            phase: phase.number(),
            step,
            what: "dev loss".into(),
            value: m.loss,
            checkpoint: ctx.last_checkpoint.clone(),
        });
    }
    Ok(m)
}

/// Gathers a batch and uploads it: keys `[n, d]`, values `[n]` (checked against the vocab).
pub(super) fn load_batch<B: Backend>(
    mem: &dyn MemorySource,
    what: &str,
    ids: &[u64],
    vocab: usize,
    device: &B::Device,
    keys: &mut Vec<f32>,
    values: &mut Vec<u32>,
) -> Result<(Tensor<B, 2>, Tensor<B, 1, Int>)> {
    keys.clear();
    values.clear();
    mem.gather(ids, keys, values)?;
    let d = mem.hidden_size();
    if keys.len() != ids.len() * d || values.len() != ids.len() {
        return Err(AdapterError::Data {
            what: what.into(),
            message: format!(
                "gather returned {} keys / {} values for {} entries",
                keys.len() / d.max(1),
                values.len(),
                ids.len()
            ),
        });
    }
    if let Some((i, v)) = values
        .iter()
        .enumerate()
        .find(|(_, v)| **v as usize >= vocab)
    {
        return Err(AdapterError::Data {
            what: what.into(),
            message: format!(
                "entry {} has value {v}, outside the head's vocabulary of {vocab}",
                ids[i]
            ),
        });
    }
    let f = Tensor::from_data(TensorData::new(keys.clone(), [ids.len(), d]), device);
    let ints: Vec<i64> = values.iter().map(|&v| v as i64).collect();
    let y = Tensor::from_data(TensorData::new(ints, [ids.len()]), device);
    Ok((f, y))
}

pub(super) fn scalar<B: Backend>(t: Tensor<B, 1>) -> Result<f64> {
    t.into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .ok()
        .and_then(|v| v.first().copied())
        .ok_or_else(|| AdapterError::Config("cannot read a loss value from the device".into()))
}

pub(super) fn scalar_int<B: Backend>(t: Tensor<B, 1, Int>) -> Result<u64> {
    t.into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .ok()
        .and_then(|v| v.first().copied())
        .map(|v| v.max(0) as u64)
        .ok_or_else(|| AdapterError::Config("cannot read a count from the device".into()))
}

pub(super) use pema_common::mix;

pub(super) fn permutation(n: usize, seed: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = (0..n as u64).collect();
    ids.shuffle(&mut StdRng::seed_from_u64(seed));
    ids
}

pub(super) fn progress_bar(show: bool, total: u64, pos: u64, phase: u8) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    let style = ProgressStyle::with_template(&format!(
        "phase {phase} [{{bar:30}}] {{pos}}/{{len}} steps {{per_sec}} eta {{eta}} {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_position(pos);
    pb
}
