//! Activations quantised to 8 bits per block (one f32 scale per block of 32 or 256, as
//! llama.cpp's Q8_0/Q8_K activations), with the per-lane sums the bias terms need.

/// Elements per activation block.
pub const ACT_BLOCK: usize = 32;

/// Rows of activations, quantised: `x ≈ a·q` per block of 32.
#[derive(Debug, Clone, Default)]
pub struct QuantAct {
    /// Rows.
    pub rows: usize,
    /// Columns (a multiple of 32).
    pub cols: usize,
    /// Codes `[rows, cols]`, in −127..=127.
    pub q: Vec<i8>,
    /// Block scale `a` per 4 elements (repeated over the block), `[rows, cols/4]`.
    pub lane: Vec<f32>,
    /// `a·Σ q` per 4 elements, `[rows, cols/4]` (the bias terms' weights).
    pub lsum: Vec<f32>,
}

impl QuantAct {
    /// Quantises `x` (`[rows, cols]` row-major, `cols` a multiple of 32) per block of 32.
    pub fn quantize(x: &[f32], rows: usize, cols: usize) -> Self {
        Self::quantize_blocks(x, rows, cols, ACT_BLOCK)
    }

    /// Quantises with one scale per `block` elements (32, or 256 as llama.cpp's Q8_K does for
    /// K-quant weights; `block` must divide `cols` and be a multiple of 32).
    pub fn quantize_blocks(x: &[f32], rows: usize, cols: usize, block: usize) -> Self {
        let mut out = Self {
            rows,
            cols,
            q: vec![0; rows * cols],
            lane: vec![0.0; rows * cols / 4],
            lsum: vec![0.0; rows * cols / 4],
        };
        let block = if block > 0 && cols.is_multiple_of(block) && block.is_multiple_of(4) {
            block
        } else {
            ACT_BLOCK
        };
        for (bi, xb) in x.chunks_exact(block).enumerate() {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let a = amax / 127.0;
            let inv = if a > 0.0 { 1.0 / a } else { 0.0 };
            let q = &mut out.q[bi * block..(bi + 1) * block];
            for (qi, &v) in q.iter_mut().zip(xb) {
                *qi = (v * inv).round().clamp(-127.0, 127.0) as i8;
            }
            let lanes = block / 4;
            out.lane[bi * lanes..(bi + 1) * lanes].fill(a);
            for (l, q4) in q.chunks_exact(4).enumerate() {
                let s: i32 = q4.iter().map(|&v| i32::from(v)).sum();
                out.lsum[bi * lanes + l] = a * s as f32;
            }
        }
        out
    }
}
