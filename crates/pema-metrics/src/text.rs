//! Python-compatible string primitives.
//!
//! sacreBLEU is written in Python, so "whitespace" means whatever `str.isspace()` accepts,
//! "split" means `str.split()` without arguments, and "strip" means `str.rstrip()`. These
//! helpers reproduce those semantics exactly (Unicode 14 whitespace set of CPython 3.11,
//! which is the same set in every CPython 3.x since 3.3 apart from U+180E, excluded here as
//! in CPython).

/// `true` when CPython's `str.isspace()` is `true` for `c`.
///
/// The set is U+0009–U+000D, U+001C–U+001F, U+0020, U+0085, U+00A0, U+1680, U+2000–U+200A,
/// U+2028, U+2029, U+202F, U+205F and U+3000.
#[inline]
pub fn is_py_space(c: char) -> bool {
    match c {
        '\t'..='\r' | '\u{1c}'..='\u{20}' => true,
        _ if (c as u32) < 0x85 => false,
        '\u{85}' | '\u{a0}' | '\u{1680}' | '\u{2000}'..='\u{200a}' => true,
        '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}' => true,
        _ => false,
    }
}

/// Python's `s.rstrip()`: removes trailing whitespace as defined by [`is_py_space`].
#[inline]
pub fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_py_space)
}

/// Python's `s.split()` (no argument): the maximal runs of non-whitespace characters.
pub fn py_split(s: &str) -> PySplit<'_> {
    PySplit { rest: s }
}

/// Iterator returned by [`py_split`].
#[derive(Debug, Clone)]
pub struct PySplit<'a> {
    rest: &'a str,
}

/// Length in bytes of the Python whitespace character starting at `b[i]`, or 0.
#[inline]
fn space_len_at(b: &[u8], i: usize) -> usize {
    let c = b[i];
    if c < 0x80 {
        return usize::from(matches!(c, b'\t'..=b'\r' | 0x1c..=0x20));
    }
    match c {
        0xC2 => match b.get(i + 1) {
            Some(0x85 | 0xA0) => 2,
            _ => 0,
        },
        0xE1 => usize::from(b.get(i + 1) == Some(&0x9A) && b.get(i + 2) == Some(&0x80)) * 3,
        0xE2 => match (b.get(i + 1), b.get(i + 2)) {
            (Some(0x80), Some(0x80..=0x8A | 0xA8 | 0xA9 | 0xAF)) | (Some(0x81), Some(0x9F)) => 3,
            _ => 0,
        },
        0xE3 => usize::from(b.get(i + 1) == Some(&0x80) && b.get(i + 2) == Some(&0x80)) * 3,
        _ => 0,
    }
}

impl<'a> Iterator for PySplit<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let b = self.rest.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let l = space_len_at(b, i);
            if l == 0 {
                break;
            }
            i += l;
        }
        if i == b.len() {
            self.rest = "";
            return None;
        }
        let start = i;
        while i < b.len() && space_len_at(b, i) == 0 {
            i += 1;
        }
        // Whitespace characters start at char boundaries, so both cuts are valid.
        let tok = &self.rest[start..i];
        self.rest = &self.rest[i..];
        Some(tok)
    }
}

/// Python's `' '.join(s.split())`: collapses whitespace runs to one ASCII space and trims.
pub fn py_normalize_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for tok in py_split(s) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(tok);
    }
    out
}

/// Python's `''.join(s.split())`: removes every whitespace character.
pub fn py_remove_spaces(s: &str) -> String {
    s.chars().filter(|c| !is_py_space(*c)).collect()
}

/// Python's `s.lower()`. Rust's [`str::to_lowercase`] implements the same Unicode default
/// case conversion, including the context-dependent final sigma.
pub fn py_lower(s: &str) -> String {
    if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        s.to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_set_matches_cpython() {
        let expected: Vec<u32> = vec![
            0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000,
            0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028,
            0x2029, 0x202f, 0x205f, 0x3000,
        ];
        let got: Vec<u32> = (0..=0x10FFFFu32)
            .filter_map(char::from_u32)
            .filter(|c| is_py_space(*c))
            .map(|c| c as u32)
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn split_and_strip() {
        let s = "\u{3000} a\u{a0}b\u{1c}c  \u{2029}";
        assert_eq!(py_split(s).collect::<Vec<_>>(), vec!["a", "b", "c"]);
        assert_eq!(py_rstrip(s), "\u{3000} a\u{a0}b\u{1c}c");
        assert_eq!(py_normalize_spaces(s), "a b c");
        assert_eq!(py_remove_spaces(s), "abc");
        assert_eq!(py_split("").count(), 0);
        assert_eq!(py_split("   ").count(), 0);
        // U+180E and U+200B are not whitespace for Python.
        assert_eq!(py_split("a\u{180e}b\u{200b}c").count(), 1);
        // the byte-level splitter agrees with the char predicate on every code point
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let s = format!("x{c}y");
            let n = py_split(&s).count();
            assert_eq!(n == 2, is_py_space(c), "{c:?}");
        }
    }

    #[test]
    fn lower_final_sigma() {
        assert_eq!(py_lower("ΟΔΟΣ ΟΔΟΣ."), "οδος οδος.");
        assert_eq!(py_lower("ÄÖÜ ẞ"), "äöü ß");
    }
}
