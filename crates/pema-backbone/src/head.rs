//! The LM head with its final norm: the only part of the PLM the data owner receives.
//!
//! P(·|c) = softmax(W_hd · norm(h)), with `norm` the model's final RMSNorm (paper §3,
//! `P_PEMA = softmax(W_hd · norm(h_pd))`). The head is exported as a safetensors file with
//! two tensors, `output_norm.weight` `[d]` and `output.weight` `[vocab, d]` (f32), and string
//! metadata `pema.format = "lm-head/1"`, `norm = "rms"`, `eps`, `model` and `fingerprint`.

use std::collections::HashMap;
use std::path::Path;

use burn::tensor::{Tensor, TensorData, backend::Backend};
use sha2::{Digest, Sha256};

use crate::error::{BackboneError, Result};
use crate::st;

/// Format tag written into the head file's metadata.
pub const HEAD_FORMAT: &str = "lm-head/1";

/// Frozen LM head: final RMSNorm (weight already in the `x · w` convention) and `W_hd`.
#[derive(Debug, Clone)]
pub struct LmHead<B: Backend> {
    /// Final norm weight `[d]` (Gemma's `+1` already folded in).
    pub norm_weight: Tensor<B, 1>,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// Output projection `W_hd`, `[vocab, d]`.
    pub weight: Tensor<B, 2>,
    /// Name of the model the head was taken from.
    pub model: String,
    /// sha256 over eps, shapes and the f32 bytes of both tensors (hex).
    pub fingerprint: String,
}

impl<B: Backend> LmHead<B> {
    /// Builds a head from host data; computes the fingerprint.
    pub fn from_host(
        norm_weight: Vec<f32>,
        eps: f64,
        weight: Vec<f32>,
        vocab: usize,
        model: &str,
        device: &B::Device,
    ) -> Result<Self> {
        let d = norm_weight.len();
        if d == 0 || vocab == 0 || weight.len() != vocab * d {
            return Err(BackboneError::Weight {
                name: "output.weight".into(),
                message: format!(
                    "expected {vocab}×{d} = {} values, got {}",
                    vocab * d,
                    weight.len()
                ),
            });
        }
        crate::loader::check_finite("output_norm.weight", &norm_weight)?;
        crate::loader::check_finite("output.weight", &weight)?;
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(BackboneError::Weight {
                name: "output_norm.weight".into(),
                message: format!("RMSNorm epsilon {eps} is not a finite value ≥ 0"),
            });
        }
        let fingerprint = fingerprint(&norm_weight, eps, &weight, vocab);
        Ok(Self {
            norm_weight: Tensor::from_data(TensorData::new(norm_weight, [d]), device),
            eps,
            weight: Tensor::from_data(TensorData::new(weight, [vocab, d]), device),
            model: model.to_string(),
            fingerprint,
        })
    }

    /// Hidden size d.
    pub fn hidden_size(&self) -> usize {
        self.norm_weight.dims()[0]
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.weight.dims()[0]
    }

    /// The final norm: `x · rsqrt(mean(x²) + eps) · w` over the last axis.
    pub fn norm<const D: usize>(&self, h: Tensor<B, D>) -> Tensor<B, D> {
        rms_norm(h, self.norm_weight.clone(), self.eps)
    }

    /// Logits `W_hd · norm(h)` for `h: [n, d]`, giving `[n, vocab]`.
    ///
    /// Computed as `(W_hd · norm(h)ᵀ)ᵀ`: `W_hd` is used in its stored `[vocab, d]` layout, so
    /// no backend has to materialise its transpose (670 MB for Gemma 3) on every call.
    pub fn forward(&self, h: Tensor<B, 2>) -> Tensor<B, 2> {
        self.weight
            .clone()
            .matmul(self.norm(h).transpose())
            .transpose()
    }

    /// Moves the head to another backend/device (e.g. the autodiff backend for training).
    pub fn to_backend<B2: Backend>(&self, device: &B2::Device) -> LmHead<B2> {
        LmHead {
            norm_weight: Tensor::from_data(self.norm_weight.to_data(), device),
            eps: self.eps,
            weight: Tensor::from_data(self.weight.to_data(), device),
            model: self.model.clone(),
            fingerprint: self.fingerprint.clone(),
        }
    }

    /// Writes the head as a safetensors file (see the module docs for the layout).
    pub fn save(&self, path: &Path) -> Result<()> {
        let norm = tensor_to_vec(self.norm_weight.to_data());
        let weight = tensor_to_vec(self.weight.to_data());
        let d = norm.len();
        let vocab = self.vocab_size();
        let mut meta = HashMap::new();
        meta.insert("pema.format".to_string(), HEAD_FORMAT.to_string());
        meta.insert("norm".to_string(), "rms".to_string());
        meta.insert("eps".to_string(), format!("{:e}", self.eps));
        meta.insert("model".to_string(), self.model.clone());
        meta.insert("fingerprint".to_string(), self.fingerprint.clone());
        st::write_f32(
            path,
            &[
                ("output.weight", &weight, &[vocab, d]),
                ("output_norm.weight", &norm, &[d]),
            ],
            meta,
        )
    }

    /// Loads a head written by [`LmHead::save`]; checks the format tag, the shapes and the
    /// fingerprint.
    pub fn load(path: &Path, device: &B::Device) -> Result<Self> {
        let parts = HeadParts::read(path, Vec::with_capacity, |w: &mut Vec<f32>, piece| {
            w.extend_from_slice(piece)
        })?;
        let d = parts.norm_weight.len();
        Ok(Self {
            norm_weight: Tensor::from_data(TensorData::new(parts.norm_weight, [d]), device),
            eps: parts.eps,
            weight: Tensor::from_data(TensorData::new(parts.weight, [parts.vocab, d]), device),
            model: parts.model,
            fingerprint: parts.fingerprint,
        })
    }
}

/// A head file's contents with W_hd in a storage of the caller's choice (`W`), filled piece
/// by piece: a head can be held at 16 bits without its f32 copy ever being resident.
#[derive(Debug, Clone)]
pub struct HeadParts<W> {
    /// Final norm weight `[d]`.
    pub norm_weight: Vec<f32>,
    /// RMSNorm epsilon.
    pub eps: f64,
    /// W_hd as `store` kept it (row-major `[vocab, d]` pieces, in order).
    pub weight: W,
    /// Vocabulary size.
    pub vocab: usize,
    /// Name of the model the head was taken from.
    pub model: String,
    /// The fingerprint (checked against the file's).
    pub fingerprint: String,
}

impl<W> HeadParts<W> {
    /// Reads a head written by [`LmHead::save`]: checks the format tag, the shapes, that every
    /// value is finite and the fingerprint: `init(vocab · d)` makes the storage and W_hd's f32
    /// values are handed to `store` in order.
    pub fn read(
        path: &Path,
        init: impl FnOnce(usize) -> W,
        mut store: impl FnMut(&mut W, &[f32]),
    ) -> Result<Self> {
        let bad = |message: String| BackboneError::Safetensors {
            path: path.to_path_buf(),
            message,
        };
        let file = st::StFile::open(path)?;
        let meta = file.metadata();
        let get = |k: &str| {
            meta.get(k).cloned().ok_or_else(|| {
                bad(format!(
                    "metadata key `{k}` missing: not a pema LM head file"
                ))
            })
        };
        let format = get("pema.format")?;
        if format != HEAD_FORMAT {
            return Err(bad(format!(
                "unsupported head format `{format}` (expected `{HEAD_FORMAT}`)"
            )));
        }
        let eps: f64 = get("eps")?
            .parse()
            .map_err(|_| bad("metadata `eps` is not a number".into()))?;
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(BackboneError::Weight {
                name: "output_norm.weight".into(),
                message: format!("RMSNorm epsilon {eps} is not a finite value ≥ 0"),
            });
        }
        let (norm, norm_shape) = file.tensor_f32("output_norm.weight")?;
        let w_shape = file.shape("output.weight")?;
        if norm_shape.len() != 1 || w_shape.len() != 2 || w_shape[1] != norm_shape[0] {
            return Err(bad(format!(
                "shapes {norm_shape:?} and {w_shape:?} do not form a head"
            )));
        }
        let (vocab, d) = (w_shape[0], w_shape[1]);
        if d == 0 || vocab == 0 {
            return Err(BackboneError::Weight {
                name: "output.weight".into(),
                message: format!("an empty head ({vocab}×{d})"),
            });
        }
        crate::loader::check_finite("output_norm.weight", &norm)?;
        let mut weight = init(vocab * d);
        let mut hash = Fingerprint::new(&norm, eps, vocab);
        let mut non_finite = NonFinite::default();
        file.for_each_piece_f32("output.weight", |piece| {
            non_finite.scan(piece);
            hash.update(piece);
            store(&mut weight, piece);
            Ok(())
        })?;
        non_finite.check("output.weight")?;
        let fingerprint = hash.finish();
        let stored = get("fingerprint")?;
        if stored != fingerprint {
            return Err(bad(format!(
                "fingerprint mismatch: file says {stored}, contents hash to {fingerprint}"
            )));
        }
        Ok(Self {
            norm_weight: norm,
            eps,
            weight,
            vocab,
            model: get("model")?,
            fingerprint,
        })
    }
}

/// Non-finite values met while streaming a tensor (the same report as
/// [`crate::loader::check_finite`], with global indices).
#[derive(Default)]
struct NonFinite {
    seen: usize,
    first: Option<(usize, f32)>,
    count: usize,
}

impl NonFinite {
    fn scan(&mut self, piece: &[f32]) {
        for (i, &x) in piece.iter().enumerate() {
            if !x.is_finite() {
                self.first.get_or_insert((self.seen + i, x));
                self.count += 1;
            }
        }
        self.seen += piece.len();
    }

    fn check(&self, name: &str) -> Result<()> {
        match self.first {
            None => Ok(()),
            Some((i, x)) => Err(BackboneError::Weight {
                name: name.to_string(),
                message: format!(
                    "{} non-finite values (first: {x} at index {i}); the weights are corrupt",
                    self.count
                ),
            }),
        }
    }
}

/// The head fingerprint computed incrementally (W_hd's values fed in order).
struct Fingerprint(Sha256);

impl Fingerprint {
    fn new(norm: &[f32], eps: f64, vocab: usize) -> Self {
        let mut h = Sha256::new();
        h.update(HEAD_FORMAT.as_bytes());
        h.update(eps.to_le_bytes());
        h.update((vocab as u64).to_le_bytes());
        h.update((norm.len() as u64).to_le_bytes());
        for x in norm {
            h.update(x.to_le_bytes());
        }
        Self(h)
    }

    fn update(&mut self, weight: &[f32]) {
        for chunk in weight.chunks(1 << 14) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.0.update(&bytes);
        }
    }

    fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

/// RMSNorm over the last axis, weight in the `x · w` convention.
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, D> {
    let var = x.clone().powf_scalar(2.0).mean_dim(D - 1);
    let x = x * var.add_scalar(eps).sqrt().recip();
    x * weight.unsqueeze()
}

fn tensor_to_vec(data: TensorData) -> Vec<f32> {
    data.convert::<f32>().into_vec::<f32>().unwrap_or_default()
}

/// Fingerprint of a head: sha256 over (eps, vocab, d, norm bytes, weight bytes).
pub fn fingerprint(norm: &[f32], eps: f64, weight: &[f32], vocab: usize) -> String {
    let mut h = Fingerprint::new(norm, eps, vocab);
    h.update(weight);
    h.finish()
}

pub use pema_common::hex;

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    #[test]
    fn head_round_trips_and_detects_tampering() {
        let dev = Default::default();
        let (v, d) = (7, 4);
        let w: Vec<f32> = (0..v * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let head = LmHead::<B>::from_host(vec![1.0, 0.5, 2.0, 1.5], 1e-6, w, v, "tiny", &dev)
            .expect("head");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("head.safetensors");
        head.save(&path).expect("save");
        let back = LmHead::<B>::load(&path, &dev).expect("load");
        assert_eq!(back.fingerprint, head.fingerprint);
        let x =
            Tensor::<B, 2>::from_data(TensorData::new(vec![0.1f32, -0.2, 0.3, 0.9], [1, 4]), &dev);
        let a = head.forward(x.clone()).into_data();
        let b = back.forward(x).into_data();
        a.assert_approx_eq::<f32>(&b, burn::tensor::Tolerance::absolute(1e-6));
        // Flip one byte of the weight data: the fingerprint check must refuse the file.
        let mut bytes = std::fs::read(&path).expect("read");
        let n = bytes.len();
        bytes[n - 1] ^= 0x40;
        std::fs::write(&path, bytes).expect("write");
        assert!(LmHead::<B>::load(&path, &dev).is_err());
    }
}
