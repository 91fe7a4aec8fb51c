//! Packed vs f32 weight products on a real GGUF (per call, ms).
//! `cargo run --release -p pema-backbone --example packed_speed -- assets/gemma-3-270m`
#![allow(missing_docs)]

use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};
use pema_backbone::gguf::GgufFile;
use pema_backbone::kernels::Proj;
use pema_backbone::load_model_dir;
use pema_backbone::packed::PackedModel;

fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
    let _ = f();
    let t = Instant::now();
    for _ in 0..reps {
        std::hint::black_box(f());
    }
    t.elapsed().as_secs_f64() * 1e3 / reps as f64
}

fn main() {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or("assets/gemma-3-270m".into()),
    );
    let m = load_model_dir::<Flex>(&dir, &Default::default()).expect("load");
    let file = GgufFile::open(&dir.join("model.gguf")).expect("gguf");
    let p = PackedModel::from_gguf(&file, m.model.config.n_layers).expect("packed");
    let simd = p.simd();
    let dev = Default::default();
    let head = p.head().expect("head");
    let gate = p.linear(0, Proj::Gate).expect("gate");
    let down = p.linear(0, Proj::Down).expect("down");
    for n in [1usize, 8, 128] {
        let x = Tensor::<Flex, 2>::random([n, head.cols()], Distribution::Normal(0.0, 1.0), &dev);
        let xd = Tensor::<Flex, 2>::random([n, down.cols()], Distribution::Normal(0.0, 1.0), &dev);
        let xs: Vec<f32> = x.to_data().into_vec().expect("v");
        let xds: Vec<f32> = xd.to_data().into_vec().expect("v");
        let reps = if n == 128 { 3 } else { 10 };
        let hp = if n <= 8 {
            time(reps, || head.matmul(&xs, n, simd))
        } else {
            f64::NAN
        };
        let hf = if n <= 8 {
            time(reps, || m.model.head.forward(x.clone()).into_data())
        } else {
            f64::NAN
        };
        let gp = time(reps, || gate.matmul(&xs, n, simd));
        let gf = time(reps, || {
            m.model.blk[0].mlp.ffn_gate.forward(x.clone()).into_data()
        });
        let dp = time(reps, || down.matmul(&xds, n, simd));
        let df = time(reps, || {
            m.model.blk[0].mlp.ffn_down.forward(xd.clone()).into_data()
        });
        println!(
            "n {n}: head {:?} packed {hp:.2} / f32 {hf:.2} ms; ffn_gate {:?} {gp:.3} / {gf:.3}; ffn_down {:?} {dp:.3} / {df:.3}",
            head.ty(),
            gate.ty(),
            down.ty()
        );
    }
}
