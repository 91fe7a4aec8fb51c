//! Per-dimension key statistics of a memory (pema's key standardisation).

use super::*;

/// [`key_stats_host`] uploaded as [`KeyStats`].
pub fn key_stats_of<B: Backend>(
    mem: &dyn MemorySource,
    what: &str,
    device: &B::Device,
) -> Result<KeyStats<B>> {
    let (mean, std) = key_stats_host(mem, what)?;
    Ok(KeyStats::from_host(mean, std, device))
}

/// Per-dimension mean μ and standard deviation σ of the keys of `mem`, named `what` in errors (one streaming pass, f64
/// sums); σ is floored at 1e-6·(1 + |μ|) so that a constant dimension maps to 0, not NaN.
pub fn key_stats_host(mem: &dyn MemorySource, what: &str) -> Result<(Vec<f32>, Vec<f32>)> {
    let d = mem.hidden_size();
    let n = mem.len();
    if n == 0 {
        return Err(AdapterError::Data {
            what: what.into(),
            message: "has no entries".into(),
        });
    }
    let (mut sum, mut sq) = (vec![0f64; d], vec![0f64; d]);
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    const CHUNK: u64 = 4096;
    let mut start = 0u64;
    while start < n as u64 {
        let end = (start + CHUNK).min(n as u64);
        let ids: Vec<u64> = (start..end).collect();
        keys.clear();
        values.clear();
        mem.gather(&ids, &mut keys, &mut values)?;
        for row in keys.chunks_exact(d) {
            for (j, &x) in row.iter().enumerate() {
                let x = x as f64;
                sum[j] += x;
                sq[j] += x * x;
            }
        }
        start = end;
    }
    let nf = n as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / nf).collect();
    let std: Vec<f32> = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| {
            let var = (q / nf - m * m).max(0.0);
            var.sqrt().max(1e-6 * (1.0 + m.abs())) as f32
        })
        .collect();
    let mean: Vec<f32> = mean.iter().map(|m| *m as f32).collect();
    if mean.iter().chain(&std).any(|v| !v.is_finite()) {
        return Err(AdapterError::Data {
            what: what.into(),
            message: "key statistics are not finite (a key holds inf or NaN)".into(),
        });
    }
    Ok((mean, std))
}
