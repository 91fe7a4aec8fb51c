//! Opens the real GGUF files of `assets/` (when present) and dequantises every tensor.
//! Skipped, with a printed reason, when the assets have not been fetched.

use std::path::PathBuf;

use pema_backbone::gguf::{GgmlType, GgufFile};

fn asset(rel: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets")
        .join(rel);
    if p.is_file() {
        Some(p)
    } else {
        println!(
            "skipped: {} is absent (see /work/shared/assets.md)",
            p.display()
        );
        None
    }
}

/// Opens `rel`, checks the architecture and tensor count, and dequantises every tensor.
fn check(rel: &str, arch: &str, n_tensors: usize) -> Option<GgufFile> {
    let path = asset(rel)?;
    let f = GgufFile::open(&path).expect("real GGUF opens");
    assert_eq!(f.architecture().expect("general.architecture"), arch);
    assert_eq!(f.tensors().len(), n_tensors, "tensor count of {rel}");
    let mut types = std::collections::BTreeMap::<String, usize>::new();
    for t in f.tensors() {
        *types.entry(t.ggml_type.to_string()).or_default() += 1;
        let v = f
            .dequantize(&t.name)
            .unwrap_or_else(|e| panic!("{}: {e}", t.name));
        assert_eq!(v.len(), t.n_elements());
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{}: non-finite value",
            t.name
        );
    }
    println!("{rel}: {} tensors, types {types:?}", f.tensors().len());
    Some(f)
}

#[test]
fn gemma3_270m_dequantises() {
    let Some(f) = check("gemma-3-270m/model.gguf", "gemma3", GEMMA_TENSORS) else {
        return;
    };
    let emb = f.tensor("token_embd.weight").expect("token embedding");
    assert_eq!(emb.shape(), vec![262_144, 640]);
    assert_eq!(f.get_u64("gemma3.block_count").expect("block_count"), 18);
    assert_eq!(f.get_u64("gemma3.embedding_length").expect("d"), 640);
    assert!(matches!(
        emb.ggml_type,
        GgmlType::Q8_0 | GgmlType::Q6_K | GgmlType::Q5_0 | GgmlType::Q4_K
    ));
}

#[test]
fn smollm2_135m_dequantises() {
    let Some(f) = check("smollm2-135m/model.gguf", "llama", SMOLLM_TENSORS) else {
        return;
    };
    assert_eq!(f.get_u64("llama.block_count").expect("block_count"), 30);
    assert_eq!(f.get_u64("llama.embedding_length").expect("d"), 576);
    let q = f.tensor("blk.0.attn_q.weight").expect("attn_q");
    assert_eq!(q.shape(), vec![576, 576]);
    let k = f.tensor("blk.0.attn_k.weight").expect("attn_k");
    assert_eq!(k.shape(), vec![192, 576]);
    assert_eq!(
        f.get_array("tokenizer.ggml.tokens").expect("vocab").len(),
        49_152
    );
}

const GEMMA_TENSORS: usize = 236;
const SMOLLM_TENSORS: usize = 272;
