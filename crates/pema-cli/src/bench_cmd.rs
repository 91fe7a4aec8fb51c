//! `pema bench-step`: times PEMA's phase-2 training step at named shapes on the selected
//! device (synthetic data; [`pema_pipeline::step_bench`]), one JSON line per shape with the
//! keys `benches/pytorch_train_step.py` prints, so the two can be compared in one run.

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use pema_pipeline::step_bench::{StepShape, time_phase_two_step};

use crate::backend::{BackendTask, DeviceArg};
use crate::head_args::HeadArgs;

/// `pema bench-step` arguments.
#[derive(Debug, clap::Args)]
pub struct BenchStepArgs {
    /// Comma-separated shape names (`paper`: B 2,048, d 2,048, r 512, V 50,272;
    /// `gemma-r512-b2048`, `smollm2-r64-b256`, … as in `benches/pytorch_train_step.py`).
    #[arg(long, default_value = "gemma-r512-b256")]
    pub shapes: String,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 10, value_parser = crate::values::count)]
    pub steps: usize,
    /// The blockwise head's options (as for `pema train`).
    #[command(flatten)]
    pub head: HeadArgs,
    /// Device.
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceArg,
}

impl BackendTask for &BenchStepArgs {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let shapes = self
            .shapes
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(StepShape::named)
            .collect::<pema_pipeline::Result<Vec<_>>>()?;
        if shapes.is_empty() {
            anyhow::bail!("--shapes names no shape");
        }
        let config = self.head.config(self.device == DeviceArg::Cpu);
        let device_name = format!("{:?}", self.device).to_lowercase();
        for shape in shapes {
            let t = time_phase_two_step::<B>(shape, config, self.warmup, self.steps, &device)?;
            let mut line = serde_json::to_value(&t)?;
            line["device"] = device_name.clone().into();
            line["implementation"] = "pema".into();
            line["head"] = serde_json::to_value(config)?;
            println!("{line}");
        }
        Ok(())
    }
}
