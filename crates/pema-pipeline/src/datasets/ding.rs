//! The Ding dictionary's line format (`German :: English`, `|`-separated alternatives,
//! `;`-separated synonyms, `{f}`/`[coll.]`/`(…)`/`<…>` annotations) and the EN→DE sentence
//! pairs extracted from it.

use pema_memory::Pair;

use super::normalise;

/// A Ding line as `(german alternatives, english alternatives)`, each alternative a list of
/// raw `;`-separated items. `None` for comments and malformed lines (unequal alternatives).
pub(crate) fn parse_line(line: &str) -> Option<Vec<(Vec<&str>, Vec<&str>)>> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let mut sides = line.split(" :: ");
    let (de, en) = (sides.next()?, sides.next()?);
    if sides.next().is_some() {
        return None;
    }
    let de_alts = split_top(de, '|');
    let en_alts = split_top(en, '|');
    if de_alts.len() != en_alts.len() {
        return None;
    }
    Some(
        de_alts
            .into_iter()
            .zip(en_alts)
            .map(|(d, e)| (split_top(d, ';'), split_top(e, ';')))
            .collect(),
    )
}

/// Split at `sep` outside of (), [] and {}; trimmed, empty parts dropped.
pub(crate) fn split_top(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ if c == sep && depth <= 0 => {
                parts.push(text[start..i].trim());
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(text[start..].trim());
    parts.retain(|p| !p.is_empty());
    parts
}

/// The `[...]` tags of an item (contents, trimmed).
pub(crate) fn tags(item: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = item;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']') else {
            break;
        };
        out.push(rest[open + 1..open + close].trim());
        rest = &rest[open + close + 1..];
    }
    out
}

/// Remove the annotation groups `{..}`, `[..]`, `<..>` and `(..)` (nested too). `None` when a
/// group is glued to a word (as in `(k)eine` or `Freund(in)`: removing it would change the
/// text), when brackets are unbalanced, or when nothing is left.
pub(crate) fn strip_annotations(item: &str) -> Option<String> {
    let chars: Vec<char> = item.chars().collect();
    let mut out = String::with_capacity(item.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '(' | '[' | '{' | '<') {
            if i > 0 && chars[i - 1].is_alphanumeric() {
                return None;
            }
            let mut open: Vec<char> = Vec::new();
            let mut j = i;
            loop {
                let c = *chars.get(j)?;
                match c {
                    '(' => open.push(')'),
                    '[' => open.push(']'),
                    '{' => open.push('}'),
                    '<' => open.push('>'),
                    ')' | ']' | '}' | '>' if open.pop() != Some(c) => return None,
                    _ => {}
                }
                if open.is_empty() {
                    break;
                }
                j += 1;
            }
            if chars.get(j + 1).is_some_and(|n| n.is_alphanumeric()) {
                return None;
            }
            out.push(' ');
            i = j + 1;
        } else if matches!(c, ')' | ']' | '}' | '>') {
            return None;
        } else {
            out.push(c);
            i += 1;
        }
    }
    let mut text = out.split_whitespace().collect::<Vec<_>>().join(" ");
    for p in [" .", " ,", " !", " ?", " :", " ;"] {
        text = text.replace(p, &p[1..]);
    }
    let text = text.trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// Placeholder words of Ding's phrase entries (lowercase, trailing `.` removed).
pub(crate) const PLACEHOLDERS: [&str; 10] = [
    "sb", "sth", "sb's", "sth's", "jd", "jdm", "jdn", "jds", "etw", "o.s",
];

pub(crate) fn has_placeholder(text: &str) -> bool {
    text.split_whitespace().any(|w| {
        let w = w
            .trim_end_matches([',', '!', '?', ';', ':'])
            .trim_end_matches('.')
            .to_lowercase()
            .replace('’', "'");
        PLACEHOLDERS.contains(&w.as_str())
    })
}

/// Whether a cleaned item looks like a full sentence (both languages).
pub(crate) fn is_sentence(text: &str) -> bool {
    let n_chars = text.chars().count();
    let n_words = text.split_whitespace().count();
    let Some(first) = text.chars().next() else {
        return false;
    };
    let starts_ok = first.is_uppercase()
        || first.is_ascii_digit()
        || (matches!(first, '„' | '“' | '"' | '‚' | '»')
            && text
                .chars()
                .find(|c| c.is_alphabetic())
                .is_some_and(char::is_uppercase));
    let ends_ok = text.ends_with(['.', '!', '?']) && !text.ends_with("..");
    let letters = text.chars().filter(|c| c.is_alphabetic()).count();
    let uppercase = text.chars().filter(|c| c.is_uppercase()).count();
    starts_ok
        && ends_ok
        && (12..=300).contains(&n_chars)
        && (3..=50).contains(&n_words)
        && uppercase * 2 < letters
        && !text.contains([
            '/', '…', '~', '=', '+', '|', '(', ')', '[', ']', '{', '}', '<', '>',
        ])
        && !has_placeholder(text)
}

pub(crate) fn clean_sentence(item: &str) -> Option<String> {
    strip_annotations(item).filter(|s| is_sentence(s))
}

pub(crate) fn extract_mt_pairs(text: &str) -> Vec<Pair> {
    let mut pairs = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        let Some(alts) = parse_line(line) else {
            continue;
        };
        for (de_items, en_items) in alts {
            let de: Vec<String> = de_items.iter().filter_map(|i| clean_sentence(i)).collect();
            if de.is_empty() {
                continue;
            }
            let en: Vec<String> = en_items.iter().filter_map(|i| clean_sentence(i)).collect();
            for (k, source) in en.into_iter().enumerate() {
                let target = &de[k % de.len()];
                if normalise(&source) != normalise(target) {
                    pairs.push(Pair {
                        source,
                        target: target.clone(),
                        line: ln + 1,
                    });
                }
            }
        }
    }
    pairs
}
