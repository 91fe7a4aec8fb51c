//! Phase 1 computed once per memory: every run that reaches phase 2 writes its phase-1 result
//! (`phase1.safetensors` + `phase1.json`) into its output directory, and a run with
//! [`TrainConfig::phase1_from`] starts from another run's result instead of training phase 1
//! again. Phase 1 (the autoencoder A₁, B_rct on L_rct) does not depend on κ, on the phase-2
//! plan (`bpd-only`) or on the form of h_pd, and every random stream is derived from the seed,
//! so the shared result is bit-identical to the one the run would compute itself. Every setting
//! phase 1 reads must match (checked, with a typed error naming the first difference).

use super::checkpoint::{Matrices, adapter_matrices, write_matrices};
use super::*;

/// Name of the phase-1 weights inside an output directory.
pub const PHASE1_WEIGHTS: &str = "phase1.safetensors";
/// Name of the phase-1 description inside an output directory.
pub const PHASE1_STATE: &str = "phase1.json";
const PHASE1_FORMAT: &str = "pema-phase1/1";

/// What `phase1.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Phase1State {
    format: String,
    report: PhaseReport,
    config: TrainConfig,
    #[serde(flatten)]
    provenance: Provenance,
}

/// Writes the kept phase-1 weights and report into `ctx.out`.
pub(super) fn save_phase1<B: AutodiffBackend>(
    ctx: &Ctx<'_, B>,
    best: &PemaAdapter<B::InnerBackend>,
    report: &PhaseReport,
) -> Result<()> {
    write_matrices(&ctx.out.join(PHASE1_WEIGHTS), &adapter_matrices("", best))?;
    write_json(
        &ctx.out.join(PHASE1_STATE),
        &Phase1State {
            format: PHASE1_FORMAT.into(),
            report: report.clone(),
            config: ctx.cfg.clone(),
            provenance: Provenance::of(ctx),
        },
    )
}

/// The first phase-1 setting in which `a` and `b` differ, if any.
fn phase1_difference(a: &TrainConfig, b: &TrainConfig) -> Option<&'static str> {
    let checks: [(&'static str, bool); 11] = [
        ("rank", a.rank == b.rank),
        ("dropout", a.dropout == b.dropout),
        ("phase-1 batch, epochs and step cap", a.phase1 == b.phase1),
        ("learning rate", a.lr == b.lr),
        ("Adam β₁", a.beta1 == b.beta1),
        ("Adam β₂", a.beta2 == b.beta2),
        ("Adam ε", a.epsilon == b.epsilon),
        ("validation interval", a.validate_every == b.validate_every),
        ("dev subsample", a.dev_max_entries == b.dev_max_entries),
        ("seed", a.seed == b.seed),
        ("key normalisation", a.key_norm == b.key_norm),
    ];
    checks.iter().find(|(_, same)| !same).map(|(name, _)| *name)
}

/// Reads the phase-1 result that `dir` holds, checked against this run's settings, head and
/// memories; returns its report and kept weights (with this run's key statistics).
pub(super) fn load_phase1<B: AutodiffBackend>(
    ctx: &Ctx<'_, B>,
    dir: &Path,
    acfg: AdapterConfig,
) -> Result<(PhaseReport, PemaAdapter<B::InnerBackend>)> {
    let state_path = dir.join(PHASE1_STATE);
    let st: Phase1State = read_json(&state_path)?;
    let bad = |message: String| AdapterError::ResumeMismatch {
        path: state_path.clone(),
        message,
    };
    if st.format != PHASE1_FORMAT {
        return Err(bad(format!("unknown phase-1 format `{}`", st.format)));
    }
    if let Some(why) = st.provenance.mismatch(&Provenance::of(ctx)) {
        return Err(bad(format!("phase 1 was {why}")));
    }
    if let Some(what) = phase1_difference(&st.config, ctx.cfg) {
        return Err(bad(format!("phase 1 was trained with another {what}")));
    }
    let path = dir.join(PHASE1_WEIGHTS);
    let best = Matrices::open(&path)?.adapter("", acfg, ctx.key_stats.clone(), ctx.device)?;
    let (d, r) = (acfg.d, acfg.rank);
    if best.a.dims() != [d, r] || best.b_rct.dims() != [r, d] || best.b_pd.dims() != [r, d] {
        return Err(AdapterError::Format {
            path,
            message: format!("phase-1 weights are not of rank {r} and width {d}"),
        });
    }
    Ok((st.report, best))
}
