//! Resumable training: the checkpoint written after every validation, its compatibility
//! check on resume, and the JSON-lines log.

use super::step::{adam_for, trained_matrices, weight_of};
use super::*;
use burn::optim::Optimizer;
use burn::optim::record::AdaptorRecord;

/// Everything that is restored when a run resumes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CheckpointState {
    pub(super) format: String,
    pub(super) phase: u8,
    pub(super) step: u64,
    pub(super) epoch: usize,
    pub(super) batch: usize,
    pub(super) adam_t: u64,
    pub(super) dev_history: Vec<(u64, f64)>,
    pub(super) best_step: u64,
    pub(super) best: Option<DevMetrics>,
    pub(super) phase1: Option<PhaseReport>,
    pub(super) weights: String,
    pub(super) config: TrainConfig,
    #[serde(flatten)]
    pub(super) provenance: Provenance,
}

/// JSON-lines log file.
pub(super) struct JsonLog {
    path: PathBuf,
    file: File,
}

impl JsonLog {
    pub(super) fn open(path: &Path, append: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .map_err(|e| AdapterError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub(super) fn write(&mut self, v: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}").map_err(|e| AdapterError::io(&self.path, e))
    }
}

pub(super) fn check_resume(
    st: &CheckpointState,
    cfg: &TrainConfig,
    head: &FusedHead<impl Backend>,
    train: &dyn MemorySource,
    dev: &dyn MemorySource,
    path: &Path,
) -> Result<()> {
    let bad = |message: String| {
        Err(AdapterError::ResumeMismatch {
            path: path.to_path_buf(),
            message,
        })
    };
    if st.format != CHECKPOINT_FORMAT {
        return bad(format!("unknown checkpoint format `{}`", st.format));
    }
    if let Some(why) = st.provenance.mismatch(&Provenance::new(head, train, dev)) {
        return bad(format!("the checkpoint was {why}"));
    }
    let diff = cfg.resume_differences(&st.config);
    if !diff.is_empty() {
        return bad(format!(
            "the settings differ from the checkpoint's ({}); start over without resume to change them",
            diff.join("; ")
        ));
    }
    Ok(())
}

pub(super) fn write_checkpoint<B: AutodiffBackend>(
    ctx: &mut Ctx<'_, B>,
    phase: Phase,
    s: &PhaseStart<B>,
) -> Result<()> {
    let dir = ctx.out.join(CHECKPOINT_DIR);
    let pn = phase.number();
    let weights_name = format!("weights-p{pn}-s{}.safetensors", s.step);
    let mut tensors = Vec::new();
    for (prefix, a) in [("cur.", &s.adapter), ("best.", &s.best)] {
        tensors.extend(adapter_matrices(prefix, a));
    }
    // Adam's state per trained matrix, in the phase's order (zeros before the first step).
    let record = s.optim.to_record();
    let states: Vec<AdamState<B::InnerBackend, 2>> = trained_matrices(phase, ctx.cfg.plan)
        .iter()
        .map(|&p| {
            let weight = weight_of(&s.adapter, p);
            match record.get(&weight.id) {
                Some(r) => r.clone().into_state::<2>(),
                None => AdamState {
                    t: 0,
                    m: weight.val().zeros_like(),
                    v: weight.val().zeros_like(),
                },
            }
        })
        .collect();
    // Every trained matrix has taken the same number of steps.
    let adam_t = states.first().map_or(0, |st| st.t);
    for (i, st) in states.iter().enumerate() {
        tensors.push((format!("adam.m{i}"), &st.m));
        tensors.push((format!("adam.v{i}"), &st.v));
    }
    write_matrices(&dir.join(&weights_name), &tensors)?;
    let state = CheckpointState {
        format: CHECKPOINT_FORMAT.into(),
        phase: pn,
        step: s.step,
        epoch: s.epoch,
        batch: s.batch,
        adam_t: adam_t as u64,
        dev_history: s.dev_history.clone(),
        best_step: s.best_step,
        best: s.best_metrics,
        phase1: ctx.phase1_report.clone(),
        weights: weights_name.clone(),
        config: ctx.cfg.clone(),
        provenance: Provenance::of(ctx),
    };
    let state_path = dir.join(STATE_FILE);
    write_json(&state_path, &state)?;
    // Only now that the state points at the new weights, remove older weight files.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("weights-") && name != weights_name {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    ctx.last_checkpoint = Some(state_path);
    Ok(())
}

pub(super) fn load_start<AD: AutodiffBackend>(
    ctx: &Ctx<'_, AD>,
    st: &CheckpointState,
    phase: Phase,
    acfg: AdapterConfig,
) -> Result<PhaseStart<AD>> {
    let path = ctx.out.join(CHECKPOINT_DIR).join(&st.weights);
    let file = Matrices::open(&path)?;
    let device = ctx.device;
    let adapter_of = |prefix: &str| file.adapter(prefix, acfg, ctx.key_stats.clone(), device);
    let adapter = adapter_of("cur.")?;
    let best = adapter_of("best.")?;
    let mut optim = adam_for::<AD>(ctx.cfg);
    let mut record = optim.to_record();
    for (i, &p) in trained_matrices(phase, ctx.cfg.plan).iter().enumerate() {
        let state = AdamState {
            t: st.adam_t as usize,
            m: file.get(&format!("adam.m{i}"), device)?,
            v: file.get(&format!("adam.v{i}"), device)?,
        };
        record.insert(weight_of(&adapter, p).id, AdaptorRecord::from_state(state));
    }
    optim = optim.load_record(record);
    Ok(PhaseStart {
        adapter,
        best,
        optim,
        step: st.step,
        epoch: st.epoch,
        batch: st.batch,
        dev_history: st.dev_history.clone(),
        best_step: st.best_step,
        best_metrics: st.best,
    })
}

/// The adapter's three matrices named `{prefix}a`, `{prefix}b_rct`, `{prefix}b_pd`.
pub(super) fn adapter_matrices<'a, B: Backend>(
    prefix: &str,
    a: &'a PemaAdapter<B>,
) -> [(String, &'a Tensor<B, 2>); 3] {
    [
        (format!("{prefix}a"), &*a.a),
        (format!("{prefix}b_rct"), &*a.b_rct),
        (format!("{prefix}b_pd"), &*a.b_pd),
    ]
}

/// Writes named 2-D tensors to a safetensors file (atomically, through `st::write_f32`).
pub(super) fn write_matrices<B: Backend>(
    path: &Path,
    tensors: &[(String, &Tensor<B, 2>)],
) -> Result<()> {
    let host_tensors: Vec<(&str, Vec<f32>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.as_str(), host(t)?, t.dims().to_vec())))
        .collect::<Result<_>>()?;
    let views: Vec<(&str, &[f32], &[usize])> = host_tensors
        .iter()
        .map(|(n, v, s)| (*n, v.as_slice(), s.as_slice()))
        .collect();
    pema_backbone::st::write_f32(path, &views, Default::default())?;
    Ok(())
}

/// A safetensors file of 2-D tensors written by [`write_matrices`].
pub(super) struct Matrices {
    file: pema_backbone::st::StFile,
    path: PathBuf,
}

impl Matrices {
    pub(super) fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            file: pema_backbone::st::StFile::open(path)?,
            path: path.to_path_buf(),
        })
    }

    /// The tensor `name`, which must be 2-D.
    pub(super) fn get<B: Backend>(&self, name: &str, device: &B::Device) -> Result<Tensor<B, 2>> {
        let (v, s) = self.file.tensor_f32(name)?;
        if s.len() != 2 {
            return Err(AdapterError::Format {
                path: self.path.clone(),
                message: format!("tensor `{name}` is not 2-D"),
            });
        }
        Ok(Tensor::from_data(TensorData::new(v, [s[0], s[1]]), device))
    }

    /// The adapter written by [`adapter_matrices`] under `prefix`, with `key_stats`.
    pub(super) fn adapter<B: Backend>(
        &self,
        prefix: &str,
        config: AdapterConfig,
        key_stats: Option<KeyStats<B>>,
        device: &B::Device,
    ) -> Result<PemaAdapter<B>> {
        Ok(PemaAdapter {
            config,
            a: Param::from_tensor(self.get(&format!("{prefix}a"), device)?),
            b_rct: Param::from_tensor(self.get(&format!("{prefix}b_rct"), device)?),
            b_pd: Param::from_tensor(self.get(&format!("{prefix}b_pd"), device)?),
            key_stats,
        })
    }
}
