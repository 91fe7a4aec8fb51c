//! Training opens its memories verified: a shard whose bytes no longer match the manifest's
//! sha256 is refused with the verify error (it was used silently before).

use pema_memory::{
    BuildMode, KeyDtype, KeyState, MemoryError, MemoryMeta, MemoryWriter, Provenance, ShardData,
};
use pema_pipeline::PipelineError;

fn write_memory(dir: &std::path::Path) {
    let meta = MemoryMeta {
        model_name: "m".into(),
        model_sha256: "0".repeat(64),
        hidden_size: 2,
        vocab_size: Some(10),
        state: KeyState::pre_final_norm(0),
        dtype: KeyDtype::F32,
        tokenizer_fingerprint: "t".into(),
        template_name: "mt".into(),
        template: "{source}".into(),
        mode: BuildMode::External,
        max_extra_steps: 10,
        data_file: "pairs".into(),
        data_sha256: "0".repeat(64),
        pairs_total: 2,
        pairs_per_shard: 2,
        batch_size: 1,
    };
    let mut w = MemoryWriter::open_or_create(dir, meta).expect("writer");
    let mut s = ShardData::new(0, 2);
    for (i, v) in [3u32, 4, 5].iter().enumerate() {
        let pr = Provenance {
            pair: (i / 2) as u32,
            step: (i % 2) as u32,
        };
        s.push(&[i as f32, 1.0], *v, pr);
    }
    w.commit_shard(&s).expect("commit");
    w.finish().expect("finish");
}

#[test]
fn training_refuses_a_memory_that_fails_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_memory(dir.path());
    pema_pipeline::train::open_memory(dir.path(), "training").expect("sound memory opens");
    let keys = dir.path().join("shard-000000.keys");
    let mut b = std::fs::read(&keys).expect("read");
    b[0] ^= 0x10;
    std::fs::write(&keys, b).expect("write");
    assert!(!pema_memory::verify(dir.path()).is_ok());
    let e = pema_pipeline::train::open_memory(dir.path(), "training").expect_err("corrupt");
    assert!(
        matches!(e, PipelineError::Memory(MemoryError::Checksum { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("shard-000000.keys"), "{e}");
}
