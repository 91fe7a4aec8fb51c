//! Where a prefill and a batched decode step spend their time (timers around each op family).
//! `cargo run --release -p pema-backbone --example profile_step -- assets/gemma-3-270m`
#![allow(missing_docs)]

use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor, activation};
use pema_backbone::load_model_dir;

type B = Flex;

fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
    let _ = f();
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(f());
    }
    t.elapsed().as_secs_f64() * 1e3 / reps as f64
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or("assets/gemma-3-270m".into());
    let m = load_model_dir::<B>(dir.as_ref(), &Default::default()).expect("load");
    let c = m.model.config.clone();
    let dev = Default::default();
    let (d, hd, nh, nkv, f) = (
        c.hidden_size,
        c.head_dim,
        c.n_heads,
        c.n_kv_heads,
        c.ffn_size,
    );
    for &(rows, past) in &[(8usize, 150usize), (1, 128), (128, 0)] {
        let x = Tensor::<B, 2>::random([rows, d], Distribution::Normal(0.0, 1.0), &dev);
        let xf = Tensor::<B, 2>::random([rows, f], Distribution::Normal(0.0, 1.0), &dev);
        let xq = Tensor::<B, 2>::random([rows, nh * hd], Distribution::Normal(0.0, 1.0), &dev);
        let b0 = &m.model.blk[0];
        let reps = if rows > 8 { 3 } else { 20 };
        let qkv = time(reps, || {
            (
                b0.attn.attn_q.forward(x.clone()).into_data(),
                b0.attn.attn_k.forward(x.clone()).into_data(),
                b0.attn.attn_v.forward(x.clone()).into_data(),
            )
        });
        let o = time(reps, || b0.attn.attn_output.forward(xq.clone()).into_data());
        let ffn = time(reps, || {
            let g = b0.mlp.ffn_gate.forward(x.clone());
            let u = b0.mlp.ffn_up.forward(x.clone());
            b0.mlp.ffn_down.forward(xf.clone()).into_data();
            (g.into_data(), u.into_data())
        });
        let act = time(reps, || activation::gelu(xf.clone()).into_data());
        let norm = time(reps, || b0.attn_norm.forward(x.clone()).into_data());
        // attention over `past + t` keys, batch of `b` rows with t tokens each
        let (b, t) = if rows == 128 { (1, 128) } else { (rows, 1) };
        let s = past + t;
        let g = nh / nkv;
        let q = Tensor::<B, 4>::random([b, nkv, g * t, hd], Distribution::Normal(0.0, 1.0), &dev);
        let k = Tensor::<B, 4>::random([b, nkv, s, hd], Distribution::Normal(0.0, 1.0), &dev);
        let kn = Tensor::<B, 4>::random([b, nkv, t, hd], Distribution::Normal(0.0, 1.0), &dev);
        let mask = Tensor::<B, 4>::zeros([b, 1, g * t, s], &dev);
        let att = time(reps, || {
            let sc = q.clone().matmul(k.clone().swap_dims(2, 3)).mul_scalar(0.1) + mask.clone();
            activation::softmax(sc, 3).matmul(k.clone()).into_data()
        });
        let cat = time(reps, || {
            let kp = k.clone().narrow(2, 0, past.max(1));
            Tensor::cat(vec![kp, kn.clone()], 2).into_data()
        });
        let hrows = if rows == 128 { 1 } else { rows };
        let xh = Tensor::<B, 2>::random([hrows, d], Distribution::Normal(0.0, 1.0), &dev);
        let head = time(3, || m.model.logits(xh.clone()).into_data());
        let l = c.n_layers as f64;
        println!(
            "rows {rows} past {past}: per layer q/k/v {qkv:.2} ms, o {o:.2}, ffn {ffn:.2}, act {act:.2}, norm×4 {:.2}, attention {att:.2}, kv cat×2 {:.2}; \
             ×{l} layers = linears {:.1} ms, attention+cat {:.1} ms; head ({hrows} rows) {head:.1} ms",
            4.0 * norm,
            2.0 * cat,
            l * (qkv + o + ffn),
            l * (att + 2.0 * cat)
        );
    }
    // The whole thing, for comparison.
    let ids: Vec<u32> = (0..128).map(|i| 1000 + i).collect();
    let full = time(3, || {
        let mut cache = m.model.new_cache(vec![0]);
        m.model
            .forward(std::slice::from_ref(&ids), &mut cache)
            .expect("fw")
            .into_data()
    });
    let mut cache = m.model.new_cache(vec![0; 8]);
    let batch: Vec<Vec<u32>> = (0..8).map(|_| ids[..100].to_vec()).collect();
    m.model.forward(&batch, &mut cache).expect("fw");
    let step: Vec<Vec<u32>> = (0..8).map(|_| vec![5u32]).collect();
    let dec = time(5, || {
        let mut c2 = cache.clone();
        let h = m.model.forward(&step, &mut c2).expect("fw");
        m.model.logits(h.reshape([8, d])).into_data()
    });
    println!(
        "whole prefill 128 (no head): {full:.1} ms; whole batch-8 decode step at 100 (with head): {dec:.1} ms"
    );
}
