//! The seed corpora of the fuzz targets, made with pema's own writers (GGUF writer,
//! safetensors writer, LM head, adapter and LoRA `save`, `MemoryWriter`) plus small excerpts
//! of the real tokenizers. Regenerate with
//! `cargo test -p pema-pipeline --test fuzz_replay -- --ignored make_seeds`
//! (`PEMA_ASSETS` names the assets directory with the real models; default `assets`).
//! Every seed stays well under 64 KiB. Included by path from `targets.rs`'s users.

use std::collections::HashMap;
use std::path::Path;

use pema_backbone::gguf::{GgmlType, GgufWriter, MetaValue};
use pema_backbone::{Family, ModelConfig};

use super::targets::{self, B, join2};

/// Writes every target's seeds under `out/<target>/`; `assets` (real models) is optional.
pub fn make_seeds(out: &Path, assets: Option<&Path>) {
    let put = |target: &str, name: &str, bytes: &[u8]| {
        assert!(
            bytes.len() <= 64 << 10,
            "seed {target}/{name} is {} bytes",
            bytes.len()
        );
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).expect("seed dir");
        std::fs::write(dir.join(name), bytes).expect("write seed");
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let tmp = tmp.path();

    // gguf: tiny Llama and Gemma 3 models (every dequantisable type somewhere), a file of
    // every metadata type with K-quant tensors, and the headers of the real models.
    let llama = tiny_gguf(
        Family::Llama,
        &[GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::F16],
    );
    let gemma = tiny_gguf(
        Family::Gemma3,
        &[
            GgmlType::Q5_1,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::BF16,
        ],
    );
    put("gguf", "tiny-llama.gguf", &llama);
    put("gguf", "tiny-gemma3.gguf", &gemma);
    put("gguf", "kquants-and-metadata.gguf", &kquant_gguf());
    if let Some(a) = assets {
        for m in ["smollm2-135m", "gemma-3-270m"] {
            if let Ok(b) = std::fs::read(a.join(m).join("model.gguf")) {
                put(
                    "gguf",
                    &format!("{m}-head-8k.gguf"),
                    &b[..b.len().min(8 << 10)],
                );
            }
        }
    }

    // safetensors: a real head, a multi-tensor f32 file, and a hand-made F16/BF16/I32 file.
    let head = targets::adapter_head();
    let p = tmp.join("head.safetensors");
    head.save(&p).expect("save head");
    put("safetensors", "head.safetensors", &read(&p));
    let p = tmp.join("multi.safetensors");
    let meta: HashMap<String, String> = [("k".to_string(), "v".to_string())].into();
    let v = [1.0f32, -2.0, 0.5, 3.0, 0.0, -0.25];
    let t: [(&str, &[f32], &[usize]); 3] =
        [("a", &v, &[2, 3]), ("b", &v[..1], &[]), ("c", &[], &[0, 4])];
    pema_backbone::st::write_f32(&p, &t, meta).expect("write st");
    put("safetensors", "multi.safetensors", &read(&p));
    put("safetensors", "half.safetensors", &half_safetensors());

    // adapter: `join2(adapter.json, adapter.safetensors)`, plain and with key statistics.
    for (name, standardize) in [("plain", false), ("keystats", true)] {
        put("adapter", name, &adapter_seed(tmp, standardize));
    }

    // lora: `join2(lora.json, lora.safetensors)`.
    for (name, targets_list) in [("qv", "q,v"), ("all", "all")] {
        put("lora", name, &lora_seed(tmp, targets_list));
    }

    // memory_manifest / memory_store: the toy memory in both dtypes.
    for (tag, dtype) in [
        ("f32", pema_memory::KeyDtype::F32),
        ("f16", pema_memory::KeyDtype::F16),
    ] {
        let dir = tmp.join(format!("mem-{tag}"));
        targets::toy_memory(&dir, dtype);
        let manifest = read(&dir.join("manifest.json"));
        put("memory_manifest", &format!("toy-{tag}.json"), &manifest);
        let bit = if tag == "f16" { 2u8 } else { 0 };
        let mut m = vec![bit];
        m.extend_from_slice(&manifest);
        put("memory_store", &format!("manifest-{tag}"), &m);
        let (k, v, p) = pema_memory::manifest::shard_file_names(0);
        let shards = join2(
            &read(&dir.join(k)),
            &join2(&read(&dir.join(v)), &read(&dir.join(p))),
        );
        let mut s = vec![bit | 1];
        s.extend_from_slice(&shards);
        put("memory_store", &format!("shard0-{tag}"), &s);
    }
    let empty = pema_memory::Manifest::new(
        pema_memory::Manifest::load(&tmp.join("mem-f32"))
            .expect("toy")
            .meta,
    );
    put("memory_manifest", "empty.json", &empty.to_bytes());

    // pairs: every line form.
    put(
        "pairs",
        "tsv.tsv",
        "Hello world\tHallo Welt\nA\tB\r\n\n  \nx\t\n".as_bytes(),
    );
    put(
        "pairs",
        "jsonl.jsonl",
        concat!(
            "{\"source\":\"The document.\",\"target\":\"Das Dokument.\"}\n",
            "{\"en\":\"I’m sorry.\",\"du\":\"Tut mir leid.\"}\n",
            "one\ttwo\n",
            "{\"source\":\"a\",\"target\":\"b\",\"extra\":1}\r\n"
        )
        .as_bytes(),
    );

    // tokenizer: mode 0 (tokenizer.json), 1 (GGUF), 2 (vocabulary lines).
    let (tokens, merges) = tiny_vocab();
    let json = pema_backbone::gguf_tokenizer::tokenizer_json_from_vocab(
        &pema_backbone::gguf_tokenizer::BpeVocab {
            tokens: &tokens.iter().map(String::as_str).collect::<Vec<_>>(),
            merges: &merges.iter().map(String::as_str).collect::<Vec<_>>(),
            token_types: None,
            pre: pema_backbone::gguf_tokenizer::PreTokenization::SmolLm,
        },
    )
    .expect("tiny tokenizer json");
    put(
        "tokenizer",
        "bpe.json",
        &[&[0u8][..], json.as_bytes()].concat(),
    );
    let wordlevel = r#"{"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"<unk>":0,"a":1},"unk_token":"<unk>"}}"#;
    put(
        "tokenizer",
        "wordlevel.json",
        &[&[0x30u8][..], wordlevel.as_bytes()].concat(),
    );
    put("tokenizer", "tiny.gguf", &[&[1u8][..], &llama].concat());
    let mut lines = tokens.join("\n");
    lines.push_str("\n#merges\n");
    lines.push_str(&merges.join("\n"));
    put(
        "tokenizer",
        "vocab.txt",
        &[&[2u8][..], lines.as_bytes()].concat(),
    );
    if let Some(a) = assets {
        for m in ["smollm2-135m", "gemma-3-270m"] {
            if let Some(j) = reduced_tokenizer(&a.join(m).join("tokenizer.json"), 300) {
                put(
                    "tokenizer",
                    &format!("{m}-reduced.json"),
                    &[&[0x40u8][..], j.as_bytes()].concat(),
                );
            }
        }
    }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A tiny byte-level BPE vocabulary (tokens, merges): specials, letters, digits, `Ġ`, merges.
fn tiny_vocab() -> (Vec<String>, Vec<String>) {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    tokens.extend(('a'..='z').map(String::from));
    tokens.push("Ġ".into());
    tokens.extend(('0'..='9').map(String::from));
    let pairs = [
        ("t", "h"),
        ("th", "e"),
        ("Ġ", "t"),
        ("i", "n"),
        ("e", "r"),
        ("a", "n"),
        ("o", "n"),
        ("r", "e"),
        ("Ġ", "a"),
        ("h", "e"),
        ("Ġt", "he"),
        ("e", "l"),
        ("l", "o"),
        ("el", "lo"),
        ("h", "ello"),
        ("w", "o"),
        ("wo", "r"),
        ("l", "d"),
        ("wor", "ld"),
        ("Ġ", "w"),
        ("a", "b"),
        ("1", "2"),
    ];
    let mut merges = Vec::new();
    for (l, r) in pairs {
        merges.push(format!("{l} {r}"));
        tokens.push(format!("{l}{r}"));
    }
    (tokens, merges)
}

/// A GGUF of the tiny model of `family` (with an embedded BPE tokenizer), tensors in `types`
/// (cycled; F16 where the row length does not fit the block size).
fn tiny_gguf(family: Family, types: &[GgmlType]) -> Vec<u8> {
    let cfg: ModelConfig = pema_backbone::testing::tiny_config(family);
    let weights = pema_backbone::testing::random_weights(&cfg, 5);
    let arch = match family {
        Family::Llama => "llama",
        Family::Gemma3 => "gemma3",
    };
    let mut w = GgufWriter::new();
    let u = |v: usize| MetaValue::U32(v as u32);
    w.add_metadata("general.architecture", MetaValue::String(arch.into()));
    w.add_metadata("general.name", MetaValue::String(cfg.name.clone()));
    for (k, v) in [
        ("embedding_length", u(cfg.hidden_size)),
        ("block_count", u(cfg.n_layers)),
        ("feed_forward_length", u(cfg.ffn_size)),
        ("attention.head_count", u(cfg.n_heads)),
        ("attention.head_count_kv", u(cfg.n_kv_heads)),
        ("attention.key_length", u(cfg.head_dim)),
        ("context_length", u(cfg.context_length)),
        (
            "attention.layer_norm_rms_epsilon",
            MetaValue::F32(cfg.rms_eps as f32),
        ),
        ("rope.freq_base", MetaValue::F32(cfg.rope_theta as f32)),
        ("attention.sliding_window", u(4)),
    ] {
        w.add_metadata(format!("{arch}.{k}"), v);
    }
    let (mut tokens, merges) = tiny_vocab();
    tokens.truncate(cfg.vocab_size);
    while tokens.len() < cfg.vocab_size {
        tokens.push(format!("x{}", tokens.len()));
    }
    let strs =
        |v: &[String]| MetaValue::Array(v.iter().map(|s| MetaValue::String(s.clone())).collect());
    w.add_metadata("tokenizer.ggml.model", MetaValue::String("gpt2".into()));
    w.add_metadata("tokenizer.ggml.pre", MetaValue::String("smollm".into()));
    w.add_metadata("tokenizer.ggml.tokens", strs(&tokens));
    w.add_metadata("tokenizer.ggml.merges", strs(&merges[..merges.len() - 2]));
    let types_meta = (0..tokens.len())
        .map(|i| MetaValue::I32(if i < 3 { 3 } else { 1 }))
        .collect();
    w.add_metadata("tokenizer.ggml.token_type", MetaValue::Array(types_meta));
    w.add_metadata("tokenizer.ggml.bos_token_id", MetaValue::U32(1));
    w.add_metadata("tokenizer.ggml.eos_token_id", MetaValue::U32(2));
    w.add_metadata(
        "tokenizer.ggml.add_bos_token",
        MetaValue::Bool(family == Family::Gemma3),
    );
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    for (i, name) in names.into_iter().enumerate() {
        let (values, shape) = &weights[name];
        let row = shape.last().copied().unwrap_or(1);
        let mut ty = types[i % types.len()];
        if shape.len() == 1 || row % ty.block_elems() != 0 {
            ty = if shape.len() == 1 {
                GgmlType::F32
            } else {
                GgmlType::F16
            };
        }
        w.add_tensor(name.clone(), shape, values, ty)
            .expect("add tensor");
    }
    w.to_bytes().expect("tiny gguf")
}

/// A GGUF with every metadata value type (nested arrays too) and one small tensor of every
/// dequantisable type, K-quants included.
fn kquant_gguf() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_metadata("general.alignment", MetaValue::U32(64));
    let scalars = [
        MetaValue::U8(1),
        MetaValue::I8(-1),
        MetaValue::U16(2),
        MetaValue::I16(-2),
        MetaValue::U32(3),
        MetaValue::I32(-3),
        MetaValue::F32(0.5),
        MetaValue::Bool(true),
        MetaValue::String("s".into()),
        MetaValue::U64(4),
        MetaValue::I64(-4),
        MetaValue::F64(0.25),
    ];
    for (i, v) in scalars.into_iter().enumerate() {
        w.add_metadata(format!("k.{i}"), v);
    }
    w.add_metadata(
        "k.nested",
        MetaValue::Array(vec![
            MetaValue::Array(vec![MetaValue::U8(1), MetaValue::U8(2)]),
            MetaValue::Array(vec![]),
        ]),
    );
    let v = pema_backbone::testing::pseudo_random(11, 512);
    for ty in GgmlType::ALL.into_iter().filter(|t| t.can_dequantize()) {
        let n = if ty.block_elems() >= 256 { 256 } else { 32 };
        w.add_tensor(format!("t.{ty}"), &[1, n], &v[..n], ty)
            .expect("tensor");
    }
    w.to_bytes().expect("kquant gguf")
}

/// A safetensors file written by hand: F16, BF16 and I32 tensors and metadata.
fn half_safetensors() -> Vec<u8> {
    let header = r#"{"__metadata__":{"pema.format":"lm-head/1"},"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[4,8]},"i":{"dtype":"I32","shape":[1],"data_offsets":[8,12]}}"#;
    let mut h = header.as_bytes().to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&[0x00, 0x3c, 0x00, 0xc0, 0x80, 0x3f, 0x00, 0x40, 1, 0, 0, 0]);
    out
}

/// An adapter directory (rank 2 against [`targets::adapter_head`]) as `join2(json, weights)`.
fn adapter_seed(tmp: &Path, standardize: bool) -> Vec<u8> {
    use pema_adapter::{
        ADAPTER_FORMAT, AdapterConfig, AdapterMeta, FusedHead, KeyNorm, KeyStats, PemaAdapter,
    };
    let dev = Default::default();
    let head = FusedHead::<B>::new(&targets::adapter_head(), Default::default()).expect("fused");
    let cfg = AdapterConfig {
        d: 4,
        vocab: 7,
        rank: 2,
        dropout: 0.2,
        kappa: 0.2,
        form: Default::default(),
    };
    let stats = standardize.then(|| KeyStats::from_host(vec![0.1; 4], vec![1.5; 4], &dev));
    let ad = PemaAdapter::<B>::new(cfg, 7, &dev)
        .expect("adapter")
        .with_key_stats(stats);
    let meta = AdapterMeta {
        format: ADAPTER_FORMAT.into(),
        pema_version: "fuzz".into(),
        rank: cfg.rank,
        scale: 0.5,
        dropout: cfg.dropout,
        kappa: cfg.kappa,
        d: cfg.d,
        vocab: cfg.vocab,
        head_fingerprint: head.fingerprint.clone(),
        head_model: head.model.clone(),
        memory_fingerprint: "m".into(),
        dev_memory_fingerprint: "dm".into(),
        length_ratio: Some(1.1),
        key_norm: if standardize {
            KeyNorm::Standardize
        } else {
            KeyNorm::None
        },
        form: cfg.form,
        weights_sha256: None,
        training: serde_json::Value::Null,
    };
    let dir = tmp.join(format!("adapter-{standardize}"));
    ad.save(&dir, &meta).expect("save adapter");
    join2(
        &read(&dir.join("adapter.json")),
        &read(&dir.join("adapter.safetensors")),
    )
}

/// A LoRA directory for [`targets::lora_model`] as `join2(json, weights)`.
fn lora_seed(tmp: &Path, targets_list: &str) -> Vec<u8> {
    use pema_lora::{LORA_FORMAT, Lora, LoraConfig, LoraMeta, LoraTarget};
    let model = targets::lora_model();
    let cfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: LoraTarget::parse_list(targets_list).expect("targets"),
        ..LoraConfig::default()
    };
    let lora = Lora::init(&model, &cfg).expect("init lora");
    let meta = LoraMeta {
        format: LORA_FORMAT.into(),
        model: model.config.name.clone(),
        weights_sha256: "ab".repeat(32),
        lora_sha256: None,
        config: cfg,
        slots: lora.slots.clone(),
        report: None,
    };
    let dir = tmp.join(format!("lora-{targets_list}"));
    lora.save(&dir, &meta).expect("save lora");
    join2(
        &read(&dir.join("lora.json")),
        &read(&dir.join("lora.safetensors")),
    )
}

/// A real `tokenizer.json` cut down to its first `n` vocabulary entries (merges and added
/// tokens restricted to those), keeping the real normaliser, pre-tokeniser and decoder.
fn reduced_tokenizer(path: &Path, n: u64) -> Option<String> {
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let model = j.get_mut("model")?.as_object_mut()?;
    let vocab = model.get_mut("vocab")?.as_object_mut()?;
    vocab.retain(|_, id| id.as_u64().is_some_and(|i| i < n));
    let kept: std::collections::HashSet<String> = vocab.keys().cloned().collect();
    let merges = model.get_mut("merges")?.as_array_mut()?;
    merges.retain(|m| {
        let parts: Vec<String> = match m {
            serde_json::Value::String(s) => s.split(' ').map(String::from).collect(),
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            _ => return false,
        };
        parts.len() == 2
            && kept.contains(&parts[0])
            && kept.contains(&parts[1])
            && kept.contains(&parts.concat())
    });
    merges.truncate(200);
    j.get_mut("added_tokens")?
        .as_array_mut()?
        .retain(|t| t.get("id").and_then(|i| i.as_u64()).is_some_and(|i| i < n));
    serde_json::to_string(&j).ok()
}
