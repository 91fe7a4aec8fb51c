//! The SYNTHETIC informal→formal English pairs built from Ding: register-marked synonyms of
//! one sense, and rule-based contraction/colloquialism rewrites of its example sentences.

use pema_memory::Pair;

use super::ding::{clean_sentence, parse_line, strip_annotations, tags};

/// Register / style tags that make a synonym unfit as the neutral or formal side.
pub(crate) const MARKED_TAGS: [&str; 17] = [
    "coll.",
    "slang",
    "vulg.",
    "humor.",
    "pej.",
    "iron.",
    "euphem.",
    "poet.",
    "archaic",
    "arch.",
    "obs.",
    "dated",
    "becoming dated",
    "rare",
    "children's speech",
    "literary",
    "former name",
];

pub(crate) fn norm_tag(tag: &str) -> String {
    tag.replace('’', "'")
}

/// Clean a phrase for the lexical formality pairs (not necessarily a sentence).
pub(crate) fn clean_phrase(item: &str) -> Option<String> {
    let text = strip_annotations(item)?.replace('’', "'");
    let n_words = text.split_whitespace().count();
    let ok = (1..=20).contains(&n_words)
        && text.chars().count() <= 150
        && text.chars().any(char::is_alphabetic)
        && !text.contains(['/', '…', '~', '=', '+', '|', '<', '>'])
        && !text.contains("..");
    ok.then_some(text)
}

pub(crate) fn lexical_formality_pairs(text: &str, pairs: &mut Vec<Pair>) {
    for (ln, line) in text.lines().enumerate() {
        let Some(alts) = parse_line(line) else {
            continue;
        };
        for (_, en_items) in alts {
            let tagged: Vec<(Vec<String>, &str)> = en_items
                .iter()
                .map(|i| (tags(i).into_iter().map(norm_tag).collect(), *i))
                .collect();
            let is_informal = |t: &[String]| t.iter().any(|t| t == "coll." || t == "slang");
            if !tagged.iter().any(|(t, _)| is_informal(t)) {
                continue;
            }
            let formal = tagged
                .iter()
                .find(|(t, _)| t.iter().any(|t| t == "formal"))
                .or_else(|| {
                    tagged
                        .iter()
                        .find(|(t, _)| !t.iter().any(|t| MARKED_TAGS.contains(&t.as_str())))
                })
                .and_then(|(_, item)| clean_phrase(item));
            let Some(formal) = formal else {
                continue;
            };
            for (t, item) in &tagged {
                if is_informal(t)
                    && !t.iter().any(|t| t == "formal")
                    && let Some(informal) = clean_phrase(item)
                {
                    pairs.push(Pair {
                        source: informal,
                        target: formal.clone(),
                        line: ln + 1,
                    });
                }
            }
        }
    }
}

/// A word-or-separator token of an English sentence; words keep inner apostrophes.
pub(crate) fn tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut sep = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let inner_apostrophe =
            c == '\'' && !word.is_empty() && chars.get(i + 1).is_some_and(|n| n.is_alphabetic());
        if c.is_alphanumeric() || inner_apostrophe {
            if !sep.is_empty() {
                out.push(std::mem::take(&mut sep));
            }
            word.push(c);
        } else {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            sep.push(c);
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    if !sep.is_empty() {
        out.push(sep);
    }
    out
}

pub(crate) fn is_word(token: &str) -> bool {
    token.chars().next().is_some_and(char::is_alphanumeric)
}

/// Match `from`'s capitalisation of the first letter onto `to`.
pub(crate) fn with_case(from: &str, to: &str) -> String {
    if from.chars().next().is_some_and(char::is_uppercase) {
        let mut chars = to.chars();
        chars
            .next()
            .map(|c| c.to_uppercase().chain(chars).collect())
            .unwrap_or_default()
    } else {
        to.to_string()
    }
}

pub(crate) const NOT_CONTRACTIONS: [(&str, &str); 19] = [
    ("don't", "do not"),
    ("doesn't", "does not"),
    ("didn't", "did not"),
    ("isn't", "is not"),
    ("aren't", "are not"),
    ("wasn't", "was not"),
    ("weren't", "were not"),
    ("haven't", "have not"),
    ("hasn't", "has not"),
    ("hadn't", "had not"),
    ("won't", "will not"),
    ("wouldn't", "would not"),
    ("can't", "cannot"),
    ("couldn't", "could not"),
    ("shouldn't", "should not"),
    ("mustn't", "must not"),
    ("needn't", "need not"),
    ("shan't", "shall not"),
    ("mightn't", "might not"),
];

pub(crate) const COLLOQUIAL: [(&str, &str); 9] = [
    ("gonna", "going to"),
    ("wanna", "want to"),
    ("kinda", "kind of"),
    ("sorta", "sort of"),
    ("gimme", "give me"),
    ("lemme", "let me"),
    ("yeah", "yes"),
    ("yep", "yes"),
    ("nope", "no"),
];

/// Subjects whose `'s` means `is`/`has` (not a possessive).
pub(crate) const S_SUBJECTS: [&str; 12] = [
    "it", "he", "she", "that", "what", "there", "here", "who", "where", "how", "when", "why",
];

pub(crate) const PARTICIPLES: [&str; 16] = [
    "done",
    "seen",
    "made",
    "told",
    "said",
    "left",
    "lost",
    "won",
    "taken",
    "given",
    "known",
    "written",
    "broken",
    "eaten",
    "forgotten",
    "found",
];

/// Expand contractions and colloquialisms: `Some(formal)` when something was expanded and
/// nothing ambiguous was met.
pub(crate) fn formalise(text: &str) -> Option<String> {
    let toks = tokens(text);
    let words: Vec<usize> = (0..toks.len()).filter(|&i| is_word(&toks[i])).collect();
    let mut out = toks.clone();
    let mut changed = false;
    for (wi, &i) in words.iter().enumerate() {
        let tok = &toks[i];
        let lower = tok.to_lowercase();
        let next = words.get(wi + 1).map(|&j| toks[j].to_lowercase());
        let prev = wi
            .checked_sub(1)
            .map(|p| toks[words[p]].to_lowercase())
            .unwrap_or_default();
        if lower.ends_with("n't")
            && next.as_deref().is_some_and(|n| {
                matches!(
                    n,
                    "i" | "you" | "he" | "she" | "it" | "we" | "they" | "there" | "that" | "this"
                )
            })
        {
            // Inverted negative ("Can't you ...?"): the expansion would be ungrammatical.
            return None;
        }
        let replacement: Option<String> =
            if let Some((_, f)) = NOT_CONTRACTIONS.iter().find(|(c, _)| *c == lower) {
                Some(with_case(tok, f))
            } else if let Some((_, f)) = COLLOQUIAL.iter().find(|(c, _)| *c == lower) {
                Some(with_case(tok, f))
            } else if lower == "gotta" {
                if matches!(prev.as_str(), "have" | "has" | "had") || prev.contains('\'') {
                    return None;
                }
                Some(with_case(tok, "have to"))
            } else if lower == "dunno" {
                if prev != "i" {
                    return None;
                }
                Some("do not know".to_string())
            } else if lower == "ain't" || lower.ends_with("'d") || lower == "y'all" {
                return None;
            } else if let Some(base) = lower.strip_suffix("n't") {
                // oughtn't, daren't, ...
                Some(with_case(tok, &format!("{base} not")))
            } else if lower == "i'm" {
                Some("I am".to_string())
            } else if lower == "let's" {
                Some(with_case(tok, "let us"))
            } else if let Some(base) = lower.strip_suffix("'re") {
                Some(with_case(tok, &format!("{base} are")))
            } else if let Some(base) = lower.strip_suffix("'ve") {
                Some(with_case(tok, &format!("{} have", fix_i(base))))
            } else if let Some(base) = lower.strip_suffix("'ll") {
                Some(with_case(tok, &format!("{} will", fix_i(base))))
            } else if let Some(base) = lower.strip_suffix("'s") {
                if !S_SUBJECTS.contains(&base) {
                    None // possessive
                } else {
                    let next = next.clone().unwrap_or_default();
                    let verb = if matches!(next.as_str(), "been" | "got" | "had" | "gone") {
                        "has"
                    } else if next.ends_with("ed")
                        || next.ends_with("en")
                        || PARTICIPLES.contains(&next.as_str())
                    {
                        return None;
                    } else {
                        "is"
                    };
                    Some(with_case(tok, &format!("{base} {verb}")))
                }
            } else {
                None
            };
        if let Some(r) = replacement {
            out[i] = r;
            changed = true;
        }
    }
    let formal: String = out.concat();
    let leftover = tokens(&formal).iter().any(|t| {
        let t = t.to_lowercase();
        ["n't", "'re", "'ve", "'ll", "'m", "'d"]
            .iter()
            .any(|s| t.ends_with(s))
    });
    (changed && !leftover).then_some(formal)
}

pub(crate) fn fix_i(base: &str) -> &str {
    if base == "i" { "I" } else { base }
}

/// Base verbs after which `going to` may become `gonna`.
pub(crate) const GONNA_VERBS: [&str; 40] = [
    "be", "do", "have", "get", "make", "go", "take", "see", "come", "say", "tell", "give", "find",
    "try", "need", "happen", "rain", "work", "call", "ask", "help", "buy", "eat", "start", "stop",
    "win", "lose", "like", "miss", "leave", "stay", "let", "keep", "put", "pay", "run", "show",
    "play", "write", "read",
];

/// Contract a formal sentence: `Some(informal)` when at least one rule applied.
pub(crate) fn informalise(text: &str) -> Option<String> {
    let toks = tokens(text);
    let words: Vec<usize> = (0..toks.len()).filter(|&i| is_word(&toks[i])).collect();
    let mut out = toks.clone();
    // `sep_ok(a)`: word a and word a+1 are separated by a single space only.
    let sep_ok = |wi: usize| -> bool {
        words
            .get(wi + 1)
            .is_some_and(|&j| j == words[wi] + 2 && toks[words[wi] + 1] == " ")
    };
    let lower: Vec<String> = words.iter().map(|&i| toks[i].to_lowercase()).collect();
    let mut changed = false;
    let mut wi = 0;
    while wi < words.len() {
        let w = lower[wi].as_str();
        let next = lower.get(wi + 1).map(String::as_str).unwrap_or("");
        let after = lower.get(wi + 2).map(String::as_str).unwrap_or("");
        let has_after = wi + 2 < words.len() && sep_ok(wi + 1);
        // Before `not`, the auxiliary contracts instead ("they aren't", not "they're not"),
        // except for `I am not`.
        let has_after_not_not = has_after && after != "not";
        let merge = |wi: usize, text: String, out: &mut Vec<String>| {
            let (a, b) = (words[wi], words[wi + 1]);
            out[a] = with_case(&toks[a], &text);
            for slot in out.iter_mut().take(b + 1).skip(a + 1) {
                slot.clear();
            }
        };
        if !sep_ok(wi) {
            if w == "cannot" {
                out[words[wi]] = with_case(&toks[words[wi]], "can't");
                changed = true;
            }
            wi += 1;
            continue;
        }
        let contraction: Option<String> = match (w, next) {
            ("will", "not") => Some("won't".into()),
            ("can", "not") => Some("can't".into()),
            (
                "do" | "does" | "did" | "is" | "are" | "was" | "were" | "have" | "has" | "had"
                | "would" | "could" | "should" | "must" | "need",
                "not",
            ) => Some(format!("{w}n't")),
            ("i", "am") if has_after => Some("I'm".into()),
            ("you" | "we" | "they", "are") if has_after_not_not => Some(format!("{w}'re")),
            ("he" | "she" | "it" | "that" | "there" | "here", "is") if has_after_not_not => {
                Some(format!("{w}'s"))
            }
            ("what" | "who" | "where", "is")
                if has_after_not_not
                    && !matches!(after, "he" | "she" | "it" | "i" | "you" | "we" | "they") =>
            {
                Some(format!("{w}'s"))
            }
            ("i" | "you" | "we" | "they" | "he" | "she" | "it", "will") if has_after_not_not => {
                Some(format!("{}'ll", fix_i(w)))
            }
            ("i" | "you" | "we" | "they" | "he" | "she", "would") if has_after_not_not => {
                Some(format!("{}'d", fix_i(w)))
            }
            ("i" | "you" | "we" | "they", "have")
                if has_after
                    && (matches!(after, "been" | "got" | "had" | "done" | "seen")
                        || after.ends_with("ed")) =>
            {
                Some(format!("{}'ve", fix_i(w)))
            }
            ("going", "to")
                if has_after
                    && GONNA_VERBS.contains(&after)
                    && wi > 0
                    && matches!(
                        lower[wi - 1].as_str(),
                        "am" | "are" | "is" | "i" | "you" | "we" | "they" | "he" | "she" | "it"
                    ) =>
            {
                Some("gonna".into())
            }
            ("want", "to")
                if has_after
                    && wi > 0
                    && matches!(lower[wi - 1].as_str(), "i" | "you" | "we" | "they" | "not") =>
            {
                Some("wanna".into())
            }
            _ => None,
        };
        if let Some(c) = contraction {
            merge(wi, c, &mut out);
            changed = true;
            wi += 2;
        } else {
            if w == "cannot" {
                out[words[wi]] = with_case(&toks[words[wi]], "can't");
                changed = true;
            }
            wi += 1;
        }
    }
    changed.then(|| out.concat())
}

pub(crate) fn extract_formality_pairs(text: &str) -> Vec<Pair> {
    let mut pairs = Vec::new();
    lexical_formality_pairs(text, &mut pairs);
    for (ln, line) in text.lines().enumerate() {
        let Some(alts) = parse_line(line) else {
            continue;
        };
        for (_, en_items) in alts {
            for item in en_items {
                let Some(sentence) = clean_sentence(item) else {
                    continue;
                };
                let sentence = sentence.replace('’', "'");
                if let Some(formal) = formalise(&sentence) {
                    pairs.push(Pair {
                        source: sentence,
                        target: formal,
                        line: ln + 1,
                    });
                } else if let Some(informal) = informalise(&sentence) {
                    pairs.push(Pair {
                        source: informal,
                        target: sentence,
                        line: ln + 1,
                    });
                }
            }
        }
    }
    pairs
}
