//! Compiles and exercises `pema-cli`'s `memory_cmd.rs` (the CLI glue of this crate) with the
//! toy PLM, so the glue is tested where the memory code lives.

#[path = "../../pema-cli/src/args.rs"]
mod args;
#[path = "../../pema-cli/src/memory_cmd.rs"]
mod memory_cmd;

use burn::backend::NdArray;
use clap::Parser;
use memory_cmd::MemoryCmd;
use pema_memory::toy::{ToyPlm, ToyTokenizer};
use pema_memory::{KeyState, MemoryStore, ModelInfo};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: MemoryCmd,
}

#[test]
fn build_info_verify() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pairs = tmp.path().join("p.tsv");
    std::fs::write(&pairs, "hello\thallo\nthank you\tdanke\n").expect("write");
    let out = tmp.path().join("mem");
    let (p, o) = (pairs.to_str().expect("utf8"), out.to_str().expect("utf8"));
    let cli = Cli::try_parse_from([
        "memory",
        "build",
        "--model",
        "m",
        "--pairs",
        p,
        "--out",
        o,
        "--template",
        "formality",
        "--mode",
        "teacher",
        "--dtype",
        "f16",
        "--no-progress",
    ])
    .expect("parse build");
    let MemoryCmd::Build(args) = &cli.cmd else {
        panic!("expected build");
    };
    assert!(memory_cmd::run(&cli.cmd).is_err(), "build needs a model");
    let plm = ToyPlm::<NdArray<f32>>::new(8, &Default::default());
    let model = ModelInfo {
        name: "toy".into(),
        weights_sha256: "3".repeat(64),
        hidden_size: 8,
        state: KeyState::pre_final_norm(0),
    };
    let s = memory_cmd::build(args, &plm, &ToyTokenizer, &model).expect("build");
    assert_eq!(s.entries, 5 + 5);
    assert_eq!(
        MemoryStore::open(&out)
            .expect("open")
            .manifest()
            .meta
            .template_name,
        "formality"
    );
    for argv in [
        vec!["memory", "info", o],
        vec!["memory", "info", "--json", o],
        vec!["memory", "verify", o],
    ] {
        let cli = Cli::try_parse_from(argv).expect("parse");
        memory_cmd::run(&cli.cmd).expect("info/verify");
    }
    std::fs::remove_file(out.join("shard-000000.values")).expect("rm");
    let cli = Cli::try_parse_from(["memory", "verify", o]).expect("parse");
    let e = memory_cmd::run(&cli.cmd).expect_err("broken memory");
    assert!(e.to_string().contains("1 problem"), "{e}");
}
