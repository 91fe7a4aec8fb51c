//! Value parsers for numeric flags: a bad number is refused while the arguments are parsed,
//! naming the flag, before any file is read or any model is loaded.

/// A count that must be at least 1 (batch sizes, ranks, steps, sample counts).
pub fn count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{s}`: {e}")),
    }
}

/// A step count that must be at least 1.
pub fn steps(s: &str) -> Result<u64, String> {
    count(s).map(|n| n as u64)
}

fn finite(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("`{s}` is not a finite number"))
    }
}

/// A finite number > 0 (learning rates, ratios, temperatures).
pub fn positive(s: &str) -> Result<f64, String> {
    match finite(s)? {
        v if v > 0.0 => Ok(v),
        v => Err(format!("{v} must be greater than 0")),
    }
}

/// A finite number ≥ 0 (smoothing values).
pub fn non_negative(s: &str) -> Result<f64, String> {
    match finite(s)? {
        v if v >= 0.0 => Ok(v),
        v => Err(format!("{v} must not be negative")),
    }
}

/// A weight in [0, 1] (λ, κ).
pub fn unit(s: &str) -> Result<f64, String> {
    match finite(s)? {
        v if (0.0..=1.0).contains(&v) => Ok(v),
        v => Err(format!("{v} must lie in [0, 1]")),
    }
}

/// A probability in [0, 1) (dropout).
pub fn dropout(s: &str) -> Result<f64, String> {
    match finite(s)? {
        v if (0.0..1.0).contains(&v) => Ok(v),
        v => Err(format!("{v} must lie in [0, 1)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_accept_the_domain_and_name_the_problem() {
        assert_eq!(count("3"), Ok(3));
        assert!(count("0").is_err_and(|e| e.contains("at least 1")));
        assert!(count("-1").is_err());
        assert_eq!(positive("1e-3"), Ok(1e-3));
        for bad in ["0", "-3", "nan", "inf", "x"] {
            assert!(positive(bad).is_err(), "{bad}");
        }
        assert_eq!(non_negative("0"), Ok(0.0));
        assert!(non_negative("-5").is_err());
        assert_eq!(unit("1"), Ok(1.0));
        assert!(unit("1.5").is_err() && unit("-0.1").is_err() && unit("NaN").is_err());
        assert!(dropout("1").is_err() && dropout("0.5").is_ok());
    }
}
