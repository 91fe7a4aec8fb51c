//! Text ↔ token ids for a PLM: a thin wrapper around the HF `tokenizers` crate that applies the
//! model's BOS convention (from the GGUF metadata or `config.json`) explicitly.

use std::path::Path;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::error::{BackboneError, Result};
use crate::head::hex;

/// A model's tokenizer with its special-token conventions.
pub struct PemaTokenizer {
    inner: tokenizers::Tokenizer,
    add_bos: bool,
    bos: Option<u32>,
    eos: Vec<u32>,
    fingerprint: String,
    stop_ids: OnceLock<Vec<u32>>,
    json: std::sync::Arc<str>,
}

/// Everything a tokenizer is made of, as the PLM owner hands it to a data owner (serde).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenizerSpec {
    /// The `tokenizer.json` text.
    pub json: String,
    /// Whether prompts start with BOS.
    pub add_bos: bool,
    /// The BOS id.
    pub bos: Option<u32>,
    /// The EOS ids.
    pub eos: Vec<u32>,
}

impl std::fmt::Debug for PemaTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemaTokenizer")
            .field("vocab", &self.vocab_size())
            .field("add_bos", &self.add_bos)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl PemaTokenizer {
    /// Loads `tokenizer.json`; `add_bos`/`bos`/`eos` come from the model's metadata.
    pub fn from_file(path: &Path, add_bos: bool, bos: Option<u32>, eos: Vec<u32>) -> Result<Self> {
        let json = std::fs::read_to_string(path).map_err(pema_common::FileError::at(path))?;
        Self::from_json(&json, add_bos, bos, eos)
            .map_err(|e| BackboneError::Tokenizer(format!("{}: {e}", path.display())))
    }

    /// Builds a tokenizer from the text of a `tokenizer.json`.
    pub fn from_json(json: &str, add_bos: bool, bos: Option<u32>, eos: Vec<u32>) -> Result<Self> {
        let inner: tokenizers::Tokenizer = guarded("parsing tokenizer.json", || json.parse())?
            .map_err(|e| BackboneError::Tokenizer(format!("invalid tokenizer.json: {e}")))?;
        let mut h = Sha256::new();
        h.update(json.as_bytes());
        h.update([add_bos as u8]);
        h.update(bos.unwrap_or(u32::MAX).to_le_bytes());
        let fingerprint = hex(&h.finalize());
        if add_bos && bos.is_none() {
            return Err(BackboneError::Tokenizer(
                "add_bos is set but the model names no BOS token".into(),
            ));
        }
        Ok(Self {
            inner,
            add_bos,
            bos,
            eos,
            fingerprint,
            stop_ids: OnceLock::new(),
            json: json.into(),
        })
    }

    /// The definition this tokenizer was built from ([`PemaTokenizer::from_spec`] rebuilds it,
    /// with the same fingerprint).
    pub fn spec(&self) -> TokenizerSpec {
        TokenizerSpec {
            json: self.json.to_string(),
            add_bos: self.add_bos,
            bos: self.bos,
            eos: self.eos.clone(),
        }
    }

    /// Rebuilds a tokenizer from its [`TokenizerSpec`].
    pub fn from_spec(spec: &TokenizerSpec) -> Result<Self> {
        Self::from_json(&spec.json, spec.add_bos, spec.bos, spec.eos.clone())
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// One past the largest id of the base vocabulary (added tokens not counted).
    pub fn id_bound(&self) -> usize {
        self.inner
            .get_vocab(false)
            .values()
            .max()
            .map_or(0, |&m| m as usize + 1)
    }

    /// Checks that the tokenizer fits a model of `vocab_size` tokens: every id of its base
    /// vocabulary and its BOS/EOS ids must be below `vocab_size`. Added tokens may lie beyond
    /// it: Gemma 3's `tokenizer.json` adds `<image_soft_token>` at id 262144, past the text
    /// model's 262,144 rows (it never occurs in text).
    ///
    /// A tokenizer with *fewer* ids than the model is accepted: real models pad the embedding
    /// matrix beyond the tokenizer (the padding rows are never produced by encoding; the model
    /// may still generate them, and they decode to nothing). Gemma 3 and SmolLM2 match exactly.
    pub fn check_model_vocab(&self, vocab_size: usize) -> Result<()> {
        let bound = self.id_bound();
        if bound > vocab_size {
            return Err(BackboneError::Tokenizer(format!(
                "the tokenizer's ids reach {} (a vocabulary of {bound}) but the model's vocabulary has {vocab_size} tokens: a tokenizer of another model?",
                bound - 1
            )));
        }
        let special = self.bos.iter().map(|&b| ("BOS", b));
        for (what, id) in special.chain(self.eos.iter().map(|&e| ("EOS", e))) {
            if id as usize >= vocab_size {
                return Err(BackboneError::Tokenizer(format!(
                    "{what} id {id} is outside the model's vocabulary of {vocab_size} tokens"
                )));
            }
        }
        Ok(())
    }

    /// Whether prompts get a BOS token.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// BOS id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence ids.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// sha256 of the tokenizer definition and BOS convention (recorded in memories).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Encodes a prompt: BOS (when the model wants one) followed by the text's tokens.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend(self.encode_continuation(text)?);
        Ok(ids)
    }

    /// Encodes text that continues a sequence: no BOS, no other special tokens added.
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>> {
        let enc = guarded("encoding", || self.inner.encode(text, false))?
            .map_err(|e| BackboneError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        guarded("decoding", || self.inner.decode(ids, true))?
            .map_err(|e| BackboneError::Tokenizer(e.to_string()))
    }

    /// The text of one token (special tokens included), or `None` for an unknown id.
    pub fn token_text(&self, id: u32) -> Option<String> {
        guarded("decoding", || self.inner.decode(&[id], false))
            .ok()?
            .ok()
    }

    /// Ids that end a line-oriented generation: every EOS id and every token whose text
    /// contains a newline (the paper stops at the end-of-line token). Computed once.
    pub fn stop_ids(&self) -> Vec<u32> {
        self.stop_ids
            .get_or_init(|| {
                let mut ids = self.eos.clone();
                for id in 0..self.vocab_size() as u32 {
                    if self.token_text(id).is_some_and(|t| t.contains('\n')) {
                        ids.push(id);
                    }
                }
                ids.sort_unstable();
                ids.dedup();
                ids
            })
            .clone()
    }

    /// The wrapped HF tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Runs `f`, turning a panic into [`BackboneError::Tokenizer`]: the `tokenizers` crate panics
/// (`expect`) on some malformed `tokenizer.json` definitions instead of returning an error, and
/// a tokenizer file is user input.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        BackboneError::Tokenizer(format!(
            "{what}: the tokenizers library failed on this tokenizer: {message}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny word-level tokenizer for tests.
    pub(crate) fn tiny_json() -> String {
        serde_json::json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 0, "content": "<bos>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
                {"id": 1, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
            ],
            "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"<bos>": 0, "<eos>": 1, "hello": 2, "world": 3, "\n": 4, "<unk>": 5}, "unk_token": "<unk>"}
        })
        .to_string()
    }

    #[test]
    fn bos_is_added_only_to_prompts() {
        let t = PemaTokenizer::from_json(&tiny_json(), true, Some(0), vec![1]).expect("tok");
        assert_eq!(t.encode_prompt("hello world").expect("enc"), vec![0, 2, 3]);
        assert_eq!(
            t.encode_continuation("hello world").expect("enc"),
            vec![2, 3]
        );
        assert_eq!(t.stop_ids(), vec![1, 4]);
        let no_bos = PemaTokenizer::from_json(&tiny_json(), false, Some(0), vec![1]).expect("tok");
        assert_eq!(no_bos.encode_prompt("hello").expect("enc"), vec![2]);
        assert_ne!(t.fingerprint(), no_bos.fingerprint());
    }

    /// Fuzz regressions: the tokenizers crate `expect`s on a syntax error inside `decoder` and
    /// on a malformed `Precompiled` normaliser; both must come back as typed errors.
    #[test]
    fn tokenizers_library_panics_become_typed_errors() {
        let bad_decoder = tiny_json().replace(
            "\"decoder\":null",
            "\"decoder\":{\"type\":\"Fuse\",\"x\":t@ue}",
        );
        assert_ne!(bad_decoder, tiny_json());
        let bad_charsmap = tiny_json().replace(
            "\"normalizer\":null",
            "\"normalizer\":{\"type\":\"Precompiled\",\"precompiled_charsmap\":\"!\"}",
        );
        assert_ne!(bad_charsmap, tiny_json());
        for json in [bad_decoder, bad_charsmap] {
            assert!(matches!(
                PemaTokenizer::from_json(&json, false, None, vec![]),
                Err(BackboneError::Tokenizer(_))
            ));
        }
    }

    #[test]
    fn invalid_json_is_a_typed_error() {
        assert!(matches!(
            PemaTokenizer::from_json("{not json", false, None, vec![]),
            Err(BackboneError::Tokenizer(_))
        ));
    }
}
