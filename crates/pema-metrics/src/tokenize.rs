//! The BLEU tokenisers of sacreBLEU 2.x: `13a` (mteval-v13a, the default), `intl`
//! (mteval-v14 international), `char` and `none`.
//!
//! Every tokeniser returns its output the way sacreBLEU does: tokens separated by single ASCII
//! spaces (except `none`, which returns its input unchanged). Split the result with
//! [`crate::text::py_split`] to get tokens.

use std::fmt;
use std::str::FromStr;

use unicode_general_category::{GeneralCategory, get_general_category};

use crate::error::MetricsError;
use crate::text::{is_py_space, py_normalize_spaces};

/// A BLEU tokeniser, named as in sacreBLEU's `--tokenize` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Tokenizer {
    /// `13a`: the mteval-v13a tokeniser used by WMT (default).
    #[default]
    Thirteen,
    /// `none`: no tokenisation, tokens are Python `str.split()` fields.
    None,
    /// `intl`: mteval-v14 "international" tokenisation on Unicode punctuation and symbols.
    Intl,
    /// `char`: every non-whitespace character is a token.
    Char,
}

impl Tokenizer {
    /// The name sacreBLEU prints in the signature (`tok:…`).
    pub fn signature(self) -> &'static str {
        match self {
            Tokenizer::Thirteen => "13a",
            Tokenizer::None => "none",
            Tokenizer::Intl => "intl",
            Tokenizer::Char => "char",
        }
    }

    /// Tokenises one (already right-stripped, optionally lowercased) line.
    pub fn tokenize(self, line: &str) -> String {
        match self {
            Tokenizer::Thirteen => tokenize_13a(line),
            Tokenizer::None => line.to_owned(),
            Tokenizer::Intl => tokenize_intl(line),
            Tokenizer::Char => tokenize_char(line),
        }
    }
}

impl fmt::Display for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.signature())
    }
}

impl FromStr for Tokenizer {
    type Err = MetricsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "13a" => Ok(Tokenizer::Thirteen),
            "none" => Ok(Tokenizer::None),
            "intl" => Ok(Tokenizer::Intl),
            "char" => Ok(Tokenizer::Char),
            other => Err(MetricsError::InvalidConfig(format!(
                "unknown tokenizer {other:?} (expected 13a, none, intl or char)"
            ))),
        }
    }
}

/// Byte class of mteval's first regex `[{-~[-` -&(-+:-@/]`.
#[inline]
fn is_13a_punct(b: u8) -> bool {
    matches!(b, 0x7B..=0x7E | 0x5B..=0x60 | 0x20..=0x26 | 0x28..=0x2B | 0x3A..=0x40 | b'/')
}

/// `re.sub(r'([\{-\~\[-\` -\&\(-\+\:-\@\/])', r' \1 ', s)`.
pub(crate) fn pass_punct(src: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(src.len() * 2);
    for &b in src {
        if is_13a_punct(b) {
            out.extend_from_slice(&[b' ', b, b' ']);
        } else {
            out.push(b);
        }
    }
}

/// Left-to-right, non-overlapping substitution of a two-character pattern, as `re.sub` does.
///
/// Works on UTF-8 bytes: every pattern used here has ASCII-only classes on at least the side
/// that decides where a match may start, so byte positions and character positions give the
/// same set of matches (see the module tests).
#[inline]
fn pass_pair(
    src: &[u8],
    out: &mut Vec<u8>,
    matches: impl Fn(u8, u8) -> bool,
    emit: impl Fn(u8, u8, &mut Vec<u8>),
) {
    out.clear();
    out.reserve(src.len() + src.len() / 2);
    let mut i = 0;
    while i < src.len() {
        if i + 1 < src.len() && matches(src[i], src[i + 1]) {
            emit(src[i], src[i + 1], out);
            i += 2;
        } else {
            out.push(src[i]);
            i += 1;
        }
    }
}

/// The three number-aware passes shared by `13a` and tercom normalisation:
/// period/comma unless preceded by a digit, unless followed by a digit, dash after a digit.
pub(crate) fn pass_numbers(buf: &mut Vec<u8>, tmp: &mut Vec<u8>) {
    // ([^0-9])([\.,]) -> \1 \2
    pass_pair(
        buf,
        tmp,
        |a, b| !a.is_ascii_digit() && (b == b'.' || b == b','),
        |a, b, o| o.extend_from_slice(&[a, b' ', b, b' ']),
    );
    // ([\.,])([^0-9]) -> ' \1 \2'
    pass_pair(
        tmp,
        buf,
        |a, b| (a == b'.' || a == b',') && !b.is_ascii_digit(),
        |a, b, o| o.extend_from_slice(&[b' ', a, b' ', b]),
    );
    // ([0-9])(-) -> \1 \2
    pass_pair(
        buf,
        tmp,
        |a, b| a.is_ascii_digit() && b == b'-',
        |a, b, o| o.extend_from_slice(&[a, b' ', b, b' ']),
    );
    std::mem::swap(buf, tmp);
}

/// Replaces the four XML entities mteval decodes, in mteval's order.
pub(crate) fn unescape_entities(s: &mut String) {
    if s.contains('&') {
        for (from, to) in [
            ("&quot;", "\""),
            ("&amp;", "&"),
            ("&lt;", "<"),
            ("&gt;", ">"),
        ] {
            if s.contains(from) {
                *s = s.replace(from, to);
            }
        }
    }
}

fn bytes_to_string(bytes: Vec<u8>) -> String {
    // The passes only insert ASCII spaces next to ASCII bytes, so the buffer stays UTF-8.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The `13a` tokeniser (mteval-v13a).
pub fn tokenize_13a(line: &str) -> String {
    let mut s = if line.contains("<skipped>") {
        line.replace("<skipped>", "")
    } else {
        line.to_owned()
    };
    if s.contains('\n') {
        s = s.replace("-\n", "").replace('\n', " ");
    }
    unescape_entities(&mut s);
    let mut wrapped = Vec::with_capacity(s.len() + 2);
    wrapped.push(b' ');
    wrapped.extend_from_slice(s.as_bytes());
    wrapped.push(b' ');
    let mut buf = Vec::new();
    pass_punct(&wrapped, &mut buf);
    pass_numbers(&mut buf, &mut wrapped);
    py_normalize_spaces(&bytes_to_string(buf))
}

#[inline]
fn is_number(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    matches!(
        get_general_category(c),
        GeneralCategory::DecimalNumber
            | GeneralCategory::LetterNumber
            | GeneralCategory::OtherNumber
    )
}

#[inline]
fn is_punctuation(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_punctuation()
            && !matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '`' | '|' | '~');
    }
    matches!(
        get_general_category(c),
        GeneralCategory::ConnectorPunctuation
            | GeneralCategory::DashPunctuation
            | GeneralCategory::OpenPunctuation
            | GeneralCategory::ClosePunctuation
            | GeneralCategory::InitialPunctuation
            | GeneralCategory::FinalPunctuation
            | GeneralCategory::OtherPunctuation
    )
}

#[inline]
fn is_symbol(c: char) -> bool {
    if c.is_ascii() {
        return matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '`' | '|' | '~');
    }
    matches!(
        get_general_category(c),
        GeneralCategory::MathSymbol
            | GeneralCategory::CurrencySymbol
            | GeneralCategory::ModifierSymbol
            | GeneralCategory::OtherSymbol
    )
}

fn char_pass(
    src: &[char],
    out: &mut Vec<char>,
    matches: impl Fn(char, char) -> bool,
    emit: impl Fn(char, char, &mut Vec<char>),
) {
    out.clear();
    let mut i = 0;
    while i < src.len() {
        if i + 1 < src.len() && matches(src[i], src[i + 1]) {
            emit(src[i], src[i + 1], out);
            i += 2;
        } else {
            out.push(src[i]);
            i += 1;
        }
    }
}

/// The `intl` tokeniser (mteval-v14 international): splits Unicode punctuation (`\p{P}`)
/// not between digits and every symbol (`\p{S}`).
pub fn tokenize_intl(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut a = Vec::with_capacity(chars.len() * 2);
    // (\P{N})(\p{P}) -> \1 \2
    char_pass(
        &chars,
        &mut a,
        |x, y| !is_number(x) && is_punctuation(y),
        |x, y, o| o.extend_from_slice(&[x, ' ', y, ' ']),
    );
    let mut b = Vec::with_capacity(a.len() * 2);
    // (\p{P})(\P{N}) -> ' \1 \2'
    char_pass(
        &a,
        &mut b,
        |x, y| is_punctuation(x) && !is_number(y),
        |x, y, o| o.extend_from_slice(&[' ', x, ' ', y]),
    );
    // (\p{S}) -> ' \1 '
    let mut out = String::with_capacity(b.len() * 2);
    for c in b {
        if is_symbol(c) {
            out.push(' ');
            out.push(c);
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    py_normalize_spaces(&out)
}

/// The `char` tokeniser: every non-whitespace character becomes a token.
pub fn tokenize_char(line: &str) -> String {
    let mut out = String::with_capacity(line.len() * 2);
    for c in line.chars().filter(|c| !is_py_space(*c)) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirteen_a_basics() {
        assert_eq!(tokenize_13a("Hello, world!"), "Hello , world !");
        assert_eq!(tokenize_13a("It costs $3,000.50."), "It costs $ 3,000.50 .");
        assert_eq!(tokenize_13a("1990-2000"), "1990 - 2000");
        assert_eq!(tokenize_13a("a &amp;lt; b"), "a < b");
        assert_eq!(tokenize_13a("Dr.Who's"), "Dr . Who's");
        assert_eq!(tokenize_13a(""), "");
        assert_eq!(tokenize_13a("ä.ü,ö"), "ä . ü , ö");
    }

    #[test]
    fn ascii_category_fast_path_agrees_with_table() {
        for b in 0u8..128 {
            let c = b as char;
            let cat = get_general_category(c);
            let p = matches!(
                cat,
                GeneralCategory::ConnectorPunctuation
                    | GeneralCategory::DashPunctuation
                    | GeneralCategory::OpenPunctuation
                    | GeneralCategory::ClosePunctuation
                    | GeneralCategory::InitialPunctuation
                    | GeneralCategory::FinalPunctuation
                    | GeneralCategory::OtherPunctuation
            );
            let s = matches!(
                cat,
                GeneralCategory::MathSymbol
                    | GeneralCategory::CurrencySymbol
                    | GeneralCategory::ModifierSymbol
                    | GeneralCategory::OtherSymbol
            );
            assert_eq!(is_punctuation(c), p, "{c:?}");
            assert_eq!(is_symbol(c), s, "{c:?}");
            assert_eq!(is_number(c), cat == GeneralCategory::DecimalNumber, "{c:?}");
        }
    }

    #[test]
    fn intl_and_char() {
        assert_eq!(
            tokenize_intl("„Hallo“, sagte er: 3.5€."),
            "„ Hallo “ , sagte er : 3.5 € ."
        );
        assert_eq!(tokenize_char("ab c"), "a b c");
        assert!("x".parse::<Tokenizer>().is_err());
    }
}
