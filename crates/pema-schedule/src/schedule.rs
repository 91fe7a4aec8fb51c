//! λ schedules (paper §4): constant λ and Gradual Unrolling (GU).
//!
//! GU: λ₀ = λmax; λ_k = (λmax·(1 − k/L))² for k ≥ 1, clamped at 0, where L is the expected
//! length of the continuation. The floor variant (not used in the paper) gives
//! λ_k = cur²·(1−m) + m with cur = max(0, λmax·(1 − k/L)).

use serde::{Deserialize, Serialize};

use crate::error::{Result, ScheduleError};

/// The two schedules of the paper, by name (`gu`, `constant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Gradual Unrolling (the paper's method).
    GradualUnrolling,
    /// Constant λ (the paper's "without GU" row).
    Constant,
}

impl ScheduleKind {
    /// Short name: `gu` or `constant`.
    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::GradualUnrolling => "gu",
            ScheduleKind::Constant => "constant",
        }
    }
}

impl std::str::FromStr for ScheduleKind {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "gu" | "gradual-unrolling" => Ok(ScheduleKind::GradualUnrolling),
            "constant" => Ok(ScheduleKind::Constant),
            other => Err(ScheduleError::Config(format!(
                "schedule must be `gu` or `constant`, got `{other}`"
            ))),
        }
    }
}

/// How λ evolves over the decoding steps k = 0, 1, 2, …
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// λ = `lambda` at every step (PEMA without GU).
    Constant {
        /// The interpolation weight of P_PEMA.
        lambda: f64,
    },
    /// Gradual Unrolling: PEMA dominates early, the PLM takes over as k approaches L.
    GradualUnrolling {
        /// λmax (paper: 0.9).
        lambda_max: f64,
        /// Optional floor m: λ_k = cur²·(1−m) + m (k ≥ 1). `None` in the paper.
        floor: Option<f64>,
    },
}

impl Schedule {
    /// The paper's GU schedule with λmax.
    pub fn gradual_unrolling(lambda_max: f64) -> Self {
        Schedule::GradualUnrolling {
            lambda_max,
            floor: None,
        }
    }

    /// The schedule of `kind` at `lambda_max` (the constant λ for [`ScheduleKind::Constant`]),
    /// with an optional GU floor; validated.
    pub fn new(kind: ScheduleKind, lambda_max: f64, floor: Option<f64>) -> Result<Self> {
        let s = match kind {
            ScheduleKind::GradualUnrolling => Schedule::GradualUnrolling { lambda_max, floor },
            ScheduleKind::Constant => Schedule::Constant { lambda: lambda_max },
        };
        s.validate()?;
        Ok(s)
    }

    /// Which kind of schedule this is.
    pub fn kind(&self) -> ScheduleKind {
        match self {
            Schedule::Constant { .. } => ScheduleKind::Constant,
            Schedule::GradualUnrolling { .. } => ScheduleKind::GradualUnrolling,
        }
    }

    /// Checks that λ, λmax and the floor lie in [0, 1].
    pub fn validate(&self) -> Result<()> {
        let (v, name) = match *self {
            Schedule::Constant { lambda } => (lambda, "lambda"),
            Schedule::GradualUnrolling { lambda_max, floor } => {
                if let Some(m) = floor
                    && !(0.0..=1.0).contains(&m)
                {
                    return Err(ScheduleError::Config(format!(
                        "floor must be in [0, 1], got {m}"
                    )));
                }
                (lambda_max, "lambda_max")
            }
        };
        if !(0.0..=1.0).contains(&v) {
            return Err(ScheduleError::Config(format!(
                "{name} must be in [0, 1], got {v}"
            )));
        }
        Ok(())
    }

    /// λ at step `k` (0 = first generated token) for a sequence of expected length `horizon`
    /// (L; ignored by the constant schedule). A horizon ≤ 0 gives λ = 0 (or the floor) after
    /// step 0.
    pub fn lambda(&self, k: usize, horizon: f64) -> f64 {
        match *self {
            Schedule::Constant { lambda } => lambda,
            Schedule::GradualUnrolling { lambda_max, floor } => {
                if k == 0 {
                    return lambda_max;
                }
                let cur = if horizon > 0.0 {
                    (lambda_max * (1.0 - k as f64 / horizon)).max(0.0)
                } else {
                    0.0
                };
                let sq = cur * cur;
                match floor {
                    Some(m) => sq * (1.0 - m) + m,
                    None => sq,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// λmax = 0.9, L = 60. Asserted exactly (±1e-6): λ₀ = 0.9; λ₁ = (0.9·59/60)² = 0.783225
    /// (the "0.783" is this value rounded); λ₁₀ = (0.9·5/6)² = 0.5625;
    /// λ₃₀ = (0.9·0.5)² = 0.2025; λ₆₀ = λ₇₀ = 0 (clamped).
    #[test]
    fn gradual_unrolling_values() {
        let gu = Schedule::gradual_unrolling(0.9);
        let cases = [
            (0, 0.9),
            (1, 0.783225),
            (10, 0.5625),
            (30, 0.2025),
            (60, 0.0),
            (70, 0.0),
        ];
        for (k, want) in cases {
            let got = gu.lambda(k, 60.0);
            assert!((got - want).abs() < 1e-6, "k={k}: {got} vs {want}");
        }
        assert!((gu.lambda(1, 60.0) - 0.783).abs() < 5e-4);
    }

    #[test]
    fn constant_and_floor() {
        let c = Schedule::Constant { lambda: 0.3 };
        assert_eq!(c.lambda(0, 10.0), 0.3);
        assert_eq!(c.lambda(99, 10.0), 0.3);
        let f = Schedule::GradualUnrolling {
            lambda_max: 0.9,
            floor: Some(0.1),
        };
        assert_eq!(f.lambda(0, 60.0), 0.9);
        assert!((f.lambda(30, 60.0) - (0.2025 * 0.9 + 0.1)).abs() < 1e-12);
        assert!((f.lambda(100, 60.0) - 0.1).abs() < 1e-12);
        assert!(Schedule::Constant { lambda: 1.5 }.validate().is_err());
        assert!(f.validate().is_ok());
        assert_eq!(Schedule::gradual_unrolling(0.9).lambda(3, 0.0), 0.0);
        let parse = |name: &str, l: f64| -> Result<Schedule> {
            Schedule::new(name.parse::<ScheduleKind>()?, l, None)
        };
        assert_eq!(
            parse("gu", 0.9).expect("gu"),
            Schedule::gradual_unrolling(0.9)
        );
        assert_eq!(
            parse("constant", 0.4).expect("c"),
            Schedule::Constant { lambda: 0.4 }
        );
        assert_eq!(parse("constant", 0.4).expect("c").kind().name(), "constant");
        assert!(parse("beam", 0.9).is_err());
        assert!(parse("gu", 1.9).is_err());
    }
}
