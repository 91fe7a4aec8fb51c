//! One function per fuzz target: each feeds arbitrary bytes to pema's real parsing code and
//! exercises what a successful parse hands out. Any panic, abort or huge allocation is a bug
//! in the parser; errors are the expected outcome for almost every input.
//!
//! `scratch` is a directory the function may write into (path-taking loaders read files
//! written there). The same functions run under libFuzzer (`fuzz/fuzz_targets/*`) and in the
//! stable replay test (`crates/pema-pipeline/tests/fuzz_replay.rs`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::backend::NdArray;
use pema_backbone::gguf::GgufFile;
use pema_backbone::gguf_tokenizer::{BpeVocab, PreTokenization, tokenizer_json_from_vocab};
use pema_backbone::{Family, LmHead, ModelConfig, PemaTokenizer, Transformer};

/// The backend the loaders build tensors on.
pub type B = NdArray<f32>;

/// A fuzz entry point: the input bytes and a scratch directory.
pub type Entry = fn(&[u8], &Path);

/// Every target, by name (the names of `fuzz/fuzz_targets/*.rs` and `fuzz/corpus/*`).
pub const TARGETS: &[(&str, Entry)] = &[
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("adapter", adapter),
    ("lora", lora),
    ("memory_manifest", memory_manifest),
    ("memory_store", memory_store),
    ("pairs", pairs),
    ("tokenizer", tokenizer),
];

/// Largest tensor (elements) the `gguf` target dequantises.
const MAX_DEQUANT_ELEMS: usize = 1 << 22;

/// Splits `data` as `len: u16 LE`, `len` bytes, rest (the length is clamped to what is there).
pub fn split2(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (data, &[]);
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    (&data[2..2 + n], &data[2 + n..])
}

/// The inverse of [`split2`] (for seeds).
pub fn join2(first: &[u8], rest: &[u8]) -> Vec<u8> {
    let n = u16::try_from(first.len()).expect("first part under 64 KiB");
    let mut out = n.to_le_bytes().to_vec();
    out.extend_from_slice(first);
    out.extend_from_slice(rest);
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).expect("scratch dir");
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("scratch write");
    p
}

fn dev() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

/// GGUF: parse (in memory and through the memory-mapped path), read metadata and every tensor,
/// dequantise what is small enough, derive the model config, pack the quantised matrices,
/// build the transformer and convert the embedded tokenizer.
pub fn gguf(data: &[u8], scratch: &Path) {
    let path = write(&scratch.join("gguf"), "model.gguf", data);
    let mapped = GgufFile::open(&path);
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        assert!(mapped.is_err(), "mmap and in-memory parses disagree");
        return;
    };
    assert!(mapped.is_ok(), "mmap and in-memory parses disagree");
    let _ = (file.version(), file.alignment(), file.data_start());
    for (k, v) in file.metadata() {
        let _ = (
            file.get_u64(k),
            file.get_f64(k),
            file.get_str(k),
            file.get_bool(k),
        );
        let _ = (v.as_i64(), v.as_array().map(<[_]>::len), v.type_id());
    }
    let _ = file.architecture();
    for t in file.tensors() {
        let _ = (t.shape(), t.n_bytes());
        let bytes = file.tensor_bytes(&t.name);
        assert!(bytes.is_ok(), "validated tensor `{}` has no bytes", t.name);
        if t.n_elements() <= MAX_DEQUANT_ELEMS
            && let Ok(v) = file.dequantize(&t.name)
        {
            assert_eq!(v.len(), t.n_elements());
        }
    }
    if let Ok(config) = ModelConfig::from_gguf(&file, "fuzz") {
        let _ = config.n_params();
        let _ = pema_backbone::packed::PackedModel::from_gguf(&file, config.n_layers);
        let _ = pema_backbone::build_transformer::<B>(config, &file, &dev());
    }
    if let Ok(json) = pema_backbone::gguf_tokenizer::tokenizer_json_from_gguf(&file) {
        exercise_tokenizer(&json, false, None);
    }
}

/// Safetensors: `StFile` (header, names, every tensor as f32) and the LM head loader.
pub fn safetensors(data: &[u8], scratch: &Path) {
    let path = write(&scratch.join("st"), "head.safetensors", data);
    if let Ok(file) = pema_backbone::st::StFile::open(&path) {
        let _ = file.metadata().len();
        for name in file.names().unwrap_or_default() {
            if let Ok((v, shape)) = file.tensor_f32(&name) {
                assert_eq!(v.len(), shape.iter().product::<usize>(), "`{name}`");
            }
        }
    }
    if let Ok(head) = LmHead::<B>::load(&path, &dev()) {
        let _ = (head.hidden_size(), head.vocab_size());
    }
}

/// The tiny LM head the `adapter` target's adapters are checked against (d 4, vocab 7).
pub fn adapter_head() -> LmHead<B> {
    let (d, v) = (4, 7);
    let norm: Vec<f32> = (0..d).map(|i| 0.8 + 0.1 * i as f32).collect();
    let w = pema_backbone::testing::pseudo_random(3, v * d);
    LmHead::from_host(norm, 1e-6, w, v, "tiny", &dev()).expect("tiny head")
}

/// PEMA adapter directory: `split2(data)` = (`adapter.json`, `adapter.safetensors`), loaded
/// against [`adapter_head`].
pub fn adapter(data: &[u8], scratch: &Path) {
    static HEAD: OnceLock<pema_adapter::FusedHead<B>> = OnceLock::new();
    let head = HEAD.get_or_init(|| {
        pema_adapter::FusedHead::new(&adapter_head(), Default::default()).expect("fused head")
    });
    let (config, weights) = split2(data);
    let dir = scratch.join("adapter");
    write(&dir, "adapter.json", config);
    write(&dir, "adapter.safetensors", weights);
    if let Ok((ad, meta)) = pema_adapter::PemaAdapter::<B>::load(&dir, head, &dev()) {
        let _ = (ad.paper_layout(), meta.adapter_config());
    }
}

/// The tiny model LoRA directories are merged into (Llama, 3 layers, d 32).
pub fn lora_model() -> Transformer<B> {
    pema_backbone::testing::tiny_model::<B>(Family::Llama, 2, &dev()).expect("tiny model")
}

/// LoRA directory: `split2(data)` = (`lora.json`, `lora.safetensors`); loaded, then merged
/// into [`lora_model`].
pub fn lora(data: &[u8], scratch: &Path) {
    static MODEL: OnceLock<Transformer<B>> = OnceLock::new();
    let model = MODEL.get_or_init(lora_model);
    let (meta, weights) = split2(data);
    let dir = scratch.join("lora");
    write(&dir, "lora.json", meta);
    write(&dir, "lora.safetensors", weights);
    let _ = pema_lora::lora::read_meta(&dir);
    if let Ok((l, _)) = pema_lora::Lora::<B>::load(&dir, &dev()) {
        let _ = l.params().len();
        let _ = pema_lora::merge(model, &l);
    }
}

/// Memory manifest: `Manifest::load` (JSON + `problems()`), `summary()` of whatever parses,
/// and `verify` of the directory (no shard files present).
pub fn memory_manifest(data: &[u8], scratch: &Path) {
    use pema_memory::Manifest;
    let dir = scratch.join("manifest");
    write(&dir, pema_memory::manifest::MANIFEST_FILE, data);
    let _ = Manifest::load(&dir);
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        let _ = (m.problems(), m.summary(), m.key_row_bytes(), m.to_bytes());
    }
    let _ = pema_memory::verify(&dir);
    let _ = pema_memory::MemoryStore::open(&dir);
}

/// The toy memory of the `memory_store` target: d 3, 7 pairs in shards of 3, pair p with
/// `p % 3` entries. Written (once per directory) by the real `MemoryWriter`.
pub fn toy_memory(dir: &Path, dtype: pema_memory::KeyDtype) {
    use pema_memory::manifest::{BuildMode, KeyState, MemoryMeta};
    use pema_memory::{MemoryWriter, Provenance, ShardData};
    let (d, pairs, per_shard) = (3usize, 7u64, 3u64);
    let meta = MemoryMeta {
        model_name: "toy".into(),
        model_sha256: "0".repeat(64),
        hidden_size: d,
        vocab_size: None,
        state: KeyState::pre_final_norm(0),
        dtype,
        tokenizer_fingerprint: "toy".into(),
        template_name: "mt".into(),
        template: "{source}".into(),
        mode: BuildMode::External,
        max_extra_steps: 10,
        data_file: "toy.tsv".into(),
        data_sha256: "0".repeat(64),
        pairs_total: pairs,
        pairs_per_shard: per_shard,
        batch_size: 1,
    };
    let mut w = MemoryWriter::open_or_create(dir, meta).expect("toy memory");
    let mut start = 0;
    while start < pairs {
        let end = (start + per_shard).min(pairs);
        let mut s = ShardData::new(start, end);
        for p in start..end {
            for t in 0..(p % 3) as u32 {
                let k: Vec<f32> = (0..d).map(|i| (p * 7 + i as u64) as f32 * 0.25).collect();
                let pr = Provenance {
                    pair: p as u32,
                    step: t,
                };
                s.push(&k, (p as u32) * 10 + t, pr);
            }
        }
        w.commit_shard(&s).expect("commit toy shard");
        start = end;
    }
    w.finish().expect("finish toy memory");
}

/// Memory store: byte 0 picks the key dtype (bit 1) and the mode (bit 0). Mode 0: the rest
/// replaces `manifest.json` of a valid toy memory (shards intact). Mode 1: the manifest is
/// the valid one and the rest, as `split2(split2(rest))`, replaces shard 0's keys, values and
/// provenance files. Then: open, read every entry every way, search, verify.
pub fn memory_store(data: &[u8], scratch: &Path) {
    use pema_memory::{KeyDtype, MemorySource, MemoryStore, manifest::shard_file_names};
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dtype = if mode & 2 == 0 {
        KeyDtype::F32
    } else {
        KeyDtype::F16
    };
    let base = scratch.join(format!("store-{}", dtype.name()));
    let orig = base.join("orig");
    let dir = base.join("mem");
    if !orig.join("manifest.json").exists() {
        toy_memory(&orig, dtype);
    }
    std::fs::create_dir_all(&dir).expect("store dir");
    for e in std::fs::read_dir(&orig).expect("orig").flatten() {
        std::fs::copy(e.path(), dir.join(e.file_name())).expect("copy toy memory");
    }
    if mode & 1 == 0 {
        write(&dir, "manifest.json", rest);
    } else {
        let (keys, rest) = split2(rest);
        let (values, prov) = split2(rest);
        let (k, v, p) = shard_file_names(0);
        write(&dir, &k, keys);
        write(&dir, &v, values);
        write(&dir, &p, prov);
    }
    let report = pema_memory::verify(&dir);
    let _ = report.is_ok();
    let Ok(store) = MemoryStore::open(&dir) else {
        return;
    };
    let n = store.len() as u64;
    let _ = (
        store.fingerprint(),
        store.hidden_size(),
        store.is_complete(),
    );
    let _ = store.manifest().summary();
    for s in 0..store.num_shards() {
        let _ = store.shard_range(s);
        let _ = (store.shard_keys_f32(s), store.shard_keys_f16(s));
        let _ = (store.shard_values(s).len(), store.shard_provenance(s).len());
    }
    for i in 0..n.min(4096) + 1 {
        let _ = (store.value(i), store.provenance(i), store.locate(i));
    }
    let ids: Vec<u64> = (0..n.min(4096)).rev().collect();
    let (mut k, mut v) = (Vec::new(), Vec::new());
    let _ = store.gather(&ids, &mut k, &mut v);
    let (mut k, mut v) = (Vec::new(), Vec::new());
    let _ = store.read_range(n / 3, n.min(4096), &mut k, &mut v);
    if let Ok(knn) = pema_memory::ExactKnn::<B>::new(&store, pema_memory::Metric::L2, 4, &dev()) {
        let _ = knn.search_host(&vec![0.5; store.hidden_size().min(1 << 16)], 3);
    }
}

/// Pairs file: `parse_pairs` on the text and `PairsFile::read` on the bytes.
pub fn pairs(data: &[u8], scratch: &Path) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pema_memory::pairs::parse_pairs(text);
    }
    let path = write(&scratch.join("pairs"), "pairs.tsv", data);
    if let Ok(f) = pema_memory::PairsFile::read(&path) {
        let _ = (f.len(), f.is_empty());
    }
}

/// Tokenizers: byte 0 picks the input kind (`% 3`): 0, a `tokenizer.json` text; 1, a GGUF file
/// whose embedded BPE tokenizer is converted; 2, a byte-level BPE vocabulary given as lines
/// (tokens, then a line `#merges`, then merges) converted by `tokenizer_json_from_vocab`.
/// Whatever builds then encodes and decodes a short text.
pub fn tokenizer(data: &[u8], _scratch: &Path) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (add_bos, bos) = match mode >> 4 {
        0 => (false, None),
        1 => (true, None),
        n => (n % 2 == 0, Some(u32::from(n) * 7)),
    };
    match mode % 3 {
        0 => {
            if let Ok(json) = std::str::from_utf8(rest) {
                exercise_tokenizer(json, add_bos, bos);
            }
        }
        1 => {
            if let Ok(file) = GgufFile::from_bytes(rest.to_vec())
                && let Ok(json) = pema_backbone::gguf_tokenizer::tokenizer_json_from_gguf(&file)
            {
                exercise_tokenizer(&json, add_bos, bos);
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let (toks, merges) = text.split_once("\n#merges\n").unwrap_or((text, ""));
            let tokens: Vec<&str> = toks.split('\n').collect();
            let merges: Vec<&str> = merges.split('\n').filter(|m| !m.is_empty()).collect();
            let pre = if mode & 8 == 0 {
                PreTokenization::Gpt2
            } else {
                PreTokenization::SmolLm
            };
            let vocab = BpeVocab {
                tokens: &tokens,
                merges: &merges,
                token_types: None,
                pre,
            };
            if let Ok(json) = tokenizer_json_from_vocab(&vocab) {
                exercise_tokenizer(&json, add_bos, bos);
            }
        }
    }
}

/// Builds a tokenizer from `json` and round-trips a short text through it.
fn exercise_tokenizer(json: &str, add_bos: bool, bos: Option<u32>) {
    let Ok(t) = PemaTokenizer::from_json(json, add_bos, bos, vec![2, 7]) else {
        return;
    };
    let n = t.vocab_size() as u32;
    let _ = (t.stop_ids(), t.fingerprint().len(), t.spec());
    for text in ["Hello, wörld! 123 ab\tc\n", ""] {
        if let Ok(ids) = t.encode_prompt(text) {
            let _ = t.decode(&ids);
        }
        if let Ok(ids) = t.encode_continuation(text) {
            let _ = t.decode(&ids);
        }
    }
    let _ = t.decode(&[0, 1, n.saturating_sub(1), n, u32::MAX]);
    for id in [0, 1, n.saturating_sub(1), n, u32::MAX] {
        let _ = t.token_text(id);
    }
}
