//! Training examples: the prompt the PLM is decoded with, and the target tokens it should emit.

use pema_backbone::PemaTokenizer;
use pema_memory::{Pair, PromptTemplate};

use crate::error::{LoraError, Result};

/// One tokenised training pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Prompt tokens (BOS included when the model uses one); never scored.
    pub prompt: Vec<u32>,
    /// Target tokens followed by the stop token; every one of them is scored.
    pub target: Vec<u32>,
}

impl Example {
    /// Checks the example can be scored (non-empty prompt and target).
    pub fn validate(&self) -> Result<()> {
        if self.prompt.is_empty() || self.target.is_empty() {
            return Err(LoraError::Data(
                "an example needs a non-empty prompt and at least one target token".into(),
            ));
        }
        Ok(())
    }
}

/// The end-of-line token the decoder stops on: the single token `"\n"` encodes to, or the
/// first EOS id when the tokenizer splits a newline into several tokens.
pub fn newline_id(tok: &PemaTokenizer) -> Result<u32> {
    let ids = tok.encode_continuation("\n")?;
    match ids.as_slice() {
        [id] => Ok(*id),
        _ => tok.eos_ids().first().copied().ok_or_else(|| {
            LoraError::Data("the tokenizer has no single newline token and no EOS token".into())
        }),
    }
}

/// Tokenises pairs: `prompt = template.render(source)` (with BOS), `target =` the target text
/// as a continuation of the prompt ([`PromptTemplate::target_text`]: a leading space when the
/// prompt does not end in whitespace) followed by the newline token.
pub fn encode_pairs(
    tok: &PemaTokenizer,
    template: &PromptTemplate,
    pairs: &[Pair],
) -> Result<Vec<Example>> {
    let stop = newline_id(tok)?;
    pairs
        .iter()
        .map(|p| {
            let prompt_text = template.render(&p.source);
            let prompt = tok.encode_prompt(&prompt_text)?;
            let mut target = tok.encode_continuation(&template.target_text(&p.target))?;
            target.push(stop);
            let ex = Example { prompt, target };
            ex.validate().map_err(|_| {
                LoraError::Data(format!("pair on line {} has an empty prompt", p.line))
            })?;
            Ok(ex)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_need_prompt_and_target() {
        assert!(
            Example {
                prompt: vec![1],
                target: vec![]
            }
            .validate()
            .is_err()
        );
        assert!(
            Example {
                prompt: vec![1],
                target: vec![2]
            }
            .validate()
            .is_ok()
        );
    }
}
