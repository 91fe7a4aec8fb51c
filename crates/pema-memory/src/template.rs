//! Task prompt templates: the paper's MT and formality prompts, or a file (few-shot allowed).

use std::path::Path;

use crate::error::{MemoryError, Result};

/// Placeholder for the source sentence in a template.
pub const SOURCE_PLACEHOLDER: &str = "{source}";

/// A prompt template: `text` with `{source}` where the source sentence goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptTemplate {
    /// `mt`, `formality`, or the template file's path.
    pub name: String,
    /// Template text.
    pub text: String,
}

impl PromptTemplate {
    /// The paper's MT prompt: `"Translate this from English to German: \n{en}\nGerman: "`.
    pub fn mt() -> Self {
        Self {
            name: "mt".into(),
            text: "Translate this from English to German: \n{source}\nGerman: ".into(),
        }
    }

    /// The paper's formality (style transfer) prompt:
    /// `"Convert the following informal sentence into a formal sentence: \nInformal: {x}\nFormal: "`.
    pub fn formality() -> Self {
        Self {
            name: "formality".into(),
            text: "Convert the following informal sentence into a formal sentence: \nInformal: {source}\nFormal: ".into(),
        }
    }

    /// A template from text; it must contain `{source}`.
    pub fn from_text(name: &str, text: &str) -> Result<Self> {
        if !text.contains(SOURCE_PLACEHOLDER) {
            return Err(MemoryError::Template {
                name: name.into(),
                message: format!("no `{SOURCE_PLACEHOLDER}` placeholder"),
            });
        }
        Ok(Self {
            name: name.into(),
            text: text.into(),
        })
    }

    /// Reads a template file. One trailing line break (which editors add) is removed, so a
    /// template ending in `"German: "` keeps its final space; end the file with two line breaks
    /// to keep one.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| MemoryError::io(path, e))?;
        let text = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        Self::from_text(&path.display().to_string(), text)
    }

    /// `mt`, `formality`, or a path to a template file.
    pub fn resolve(spec: &str) -> Result<Self> {
        match spec {
            "mt" => Ok(Self::mt()),
            "formality" => Ok(Self::formality()),
            path => Self::from_file(Path::new(path)),
        }
    }

    /// The prompt for `source`.
    pub fn render(&self, source: &str) -> String {
        self.text.replace(SOURCE_PLACEHOLDER, source)
    }

    /// The target text as it continues the rendered prompt: when the prompt does not end in
    /// whitespace (`"…German:"`), the model writes a space before the answer, so the target is
    /// tokenised as `" " + target` (SentencePiece `▁Wort`, byte-level BPE `ĠWort`) instead of
    /// the word-initial pieces a bare string gets. Prompts ending in a space (the paper's
    /// `"German: "`) take the target as is.
    pub fn target_text(&self, target: &str) -> String {
        let needs_space = self.text.chars().last().is_some_and(|c| !c.is_whitespace())
            && !target.starts_with(char::is_whitespace);
        if needs_space {
            format!(" {target}")
        } else {
            target.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_match_the_paper() {
        assert_eq!(
            PromptTemplate::mt().render("Hello."),
            "Translate this from English to German: \nHello.\nGerman: "
        );
        assert_eq!(
            PromptTemplate::formality().render("gonna go"),
            "Convert the following informal sentence into a formal sentence: \nInformal: gonna go\nFormal: "
        );
    }

    #[test]
    fn targets_continue_the_prompt_with_a_space_when_it_has_none() {
        assert_eq!(PromptTemplate::mt().target_text("Hallo."), "Hallo.");
        let t = PromptTemplate::from_text("t", "EN: {source}\nDE:").expect("template");
        assert_eq!(t.target_text("Hallo."), " Hallo.");
        assert_eq!(t.target_text(" Hallo."), " Hallo.");
    }

    #[test]
    fn file_templates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("fewshot.txt");
        std::fs::write(&p, "EN: a\nDE: b\nEN: {source}\nDE: \n").expect("write");
        let t = PromptTemplate::resolve(p.to_str().expect("utf8")).expect("template");
        assert_eq!(t.render("x"), "EN: a\nDE: b\nEN: x\nDE: ");
        std::fs::write(&p, "no placeholder").expect("write");
        assert!(matches!(
            PromptTemplate::from_file(&p),
            Err(MemoryError::Template { .. })
        ));
        assert!(matches!(
            PromptTemplate::resolve("/nonexistent/t.txt"),
            Err(MemoryError::MissingFile { .. })
        ));
    }
}
