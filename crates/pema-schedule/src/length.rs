//! The GU horizon L and the maximum generation length, per sequence.
//!
//! The official code sets L to the token count of the gold sequence (prompt + source +
//! reference) and derives max_length from the reference too: the reference leaks into
//! test-time decoding. pema keeps that only as an explicit [`HorizonMode::Oracle`] /
//! [`MaxLenMode::Oracle`] (the plan then says `uses_reference = true`); the default reads only
//! the source: L = ⌈source tokens × ratio⌉ with the target/source ratio estimated on the
//! training data ([`estimate_length_ratio`]).

use serde::{Deserialize, Serialize};

use crate::error::{Result, ScheduleError};

/// Where the GU horizon L of a sequence comes from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HorizonMode {
    /// The official behaviour: L given by the caller from the reference (e.g. the token count
    /// of prompt + source + reference). Results using it must be labelled as oracle.
    Oracle,
    /// L = ⌈source tokens × ratio⌉ (≥ 1): only test-time information. The default.
    Ratio {
        /// Target/source length ratio (from [`estimate_length_ratio`]).
        ratio: f64,
    },
    /// The same L for every sequence.
    Fixed {
        /// L.
        steps: usize,
    },
}

/// Where the maximum number of new tokens comes from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MaxLenMode {
    /// Reference tokens + `extra` (reads the reference).
    Oracle {
        /// Slack added to the reference length (memory construction uses 10).
        extra: usize,
    },
    /// ⌈source tokens × ratio × factor⌉ + extra. The default (factor 1.5, extra 10).
    Ratio {
        /// Target/source length ratio.
        ratio: f64,
        /// Safety factor on the expected length.
        factor: f64,
        /// Constant slack.
        extra: usize,
    },
    /// The same maximum for every sequence.
    Fixed {
        /// Maximum number of new tokens.
        tokens: usize,
    },
}

impl MaxLenMode {
    /// The default leak-free maximum for a ratio: factor 1.5, extra 10 tokens.
    pub fn from_ratio(ratio: f64) -> Self {
        MaxLenMode::Ratio {
            ratio,
            factor: 1.5,
            extra: 10,
        }
    }
}

/// Reference-derived lengths, supplied only in oracle mode.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OracleLengths {
    /// The official GU horizon per sequence (token count of prompt + source + reference).
    pub horizon: Vec<usize>,
    /// Reference token count per sequence (for the oracle maximum length).
    pub reference: Vec<usize>,
}

/// Per-sequence horizon and maximum length, and whether the reference was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LengthPlan {
    /// GU horizon L per sequence.
    pub horizons: Vec<f64>,
    /// Maximum number of new tokens per sequence.
    pub max_new_tokens: Vec<usize>,
    /// True when either the horizon or the maximum was derived from the reference.
    pub uses_reference: bool,
}

/// Builds the plan for sequences with `source_lens` source tokens. `oracle` is read only in
/// oracle modes (and must then be present with one entry per sequence).
pub fn plan_lengths(
    horizon: HorizonMode,
    max_len: MaxLenMode,
    source_lens: &[usize],
    oracle: Option<&OracleLengths>,
) -> Result<LengthPlan> {
    let n = source_lens.len();
    let oracle_field = |pick: fn(&OracleLengths) -> &Vec<usize>| -> Result<&Vec<usize>> {
        let o = oracle.ok_or(ScheduleError::MissingOracle)?;
        let v = pick(o);
        if v.len() != n {
            return Err(ScheduleError::Shape(format!(
                "{} oracle lengths for {n} sequences",
                v.len()
            )));
        }
        Ok(v)
    };
    let check_ratio = |r: f64| {
        if r.is_finite() && r > 0.0 {
            Ok(())
        } else {
            Err(ScheduleError::Config(format!(
                "length ratio must be positive, got {r}"
            )))
        }
    };
    let horizons: Vec<f64> = match horizon {
        HorizonMode::Oracle => oracle_field(|o| &o.horizon)?
            .iter()
            .map(|&l| l as f64)
            .collect(),
        HorizonMode::Ratio { ratio } => {
            check_ratio(ratio)?;
            source_lens
                .iter()
                .map(|&s| (s as f64 * ratio).ceil().max(1.0))
                .collect()
        }
        HorizonMode::Fixed { steps } => vec![steps as f64; n],
    };
    let max_new_tokens: Vec<usize> = match max_len {
        MaxLenMode::Oracle { extra } => oracle_field(|o| &o.reference)?
            .iter()
            .map(|&r| r + extra)
            .collect(),
        MaxLenMode::Ratio {
            ratio,
            factor,
            extra,
        } => {
            check_ratio(ratio)?;
            check_ratio(factor)?;
            source_lens
                .iter()
                .map(|&s| (s as f64 * ratio * factor).ceil() as usize + extra)
                .collect()
        }
        MaxLenMode::Fixed { tokens } => vec![tokens; n],
    };
    Ok(LengthPlan {
        horizons,
        max_new_tokens,
        uses_reference: matches!(horizon, HorizonMode::Oracle)
            || matches!(max_len, MaxLenMode::Oracle { .. }),
    })
}

/// Where the GU horizon L and the maximum length come from, by name: `ratio` (the default:
/// L = ⌈source × ratio⌉, maximum ⌈source × ratio × 1.5⌉ + 10), `oracle` (L and the maximum from
/// the reference; the official behaviour, labelled) or a fixed number of steps N (L = N; the
/// maximum from the ratio when one is known, else 2N + 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthSpec {
    /// From the source length and a target/source ratio (no reference at test time).
    Ratio,
    /// From the reference (a test-time leak; results must be labelled).
    Oracle,
    /// The same horizon for every sequence.
    Steps(usize),
}

impl LengthSpec {
    /// True when this spec reads the reference.
    pub fn is_oracle(self) -> bool {
        self == LengthSpec::Oracle
    }

    /// The horizon and maximum-length modes; `ratio` is the target/source length ratio (needed
    /// by [`LengthSpec::Ratio`]).
    pub fn modes(self, ratio: Option<f64>) -> Result<(HorizonMode, MaxLenMode)> {
        match self {
            LengthSpec::Oracle => Ok((HorizonMode::Oracle, MaxLenMode::Oracle { extra: 10 })),
            LengthSpec::Ratio => {
                let r = ratio.ok_or_else(|| {
                    ScheduleError::Config(
                        "the ratio length mode needs a target/source length ratio (record one \
                         in the adapter at training time or give one)"
                            .into(),
                    )
                })?;
                Ok((HorizonMode::Ratio { ratio: r }, MaxLenMode::from_ratio(r)))
            }
            LengthSpec::Steps(n) => {
                let max = match ratio {
                    Some(r) => MaxLenMode::from_ratio(r),
                    None => MaxLenMode::Fixed { tokens: 2 * n + 10 },
                };
                Ok((HorizonMode::Fixed { steps: n }, max))
            }
        }
    }
}

impl std::str::FromStr for LengthSpec {
    type Err = ScheduleError;
    fn from_str(spec: &str) -> Result<Self> {
        match spec.trim() {
            "oracle" => Ok(LengthSpec::Oracle),
            "ratio" => Ok(LengthSpec::Ratio),
            other => other.parse().map(LengthSpec::Steps).map_err(|_| {
                ScheduleError::Config(format!(
                    "length must be `oracle`, `ratio` or a number of steps, got `{other}`"
                ))
            }),
        }
    }
}

/// Target/source length ratio Σ target tokens / Σ source tokens over training pairs
/// `(source tokens, target tokens)`. For an external memory, "target tokens" of a pair is its
/// number of memory entries. `None` when there is no source token at all.
pub fn estimate_length_ratio(pairs: impl IntoIterator<Item = (usize, usize)>) -> Option<f64> {
    let (s, t) = pairs
        .into_iter()
        .fold((0u64, 0u64), |(s, t), (a, b)| (s + a as u64, t + b as u64));
    (s > 0).then(|| t as f64 / s as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_plan_never_reads_the_reference() {
        let plan = plan_lengths(
            HorizonMode::Ratio { ratio: 1.2 },
            MaxLenMode::from_ratio(1.2),
            &[10, 0, 3],
            None,
        )
        .expect("plan");
        assert_eq!(plan.horizons, vec![12.0, 1.0, 4.0]);
        assert_eq!(plan.max_new_tokens, vec![28, 10, 16]);
        assert!(!plan.uses_reference);
        // Oracle lengths supplied but not asked for: ignored, and the plan says so.
        let o = OracleLengths {
            horizon: vec![99; 3],
            reference: vec![99; 3],
        };
        let plan2 = plan_lengths(
            HorizonMode::Ratio { ratio: 1.2 },
            MaxLenMode::from_ratio(1.2),
            &[10, 0, 3],
            Some(&o),
        )
        .expect("plan");
        assert_eq!(plan, plan2);
    }

    #[test]
    fn oracle_mode_is_labelled_and_needs_lengths() {
        assert!(matches!(
            plan_lengths(
                HorizonMode::Oracle,
                MaxLenMode::Fixed { tokens: 5 },
                &[1],
                None
            ),
            Err(ScheduleError::MissingOracle)
        ));
        let o = OracleLengths {
            horizon: vec![40, 50],
            reference: vec![8, 9],
        };
        let plan = plan_lengths(
            HorizonMode::Oracle,
            MaxLenMode::Oracle { extra: 10 },
            &[3, 4],
            Some(&o),
        )
        .expect("plan");
        assert_eq!(plan.horizons, vec![40.0, 50.0]);
        assert_eq!(plan.max_new_tokens, vec![18, 19]);
        assert!(plan.uses_reference);
        let fixed = plan_lengths(
            HorizonMode::Fixed { steps: 60 },
            MaxLenMode::Fixed { tokens: 5 },
            &[3],
            None,
        )
        .expect("plan");
        assert_eq!(fixed.horizons, vec![60.0]);
        assert!(!fixed.uses_reference);
        assert!(
            plan_lengths(
                HorizonMode::Ratio { ratio: 0.0 },
                MaxLenMode::Fixed { tokens: 1 },
                &[1],
                None
            )
            .is_err()
        );
    }

    fn modes_of(spec: &str, ratio: Option<f64>) -> Result<(HorizonMode, MaxLenMode)> {
        spec.parse::<LengthSpec>()?.modes(ratio)
    }

    #[test]
    fn parses_command_line_modes() {
        assert_eq!(
            modes_of("oracle", None).expect("oracle"),
            (HorizonMode::Oracle, MaxLenMode::Oracle { extra: 10 })
        );
        assert!(modes_of("ratio", None).is_err());
        assert_eq!(
            modes_of("ratio", Some(1.2)).expect("ratio").0,
            HorizonMode::Ratio { ratio: 1.2 }
        );
        assert_eq!(
            modes_of("60", None).expect("fixed"),
            (
                HorizonMode::Fixed { steps: 60 },
                MaxLenMode::Fixed { tokens: 130 }
            )
        );
        assert!(modes_of("sixty", None).is_err());
    }

    #[test]
    fn ratio_estimate() {
        assert_eq!(estimate_length_ratio([(10, 12), (5, 6)]), Some(18.0 / 15.0));
        assert_eq!(estimate_length_ratio(std::iter::empty()), None);
    }
}
