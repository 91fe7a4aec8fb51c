//! Building an exact Hugging Face `tokenizer.json` from GGUF metadata.
//!
//! Some GGUF files (SmolLM2 among them) ship without a `tokenizer.json`, but the GGUF carries the
//! whole tokenizer: `tokenizer.ggml.model` (`"gpt2"` = byte-level BPE), the vocabulary
//! `tokenizer.ggml.tokens` (index = token id), the merge list `tokenizer.ggml.merges` (rank =
//! index, each `"left right"`), the token types `tokenizer.ggml.token_type` and the pre-tokenizer
//! name `tokenizer.ggml.pre`. This module turns them into the equivalent HF tokenizer:
//!
//! - model: BPE over the byte-level alphabet, no unknown token, no byte fallback;
//! - added tokens: every token of type 3 (control, `special: true`) and type 4 (user-defined,
//!   `special: false`), never normalised;
//! - pre-tokenizer: for `tokenizer.ggml.pre = "smollm"`, `Sequence[Digits(individual_digits),
//!   ByteLevel(add_prefix_space=false, use_regex=true)]` (llama.cpp's `\p{N}` split followed by the
//!   GPT-2 regex); for `"gpt2"` (or no `pre` key), the GPT-2 `ByteLevel` alone;
//! - decoder: `ByteLevel`; post-processor: `ByteLevel` (offsets only).
//!
//! The tokenizer never inserts BOS/EOS by itself: BOS is the model loader's job, from the GGUF's
//! `tokenizer.ggml.add_bos_token` (SmolLM2: `false`), the same convention as for the Gemma 3
//! `tokenizer.json`.
//!
//! Exactness against llama.cpp's own tokeniser on the real SmolLM2 GGUF is checked by a test over
//! the texts in `fixtures/reference/smollm2-135m.json` (English, German umlauts, digits, newlines,
//! emoji), produced by `fixtures/reference/gen.py`.

use std::collections::HashSet;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::error::BackboneError;
use crate::gguf::GgufFile;

/// GGUF token type of a normal token.
pub const TOKEN_TYPE_NORMAL: u64 = 1;
/// GGUF token type of a control token (BOS, EOS, chat markers): an HF special added token.
pub const TOKEN_TYPE_CONTROL: u64 = 3;
/// GGUF token type of a user-defined token: an HF non-special added token.
pub const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// How text is split before BPE, after `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenization {
    /// `"gpt2"`: the GPT-2 regex (`ByteLevel` with `use_regex`).
    Gpt2,
    /// `"smollm"`: every digit on its own, then the GPT-2 regex.
    SmolLm,
}

impl PreTokenization {
    /// The pre-tokenisation for a `tokenizer.ggml.pre` value (`None`: key absent, GPT-2).
    pub fn from_gguf_pre(pre: Option<&str>) -> Result<Self, BackboneError> {
        match pre {
            None | Some("gpt2") => Ok(Self::Gpt2),
            Some("smollm") => Ok(Self::SmolLm),
            Some(other) => Err(BackboneError::Tokenizer(format!(
                "GGUF tokenizer.ggml.pre = {other:?} is not supported (supported: \"gpt2\", \"smollm\")"
            ))),
        }
    }
}

/// The vocabulary part of a GGUF byte-level BPE tokenizer, independent of the file format.
#[derive(Debug, Clone, Copy)]
pub struct BpeVocab<'a> {
    /// Token strings in the byte-level alphabet; index = token id.
    pub tokens: &'a [&'a str],
    /// Merge rules `"left right"`, highest priority first.
    pub merges: &'a [&'a str],
    /// GGUF token types, one per token (`None`: all normal).
    pub token_types: Option<&'a [u64]>,
    /// How text is split before BPE.
    pub pre: PreTokenization,
}

/// Builds the HF `tokenizer.json` text for a GGUF whose `tokenizer.ggml.model` is `"gpt2"`.
///
/// Reads `tokenizer.ggml.{model, tokens, merges, token_type, pre}`; see the module docs for the
/// mapping. Errors name the offending metadata key.
pub fn tokenizer_json_from_gguf(file: &GgufFile) -> Result<String, BackboneError> {
    let meta_err =
        |e: crate::gguf::GgufError| BackboneError::Tokenizer(format!("GGUF metadata: {e}"));
    let model = file.get_str("tokenizer.ggml.model").map_err(meta_err)?;
    if model != "gpt2" {
        return Err(BackboneError::Tokenizer(format!(
            "GGUF tokenizer.ggml.model = {model:?}: only \"gpt2\" (byte-level BPE) can be converted"
        )));
    }
    let tokens = string_array(file, "tokenizer.ggml.tokens")?;
    let merges = string_array(file, "tokenizer.ggml.merges")?;
    let token_types = match file.get("tokenizer.ggml.token_type") {
        None => None,
        Some(value) => {
            let values = value.as_array().ok_or_else(|| {
                BackboneError::Tokenizer("GGUF tokenizer.ggml.token_type is not an array".into())
            })?;
            let types = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_u64().ok_or_else(|| {
                        BackboneError::Tokenizer(format!(
                            "GGUF tokenizer.ggml.token_type[{i}] is not a non-negative integer"
                        ))
                    })
                })
                .collect::<Result<Vec<u64>, _>>()?;
            Some(types)
        }
    };
    let pre = match file.get("tokenizer.ggml.pre") {
        None => None,
        Some(v) => Some(v.as_str().ok_or_else(|| {
            BackboneError::Tokenizer("GGUF tokenizer.ggml.pre is not a string".into())
        })?),
    };
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let merges: Vec<&str> = merges.iter().map(String::as_str).collect();
    tokenizer_json_from_vocab(&BpeVocab {
        tokens: &tokens,
        merges: &merges,
        token_types: token_types.as_deref(),
        pre: PreTokenization::from_gguf_pre(pre)?,
    })
}

/// Builds the HF `tokenizer.json` text from the parts of a byte-level BPE vocabulary.
///
/// Checks that token types (if given) match the token count, that no token string occurs twice
/// (an HF vocabulary is a map) and that every merge has the form `"left right"`.
pub fn tokenizer_json_from_vocab(vocab: &BpeVocab<'_>) -> Result<String, BackboneError> {
    if vocab.tokens.is_empty() {
        return Err(BackboneError::Tokenizer(
            "GGUF tokenizer.ggml.tokens is empty".into(),
        ));
    }
    if let Some(types) = vocab.token_types
        && types.len() != vocab.tokens.len()
    {
        return Err(BackboneError::Tokenizer(format!(
            "GGUF tokenizer.ggml.token_type has {} entries for {} tokens",
            types.len(),
            vocab.tokens.len()
        )));
    }
    let mut seen = HashSet::with_capacity(vocab.tokens.len());
    for (id, token) in vocab.tokens.iter().enumerate() {
        if !seen.insert(*token) {
            return Err(BackboneError::Tokenizer(format!(
                "GGUF tokenizer.ggml.tokens[{id}] = {token:?} occurs twice; an HF vocabulary cannot hold it"
            )));
        }
    }
    let merges = vocab
        .merges
        .iter()
        .enumerate()
        .map(|(rank, merge)| {
            split_merge(merge).ok_or_else(|| {
            BackboneError::Tokenizer(format!(
                "GGUF tokenizer.ggml.merges[{rank}] = {merge:?} is not of the form \"left right\""
            ))
        })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let added_tokens = vocab
        .tokens
        .iter()
        .enumerate()
        .filter_map(|(id, content)| {
            let ty = vocab.token_types.map_or(TOKEN_TYPE_NORMAL, |t| t[id]);
            let special = match ty {
                TOKEN_TYPE_CONTROL => true,
                TOKEN_TYPE_USER_DEFINED => false,
                _ => return None,
            };
            Some(AddedToken {
                id,
                content,
                single_word: false,
                lstrip: false,
                rstrip: false,
                normalized: false,
                special,
            })
        })
        .collect();

    let byte_level = ByteLevel {
        kind: "ByteLevel",
        add_prefix_space: false,
        trim_offsets: true,
        use_regex: true,
    };
    let pre_tokenizer = match vocab.pre {
        PreTokenization::Gpt2 => PreTokenizer::ByteLevel(byte_level),
        PreTokenization::SmolLm => PreTokenizer::Sequence {
            kind: "Sequence",
            pretokenizers: vec![
                PreTokenizer::Digits {
                    kind: "Digits",
                    individual_digits: true,
                },
                PreTokenizer::ByteLevel(byte_level),
            ],
        },
    };
    let json = TokenizerJson {
        version: "1.0",
        truncation: (),
        padding: (),
        added_tokens,
        normalizer: (),
        pre_tokenizer,
        post_processor: ByteLevel {
            trim_offsets: false,
            ..byte_level
        },
        decoder: byte_level,
        model: BpeModel {
            kind: "BPE",
            dropout: (),
            unk_token: (),
            continuing_subword_prefix: (),
            end_of_word_suffix: (),
            fuse_unk: false,
            byte_fallback: false,
            ignore_merges: false,
            vocab: VocabById(vocab.tokens),
            merges,
        },
    };
    serde_json::to_string(&json)
        .map_err(|e| BackboneError::Tokenizer(format!("serialising tokenizer.json: {e}")))
}

/// Splits `"left right"` at the first space after the first character (llama.cpp's rule, so a
/// left part that is itself a space would still split correctly).
fn split_merge(merge: &str) -> Option<(&str, &str)> {
    let first = merge.chars().next()?;
    let pos = merge[first.len_utf8()..].find(' ')? + first.len_utf8();
    let (left, right) = (&merge[..pos], &merge[pos + 1..]);
    (!right.is_empty()).then_some((left, right))
}

fn string_array(file: &GgufFile, key: &str) -> Result<Vec<String>, BackboneError> {
    let values = file
        .get_array(key)
        .map_err(|e| BackboneError::Tokenizer(format!("GGUF metadata: {e}")))?;
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| BackboneError::Tokenizer(format!("GGUF {key}[{i}] is not a string")))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The tokenizer.json schema (field order as the tokenizers crate writes it).

#[derive(Serialize)]
struct TokenizerJson<'a> {
    version: &'static str,
    truncation: (),
    padding: (),
    added_tokens: Vec<AddedToken<'a>>,
    normalizer: (),
    pre_tokenizer: PreTokenizer,
    post_processor: ByteLevel,
    decoder: ByteLevel,
    model: BpeModel<'a>,
}

#[derive(Serialize)]
struct AddedToken<'a> {
    id: usize,
    content: &'a str,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
    normalized: bool,
    special: bool,
}

#[derive(Serialize, Clone, Copy)]
struct ByteLevel {
    #[serde(rename = "type")]
    kind: &'static str,
    add_prefix_space: bool,
    trim_offsets: bool,
    use_regex: bool,
}

#[derive(Serialize)]
#[serde(untagged)]
enum PreTokenizer {
    Sequence {
        #[serde(rename = "type")]
        kind: &'static str,
        pretokenizers: Vec<PreTokenizer>,
    },
    Digits {
        #[serde(rename = "type")]
        kind: &'static str,
        individual_digits: bool,
    },
    ByteLevel(ByteLevel),
}

#[derive(Serialize)]
struct BpeModel<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    dropout: (),
    unk_token: (),
    continuing_subword_prefix: (),
    end_of_word_suffix: (),
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
    vocab: VocabById<'a>,
    merges: Vec<(&'a str, &'a str)>,
}

/// The vocabulary as a JSON object in id order (`{"token": id, ...}`).
struct VocabById<'a>(&'a [&'a str]);

impl Serialize for VocabById<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (id, token) in self.0.iter().enumerate() {
            map.serialize_entry(token, &id)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::str::FromStr;
    use tokenizers::Tokenizer;

    /// GPT-2's byte → printable-char map (bytes that are printable map to themselves).
    fn byte_char(b: u8) -> char {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        if printable {
            char::from(b)
        } else {
            let mut n = 0u32;
            for x in 0..b {
                let p = (b'!'..=b'~').contains(&x) || (0xA1..=0xAC).contains(&x) || x >= 0xAE;
                if !p {
                    n += 1;
                }
            }
            char::from_u32(256 + n).expect("valid char")
        }
    }

    /// A tiny synthetic vocabulary: control tokens, all 256 byte tokens and a few merges.
    fn tiny() -> (Vec<String>, Vec<String>, Vec<u64>) {
        let mut tokens = vec!["<|endoftext|>".to_string(), "<|im_start|>".to_string()];
        let mut types = vec![TOKEN_TYPE_CONTROL, TOKEN_TYPE_CONTROL];
        for b in 0..=255u8 {
            tokens.push(byte_char(b).to_string());
            types.push(TOKEN_TYPE_NORMAL);
        }
        let merges: Vec<String> = [
            "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "1 2",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        for m in &merges {
            let merged: String = m.split(' ').collect();
            tokens.push(merged);
            types.push(TOKEN_TYPE_NORMAL);
        }
        tokens.push("<user>".to_string());
        types.push(TOKEN_TYPE_USER_DEFINED);
        (tokens, merges, types)
    }

    fn build(pre: PreTokenization) -> (Tokenizer, Vec<String>) {
        let (tokens, merges, types) = tiny();
        let tok_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let merge_refs: Vec<&str> = merges.iter().map(String::as_str).collect();
        let json = tokenizer_json_from_vocab(&BpeVocab {
            tokens: &tok_refs,
            merges: &merge_refs,
            token_types: Some(&types),
            pre,
        })
        .expect("tokenizer.json builds");
        (
            Tokenizer::from_str(&json).expect("tokenizers parses it"),
            tokens,
        )
    }

    fn pieces(tok: &Tokenizer, vocab: &[String], text: &str) -> Vec<String> {
        let enc = tok.encode(text, false).expect("encodes");
        enc.get_ids()
            .iter()
            .map(|&id| vocab[id as usize].clone())
            .collect()
    }

    #[test]
    fn synthetic_vocab_merges_and_byte_level() {
        let (tok, vocab) = build(PreTokenization::SmolLm);
        assert_eq!(pieces(&tok, &vocab, "hello world"), ["hello", "Ġworld"]);
        // Digits are split one by one even though the merge "1 2" exists.
        assert_eq!(pieces(&tok, &vocab, "x123"), ["x", "1", "2", "3"]);
        // Newline and a two-byte character go through the byte alphabet.
        assert_eq!(pieces(&tok, &vocab, "\nä"), ["Ċ", "Ã", "¤"]);
        // Control and user-defined tokens are matched as a whole.
        assert_eq!(
            pieces(&tok, &vocab, "<|im_start|>hello<user>"),
            ["<|im_start|>", "hello", "<user>"]
        );
        // Ids are the GGUF indices.
        let enc = tok.encode("hello", false).expect("encodes");
        assert_eq!(
            enc.get_ids(),
            [vocab.iter().position(|t| t == "hello").expect("in vocab") as u32]
        );
        // No BOS/EOS is added even with add_special_tokens = true.
        let enc = tok.encode("hello", true).expect("encodes");
        assert_eq!(enc.get_ids().len(), 1);
        // The ByteLevel decoder restores the text.
        let enc = tok.encode("hello world\n1ä", false).expect("encodes");
        assert_eq!(
            tok.decode(enc.get_ids(), false).expect("decodes"),
            "hello world\n1ä"
        );
    }

    #[test]
    fn gpt2_pre_tokenization_keeps_digit_runs() {
        let (tok, vocab) = build(PreTokenization::Gpt2);
        assert_eq!(pieces(&tok, &vocab, "x123"), ["x", "12", "3"]);
    }

    #[test]
    fn special_flags_follow_token_types() {
        let (tokens, merges, types) = tiny();
        let tok_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let merge_refs: Vec<&str> = merges.iter().map(String::as_str).collect();
        let json = tokenizer_json_from_vocab(&BpeVocab {
            tokens: &tok_refs,
            merges: &merge_refs,
            token_types: Some(&types),
            pre: PreTokenization::SmolLm,
        })
        .expect("builds");
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        let added = value["added_tokens"].as_array().expect("array");
        assert_eq!(added.len(), 3);
        assert_eq!(added[0]["content"], "<|endoftext|>");
        assert_eq!(added[0]["special"], true);
        assert_eq!(added[2]["content"], "<user>");
        assert_eq!(added[2]["special"], false);
        assert_eq!(value["model"]["merges"][0], serde_json::json!(["h", "e"]));
    }

    #[test]
    fn malformed_inputs_give_errors() {
        let tokens = ["a", "b", "a"];
        let err = tokenizer_json_from_vocab(&BpeVocab {
            tokens: &tokens,
            merges: &[],
            token_types: None,
            pre: PreTokenization::Gpt2,
        })
        .expect_err("duplicate token");
        assert!(err.to_string().contains("tokens[2]"), "{err}");

        let tokens = ["a", "b", "ab"];
        let err = tokenizer_json_from_vocab(&BpeVocab {
            tokens: &tokens,
            merges: &["ab"],
            token_types: None,
            pre: PreTokenization::Gpt2,
        })
        .expect_err("merge without a space");
        assert!(err.to_string().contains("merges[0]"), "{err}");

        let err = tokenizer_json_from_vocab(&BpeVocab {
            tokens: &tokens,
            merges: &["a b"],
            token_types: Some(&[1, 1]),
            pre: PreTokenization::Gpt2,
        })
        .expect_err("type count");
        assert!(err.to_string().contains("token_type"), "{err}");

        assert!(PreTokenization::from_gguf_pre(Some("llama3")).is_err());
        assert_eq!(split_merge("Ġ Ġ"), Some(("Ġ", "Ġ")));
        assert_eq!(split_merge("  x"), Some((" ", "x")));
        assert_eq!(split_merge("a"), None);
    }

    fn workspace_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// The tokenizer built from the real SmolLM2 GGUF reproduces llama.cpp's token ids on every
    /// text of the reference fixture (`fixtures/reference/gen.py`).
    #[test]
    fn smollm2_tokenizer_matches_llama_cpp() {
        let root = workspace_root();
        let gguf_path = root.join("assets/smollm2-135m/model.gguf");
        if !gguf_path.is_file() {
            eprintln!(
                "skipped: {} is absent (run `cargo xtask fetch-assets`)",
                gguf_path.display()
            );
            return;
        }
        let fixture_path = root.join("fixtures/reference/smollm2-135m.json");
        let fixture: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&fixture_path).expect("fixture is committed"),
        )
        .expect("fixture is JSON");
        let gguf = GgufFile::open(&gguf_path).expect("GGUF opens");
        let json = tokenizer_json_from_gguf(&gguf).expect("tokenizer.json builds");
        let tok = Tokenizer::from_str(&json).expect("tokenizers parses it");
        let cases = fixture["tokenization"]
            .as_array()
            .expect("tokenization array");
        assert!(cases.len() >= 5);
        for case in cases {
            let text = case["text"].as_str().expect("text");
            let want: Vec<u32> = case["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_u64().expect("id") as u32)
                .collect();
            let enc = tok.encode(text, false).expect("encodes");
            assert_eq!(enc.get_ids(), want.as_slice(), "text {text:?}");
            let decoded = tok.decode(&want, false).expect("decodes");
            assert_eq!(decoded, text, "decode round trip");
        }
    }
}
