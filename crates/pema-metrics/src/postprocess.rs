//! Hypothesis clean-up in the spirit of the official PEMA scorer, which post-processes model
//! outputs before BLEU. pema reports raw scores first; these post-processed scores only ever
//! appear next to them.
//!
//! Rules (applied in order, all deterministic):
//! 1. cut at an echoed prompt label (`English:`, `German:`, `Informal:`, `Formal:`,
//!    `Translate this`), which a few-shot prompt invites the model to continue with;
//! 2. collapse a word repeated three or more times in a row into one occurrence;
//! 3. collapse an immediately repeated span of 2–8 words ("a b c a b c" → "a b c");
//! 4. normalise whitespace.

const LABELS: &[&str] = &[
    "English:",
    "German:",
    "Informal:",
    "Formal:",
    "Translate this",
];

/// The post-processed form of one hypothesis (see the module rules).
pub fn postprocess(hyp: &str) -> String {
    let mut text = hyp;
    for label in LABELS {
        if let Some(i) = text.find(label)
            && i > 0
        {
            text = &text[..i];
        }
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    // Rule 2: runs of ≥ 3 identical words.
    let mut out: Vec<&str> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let mut j = i + 1;
        while j < words.len() && words[j] == words[i] {
            j += 1;
        }
        let run = j - i;
        out.extend(std::iter::repeat_n(
            words[i],
            if run >= 3 { 1 } else { run },
        ));
        i = j;
    }
    // Rule 3: immediately repeated spans, longest first, until nothing changes.
    loop {
        let mut changed = false;
        'outer: for n in (2..=8).rev() {
            if out.len() < 2 * n {
                continue;
            }
            for s in 0..=out.len() - 2 * n {
                if out[s..s + n] == out[s + n..s + 2 * n] {
                    out.drain(s + n..s + 2 * n);
                    changed = true;
                    break 'outer;
                }
            }
        }
        if !changed {
            break;
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::postprocess;

    #[test]
    fn rules() {
        assert_eq!(
            postprocess("  Wo ist  der Bahnhof? "),
            "Wo ist der Bahnhof?"
        );
        assert_eq!(
            postprocess("Wo ist der Bahnhof? English: Where is"),
            "Wo ist der Bahnhof?"
        );
        assert_eq!(
            postprocess("German: Hallo"),
            "German: Hallo",
            "a leading label stays"
        );
        assert_eq!(postprocess("sehr sehr sehr gut"), "sehr gut");
        assert_eq!(
            postprocess("sehr sehr gut"),
            "sehr sehr gut",
            "two in a row stay"
        );
        assert_eq!(
            postprocess("ich gehe nach Hause ich gehe nach Hause ich gehe nach Hause"),
            "ich gehe nach Hause"
        );
        assert_eq!(postprocess(""), "");
    }
}
