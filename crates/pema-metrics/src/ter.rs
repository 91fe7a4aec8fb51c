//! Translation Edit Rate (Snover et al., 2006) as sacreBLEU 2.x implements tercom.
//!
//! TER = (shifts + edit distance after shifting) / average reference length. Shifts are
//! searched greedily: at each step the shift of a matching word block (at most 10 words,
//! moved at most 50 positions) that reduces the beam-limited (width 25) Levenshtein distance
//! the most is applied, ties ranked as in tercom; at most 1000 shift candidates are checked
//! per segment and reference.

use rustc_hash::FxHashMap;

use crate::error::Result;
use crate::metric::{Metric, corpus_stats};
use crate::signature::{Signature, yes_no};
use crate::text::{py_lower, py_normalize_spaces, py_rstrip, py_split};
use crate::tokenize::{pass_numbers, pass_punct, unescape_entities};

const MAX_SHIFT_SIZE: usize = 10;
const MAX_SHIFT_DIST: usize = 50;
const BEAM_WIDTH: i64 = 25;
const MAX_SHIFT_CANDIDATES: usize = 1000;
const INF: i64 = 10_000_000_000_000_000;

const OP_NOP: u8 = b' ';
const OP_SUB: u8 = b's';
const OP_INS: u8 = b'i';
const OP_DEL: u8 = b'd';
const OP_UNDEF: u8 = b'x';

/// TER options (sacreBLEU's `TER(...)` arguments).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TerConfig {
    /// tercom normalisation: XML entities, punctuation and number tokenisation (`norm:yes`).
    pub normalized: bool,
    /// Remove punctuation (`punct:no`).
    pub no_punct: bool,
    /// Extra handling of CJK characters when normalising / removing punctuation (`asian:yes`).
    pub asian_support: bool,
    /// Do not lowercase (`case:mixed`); TER is case-insensitive by default.
    pub case_sensitive: bool,
}

/// The TER metric.
#[derive(Debug, Clone, Default)]
pub struct Ter {
    config: TerConfig,
}

/// A TER score with its statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TerScore {
    /// TER in percent (lower is better).
    pub score: f64,
    /// Total number of edits (shifts included).
    pub num_edits: f64,
    /// Sum over segments of the average reference length.
    pub ref_length: f64,
}

fn is_cjk_split(c: char) -> bool {
    matches!(c as u32,
        0x4e00..=0x9fff | 0x3400..=0x4dbf | 0x31c0..=0x31ef | 0x2e80..=0x2eff
        | 0x3300..=0x33ff | 0xf900..=0xfaff | 0xfe30..=0xfe4f | 0x3200..=0x3f22)
        || is_asian_punct(c)
        || is_full_width_punct(c)
}

fn is_asian_punct(c: char) -> bool {
    matches!(c as u32, 0x3001 | 0x3002 | 0x3008..=0x3011 | 0x3014..=0x301f | 0xff61..=0xff65 | 0x30fb)
}

fn is_full_width_punct(c: char) -> bool {
    matches!(
        c as u32,
        0xff0e | 0xff0c | 0xff1f | 0xff1a | 0xff1b | 0xff01 | 0xff02 | 0xff08 | 0xff09
    )
}

impl TerConfig {
    /// sacreBLEU's `TercomTokenizer.__call__` on an already right-stripped sentence.
    pub fn tokenize(&self, sent: &str) -> String {
        if sent.is_empty() {
            return String::new();
        }
        let mut s = if self.case_sensitive {
            sent.to_owned()
        } else {
            py_lower(sent)
        };
        if self.normalized {
            s = normalize_western(s);
            if self.asian_support {
                let mut out = String::with_capacity(s.len() * 2);
                for c in s.chars() {
                    if is_cjk_split(c) {
                        out.push(' ');
                        out.push(c);
                        out.push(' ');
                    } else {
                        out.push(c);
                    }
                }
                s = out;
            }
        }
        if self.no_punct {
            s.retain(|c| !matches!(c, '.' | ',' | '?' | ':' | ';' | '!' | '"' | '(' | ')'));
            if self.asian_support {
                s.retain(|c| !is_asian_punct(c) && !is_full_width_punct(c));
            }
        }
        py_normalize_spaces(&s)
    }
}

fn normalize_western(s: String) -> String {
    let mut s = if s.contains('\n') {
        s.replace("\n-", "").replace('\n', " ")
    } else {
        s
    };
    unescape_entities(&mut s);
    let mut wrapped = Vec::with_capacity(s.len() + 2);
    wrapped.push(b' ');
    wrapped.extend_from_slice(s.as_bytes());
    wrapped.push(b' ');
    let mut buf = Vec::new();
    pass_punct(&wrapped, &mut buf);
    // possessives: "'s " -> " 's " ('s$ cannot match: the string ends with a space)
    let mut st = String::from_utf8(buf).unwrap_or_default();
    if st.contains("'s ") {
        st = st.replace("'s ", " 's ");
    }
    if st.ends_with("'s") {
        st.truncate(st.len() - 2);
        st.push_str(" 's");
    }
    let mut buf = st.into_bytes();
    pass_numbers(&mut buf, &mut wrapped);
    String::from_utf8(buf).unwrap_or_default()
}

/// Edit distance with a beam around the (length-ratio) diagonal, following sacreBLEU's
/// `BeamEditDistance` (without its cache, which never changes results).
struct BeamEd<'a> {
    r: &'a [u32],
}

/// Python slice `v[a:b]` with clamping.
fn sl(v: &[u32], a: usize, b: usize) -> &[u32] {
    let n = v.len();
    let a = a.min(n);
    let b = b.min(n);
    if a >= b { &[] } else { &v[a..b] }
}

impl BeamEd<'_> {
    fn geometry(&self, nh: usize) -> (f64, i64) {
        let ratio = if nh > 0 {
            self.r.len() as f64 / nh as f64
        } else {
            1.0
        };
        let bw = if (BEAM_WIDTH as f64) < ratio / 2.0 {
            (ratio / 2.0 + BEAM_WIDTH as f64).ceil() as i64
        } else {
            BEAM_WIDTH
        };
        (ratio, bw)
    }

    /// Fills row `i` of the matrix from row `i-1`.
    #[inline]
    fn row(
        &self,
        h: &[u32],
        i: usize,
        ratio: f64,
        bw: i64,
        prev: &[(i64, u8)],
        cur: &mut [(i64, u8)],
    ) {
        let nr = self.r.len();
        cur.iter_mut().for_each(|c| *c = (INF, OP_UNDEF));
        let pd = (i as f64 * ratio).floor() as i64;
        let min_j = (pd - bw).max(0) as usize;
        let mut max_j = (pd + bw).min(nr as i64 + 1).max(0) as usize;
        if i == h.len() {
            max_j = nr + 1;
        }
        for j in min_j..max_j {
            if j == 0 {
                cur[0] = (prev[0].0 + 1, OP_DEL);
                continue;
            }
            let (cost_sub, op_sub) = if h[i - 1] == self.r[j - 1] {
                (0, OP_NOP)
            } else {
                (1, OP_SUB)
            };
            let mut best = (INF, OP_UNDEF);
            for (c, op) in [
                (prev[j - 1].0 + cost_sub, op_sub),
                (prev[j].0 + 1, OP_DEL),
                (cur[j - 1].0 + 1, OP_INS),
            ] {
                if best.0 > c {
                    best = (c, op);
                }
            }
            cur[j] = best;
        }
    }

    fn initial_row(&self) -> Vec<(i64, u8)> {
        (0..=self.r.len()).map(|j| (j as i64, OP_INS)).collect()
    }

    /// Full matrix (rows 0..=nh, each nr+1 wide) for trace extraction.
    fn matrix(&self, h: &[u32]) -> Vec<(i64, u8)> {
        let w = self.r.len() + 1;
        let (ratio, bw) = self.geometry(h.len());
        let mut m = vec![(INF, OP_UNDEF); (h.len() + 1) * w];
        m[..w].copy_from_slice(&self.initial_row());
        for i in 1..=h.len() {
            let (done, rest) = m.split_at_mut(i * w);
            self.row(h, i, ratio, bw, &done[(i - 1) * w..], &mut rest[..w]);
        }
        m
    }

    /// Distance of `h`, reusing rows `0..=lcp` of `base` (the matrix of a hypothesis of the
    /// same length sharing the first `lcp` words).
    fn distance_from(
        &self,
        h: &[u32],
        base: &[(i64, u8)],
        lcp: usize,
        a: &mut Vec<(i64, u8)>,
        b: &mut Vec<(i64, u8)>,
    ) -> i64 {
        let w = self.r.len() + 1;
        let (ratio, bw) = self.geometry(h.len());
        a.clear();
        a.extend_from_slice(&base[lcp * w..(lcp + 1) * w]);
        b.clear();
        b.resize(w, (INF, OP_UNDEF));
        for i in lcp + 1..=h.len() {
            self.row(h, i, ratio, bw, a, b);
            std::mem::swap(a, b);
        }
        a[w - 1].0
    }

    fn trace(&self, m: &[(i64, u8)], nh: usize) -> Vec<u8> {
        let w = self.r.len() + 1;
        let (mut i, mut j) = (nh, self.r.len());
        let mut trace = Vec::new();
        while i > 0 || j > 0 {
            let op = m[i * w + j].1;
            trace.push(op);
            match op {
                OP_SUB | OP_NOP => {
                    i -= 1;
                    j -= 1;
                }
                OP_INS => j -= 1,
                OP_DEL => i -= 1,
                _ => break,
            }
        }
        trace.reverse();
        trace
    }
}

fn perform_shift(w: &[u32], start: usize, length: usize, target: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(w.len());
    if target < start {
        out.extend_from_slice(sl(w, 0, target));
        out.extend_from_slice(sl(w, start, start + length));
        out.extend_from_slice(sl(w, target, start));
        out.extend_from_slice(sl(w, start + length, w.len()));
    } else if target > start + length {
        out.extend_from_slice(sl(w, 0, start));
        out.extend_from_slice(sl(w, start + length, target));
        out.extend_from_slice(sl(w, start, start + length));
        out.extend_from_slice(sl(w, target, w.len()));
    } else {
        out.extend_from_slice(sl(w, 0, start));
        out.extend_from_slice(sl(w, start + length, length + target));
        out.extend_from_slice(sl(w, start, start + length));
        out.extend_from_slice(sl(w, length + target, w.len()));
    }
    out
}

/// tercom's ranking of a shift: (edit-distance gain, length, −start, −target).
type ShiftRank = (i64, usize, i64, i64);

struct ShiftOutcome {
    delta: i64,
    words: Vec<u32>,
}

fn find_shift(h: &[u32], r: &[u32], ed: &BeamEd<'_>, checked: &mut usize) -> Option<ShiftOutcome> {
    let base = ed.matrix(h);
    let w = r.len() + 1;
    let pre_score = base[h.len() * w + r.len()].0;
    // flip: rewrite ref into hyp
    let trace: Vec<u8> = ed
        .trace(&base, h.len())
        .into_iter()
        .map(|op| match op {
            OP_INS => OP_DEL,
            OP_DEL => OP_INS,
            o => o,
        })
        .collect();
    let mut align = vec![-1i64; r.len()];
    let mut ref_err = Vec::with_capacity(r.len());
    let mut hyp_err = Vec::with_capacity(h.len());
    let (mut ph, mut pr) = (-1i64, -1i64);
    for op in trace {
        match op {
            OP_NOP | OP_SUB => {
                ph += 1;
                pr += 1;
                if let Some(a) = align.get_mut(pr as usize) {
                    *a = ph;
                }
                let e = u32::from(op == OP_SUB);
                hyp_err.push(e);
                ref_err.push(e);
            }
            OP_INS => {
                ph += 1;
                hyp_err.push(1);
            }
            OP_DEL => {
                pr += 1;
                if let Some(a) = align.get_mut(pr as usize) {
                    *a = ph;
                }
                ref_err.push(1);
            }
            _ => {}
        }
    }
    hyp_err.resize(h.len(), 0);
    ref_err.resize(r.len(), 0);

    // (delta, length, -start_h, -idx) ranked lexicographically, first maximum kept.
    let mut best: Option<(ShiftRank, Vec<u32>)> = None;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let (nh, nr) = (h.len(), r.len());
    'pairs: for start_h in 0..nh {
        for start_r in 0..nr {
            if start_r.abs_diff(start_h) > MAX_SHIFT_DIST {
                continue;
            }
            let mut length = 0;
            while h[start_h + length] == r[start_r + length] && length < MAX_SHIFT_SIZE {
                length += 1;
                // candidate (start_h, start_r, length)
                let consider = hyp_err[start_h..start_h + length].iter().any(|e| *e != 0)
                    && ref_err[start_r..start_r + length].iter().any(|e| *e != 0)
                    && !((start_h as i64) <= align[start_r]
                        && align[start_r] < (start_h + length) as i64);
                if consider {
                    let mut prev_idx: i64 = -1;
                    for offset in -1i64..length as i64 {
                        let pos = start_r as i64 + offset;
                        let idx = if pos == -1 {
                            0
                        } else if (pos as usize) < nr {
                            align[pos as usize] + 1
                        } else {
                            break;
                        };
                        if idx == prev_idx {
                            continue;
                        }
                        prev_idx = idx;
                        let shifted = perform_shift(h, start_h, length, idx as usize);
                        let lcp = shifted
                            .iter()
                            .zip(h)
                            .take_while(|(x, y)| x == y)
                            .count()
                            .min(nh);
                        let dist = ed.distance_from(&shifted, &base, lcp, &mut a, &mut b);
                        let key = (pre_score - dist, length, -(start_h as i64), -idx);
                        *checked += 1;
                        if best.as_ref().is_none_or(|(k, _)| key > *k) {
                            best = Some((key, shifted));
                        }
                    }
                    if *checked >= MAX_SHIFT_CANDIDATES {
                        break 'pairs;
                    }
                }
                if nh == start_h + length || nr == start_r + length {
                    break;
                }
            }
        }
    }
    best.map(|(k, words)| ShiftOutcome { delta: k.0, words })
}

/// sacreBLEU's `translation_edit_rate` on word ids: `(number of edits, reference length)`.
pub fn translation_edit_rate(hyp: &[u32], reference: &[u32]) -> (i64, usize) {
    if reference.is_empty() {
        return (hyp.len() as i64, 0);
    }
    let ed = BeamEd { r: reference };
    let mut shifts = 0;
    let mut input = hyp.to_vec();
    let mut checked = 0usize;
    loop {
        let outcome = find_shift(&input, reference, &ed, &mut checked);
        if checked >= MAX_SHIFT_CANDIDATES {
            break;
        }
        match outcome {
            Some(o) if o.delta > 0 => {
                shifts += 1;
                input = o.words;
            }
            _ => break,
        }
    }
    let w = reference.len() + 1;
    let m = ed.matrix(&input);
    (
        shifts + m[input.len() * w + reference.len()].0,
        reference.len(),
    )
}

impl Ter {
    /// A TER metric with the given options.
    pub fn new(config: TerConfig) -> Self {
        Self { config }
    }

    /// The options.
    pub fn config(&self) -> &TerConfig {
        &self.config
    }

    /// Details from summed statistics `[edits, ref_length]`.
    pub fn score_details(&self, stats: &[f64]) -> TerScore {
        let (edits, ref_len) = (stats[0], stats[1]);
        let score = if ref_len > 0.0 {
            edits / ref_len
        } else if edits > 0.0 {
            1.0
        } else {
            0.0
        };
        TerScore {
            score: 100.0 * score,
            num_edits: edits,
            ref_length: ref_len,
        }
    }

    /// Corpus TER; `refs[k][i]` is the k-th reference of segment i.
    pub fn corpus_score<H, R>(&self, hyps: &[H], refs: &[Vec<R>]) -> Result<TerScore>
    where
        H: AsRef<str> + Sync,
        R: AsRef<str> + Sync,
    {
        let stats = corpus_stats(self, hyps, refs)?;
        Ok(self.score_details(&stats.sum()))
    }

    /// Sentence TER.
    pub fn sentence_score(&self, hyp: &str, refs: &[&str]) -> TerScore {
        self.score_details(&self.segment_stats(hyp, refs))
    }
}

impl Metric for Ter {
    fn name(&self) -> String {
        "TER".into()
    }

    fn num_stats(&self) -> usize {
        2
    }

    fn segment_stats_into(&self, hyp: &str, refs: &[&str], out: &mut [f64]) {
        let hyp_tok = self.config.tokenize(py_rstrip(hyp));
        // sacreBLEU preprocesses references twice (once when caching them, once when
        // extracting their words); the second pass is not idempotent for tercom
        // normalisation (e.g. `'s` followed by a non-ASCII space), so do the same.
        let ref_toks: Vec<String> = refs
            .iter()
            .map(|r| self.config.tokenize(&self.config.tokenize(py_rstrip(r))))
            .collect();
        let mut vocab: FxHashMap<&str, u32> = FxHashMap::default();
        let mut next = 0u32;
        let mut intern = |tok| {
            *vocab.entry(tok).or_insert_with(|| {
                next += 1;
                next - 1
            })
        };
        let h: Vec<u32> = py_split(&hyp_tok).map(&mut intern).collect();
        let rs: Vec<Vec<u32>> = ref_toks
            .iter()
            .map(|r| py_split(r).map(&mut intern).collect())
            .collect();
        let mut best = i64::MAX;
        let mut ref_lengths = 0usize;
        for r in &rs {
            let (edits, len) = translation_edit_rate(&h, r);
            ref_lengths += len;
            best = best.min(edits);
        }
        if rs.is_empty() {
            out[0] = 0.0;
            out[1] = 0.0;
            return;
        }
        out[0] = best as f64;
        out[1] = ref_lengths as f64 / rs.len() as f64;
    }

    fn score_from_stats(&self, stats: &[f64]) -> f64 {
        self.score_details(stats).score
    }

    fn signature(&self, nrefs: usize) -> Signature {
        let c = &self.config;
        Signature::new(nrefs)
            .with_field("case", "c", if c.case_sensitive { "mixed" } else { "lc" })
            .with_field("tok", "t", "tercom")
            .with_field("norm", "nr", yes_no(c.normalized))
            .with_field("punct", "pn", yes_no(!c.no_punct))
            .with_field("asian", "as", yes_no(c.asian_support))
    }

    fn higher_is_better(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_reduces_edits() {
        let ter = Ter::default();
        // one block shift instead of 4 substitutions
        let s = ter.sentence_score("d e a b c", &["a b c d e"]);
        assert_eq!(s.num_edits, 1.0);
        assert_eq!(ter.sentence_score("", &["a b"]).num_edits, 2.0);
        assert_eq!(ter.sentence_score("a b", &[""]).score, 100.0);
    }

    #[test]
    fn signature_string() {
        let ter = Ter::default();
        assert_eq!(
            ter.signature(1).format(true),
            format!(
                "#:1|c:lc|t:tercom|nr:no|pn:yes|as:no|v:{}",
                crate::SACREBLEU_VERSION
            )
        );
    }
}
