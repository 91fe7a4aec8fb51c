//! The backend extension: the operations of the model that a specialised kernel may take over.
//!
//! The model code ([`crate::model`]) is written once against [`Kernels`]. Every method has a
//! default built from plain burn tensor ops ([`Reference`]: exact f32/f64, any backend,
//! differentiable). [`CpuKernels`] keeps the same model code and replaces attention with a host
//! kernel over a host-side KV cache, the element-wise gated activation and RoPE with host
//! passes ([`crate::elementwise`]) and, when given packed GGUF weights
//! ([`crate::packed::PackedModel`]), every weight product with integer dot products on the
//! quantised blocks.

use std::sync::Arc;

use burn::tensor::{Tensor, backend::Backend};

use crate::cache::SeqKv;
use crate::config::Family;
use crate::head::LmHead;
use crate::nn::{Linear, Rope};
use crate::packed::PackedModel;

/// Which projection of a block a linear-layer call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proj {
    /// `attn_q`.
    Q,
    /// `attn_k`.
    K,
    /// `attn_v`.
    V,
    /// `attn_output`.
    O,
    /// `ffn_gate`.
    Gate,
    /// `ffn_up`.
    Up,
    /// `ffn_down`.
    Down,
}

impl Proj {
    /// The GGUF tensor name of this projection in block `layer`.
    pub fn gguf_name(self, layer: usize) -> String {
        let k = match self {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        };
        format!("blk.{layer}.{k}.weight")
    }

    /// All projections, in block order.
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];
}

/// Shape facts of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnSpec {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// Logit scale.
    pub scale: f64,
    /// Sliding window (local layers), `None` for global attention.
    pub window: Option<usize>,
}

/// A ragged batch in one attention call: sequence `i` brings `new[i]` new positions (rows of
/// q/k/v, in order) after the `seqs[i].len` it has cached.
pub struct Ragged<'a, 'b, B: Backend> {
    /// The sequences' caches (their `len` is the number of positions before this call).
    pub seqs: &'a mut [&'b mut SeqKv<B>],
    /// New positions per sequence.
    pub new: &'a [usize],
}

/// The backend extension trait (see the module docs). Implementations must be exact up to
/// rounding (the reference) or documented approximations (packed weights).
pub trait Kernels<B: Backend>: Send + Sync {
    /// `x: [n, in]` times weight `proj` of block `layer` (`w` is its f32 form) → `[n, out]`.
    fn linear(&self, layer: usize, proj: Proj, w: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let _ = (layer, proj);
        w.forward(x)
    }

    /// PLM logits `W_hd · norm(h)` for `h: [n, d]`.
    fn head(&self, head: &LmHead<B>, h: Tensor<B, 2>) -> Tensor<B, 2> {
        head.forward(h)
    }

    /// The packed head [`Kernels::head`] multiplies, if it multiplies one (a data owner needs
    /// it to compute P_LM from f(c) bit for bit as these kernels do).
    fn packed_head(&self) -> Option<&crate::packed::PackedMatrix> {
        None
    }

    /// The gated feed-forward product `act(gate) ⊙ up`, `[n, ff]` each.
    fn gated(&self, family: Family, gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
        crate::elementwise::gated_reference(family, gate, up)
    }

    /// RoPE on `x: [n, heads, head_dim]` with the tables of [`Rope::tables_flat`].
    fn rope(
        &self,
        rope: &Rope,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 3>,
        sin: &Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        rope.apply_flat(x, cos, sin)
    }

    /// Appends the new keys/values to each sequence's layer-`layer` cache and attends:
    /// `q: [N, n_heads, hd]`, `k, v: [N, n_kv, hd]` → `[N, n_heads·hd]`, causal (and windowed).
    fn attention(
        &self,
        layer: usize,
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        batch: Ragged<'_, '_, B>,
        spec: &AttnSpec,
    ) -> Tensor<B, 2> {
        crate::attention::attention_tensor(layer, q, k, v, batch, spec)
    }

    /// Runs one forward pass `f` where these kernels want it run. The default runs it on the
    /// calling thread; the CPU kernels run it on a thread of rayon's pool (see
    /// [`on_rayon_worker`]).
    fn run_forward(&self, f: &mut (dyn FnMut() + Send)) {
        f()
    }

    /// A short name for reports (`reference`, `cpu`, `cpu-packed`).
    fn name(&self) -> &'static str;
}

/// Runs `f` on a thread of rayon's global pool (at once when already on one). A decoding step
/// is hundreds of small parallel products; started from a thread outside the pool, each one is
/// handed to the pool and waited for (a wake-up and a sleep per product), while from a worker
/// the caller takes part and its peers, still spinning from the last product, steal at once
/// (SmolLM2 packed decoding on 2 cores: 70–73 → 92–103 tok/s).
pub fn on_rayon_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        // `scope` runs its closure on a worker of the pool and returns its value.
        rayon::scope(|_| f())
    }
}

/// Plain burn ops everywhere: the exact reference, on any backend (and differentiable).
#[derive(Debug, Default, Clone, Copy)]
pub struct Reference;

impl<B: Backend> Kernels<B> for Reference {
    fn name(&self) -> &'static str {
        "reference"
    }
}

/// CPU kernels: host attention over a host KV cache, and packed quantised weights when given.
#[derive(Clone, Default)]
pub struct CpuKernels {
    packed: Option<Arc<PackedModel>>,
}

impl std::fmt::Debug for CpuKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuKernels")
            .field("packed", &self.packed.is_some())
            .finish()
    }
}

impl CpuKernels {
    /// Host attention, f32 weights through the backend's matmul.
    pub fn new() -> Self {
        Self { packed: None }
    }

    /// Host attention and packed weights for every projection and the head that `packed` holds.
    pub fn with_packed(packed: Arc<PackedModel>) -> Self {
        Self {
            packed: Some(packed),
        }
    }

    /// The packed weights, if any.
    pub fn packed(&self) -> Option<&PackedModel> {
        self.packed.as_deref()
    }
}

impl<B: Backend> Kernels<B> for CpuKernels {
    fn linear(&self, layer: usize, proj: Proj, w: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let packed = self.packed.as_ref();
        match packed.and_then(|p| p.linear(layer, proj).map(|m| (m, p.simd()))) {
            Some((m, simd)) => crate::packed::matmul_tensor(m, simd, x),
            None => w.forward(x),
        }
    }

    fn packed_head(&self) -> Option<&crate::packed::PackedMatrix> {
        self.packed.as_ref().and_then(|p| p.head())
    }

    fn head(&self, head: &LmHead<B>, h: Tensor<B, 2>) -> Tensor<B, 2> {
        let packed = self.packed.as_ref();
        on_rayon_worker(
            || match packed.and_then(|p| p.head().map(|m| (m, p.simd()))) {
                Some((m, simd)) => crate::packed::matmul_tensor(m, simd, head.norm(h)),
                None => crate::elementwise::head_logits(head, h),
            },
        )
    }

    fn attention(
        &self,
        layer: usize,
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        batch: Ragged<'_, '_, B>,
        spec: &AttnSpec,
    ) -> Tensor<B, 2> {
        crate::attention::attention_host(layer, q, k, v, batch, spec)
    }

    fn gated(&self, family: Family, gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
        crate::elementwise::gated(family, gate, up)
    }

    fn rope(
        &self,
        rope: &Rope,
        x: Tensor<B, 3>,
        cos: &Tensor<B, 3>,
        sin: &Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        crate::elementwise::rope(rope, x, cos, sin)
    }

    fn run_forward(&self, f: &mut (dyn FnMut() + Send)) {
        on_rayon_worker(f)
    }

    fn name(&self) -> &'static str {
        if self.packed.is_some() {
            "cpu-packed"
        } else {
            "cpu"
        }
    }
}
