//! Exact n-gram identification without building n-gram strings.
//!
//! Unigrams get dense ids from a per-segment vocabulary; an n-gram's id is the interned pair
//! (id of its (n-1)-gram prefix, id of its last unigram). Two n-grams get the same id iff
//! their token sequences are equal, so counts are exact (no hashing of n-gram contents).

use rustc_hash::FxHashMap;

/// Sentinel for an n-gram that does not occur in any reference.
pub(crate) const ABSENT: u32 = u32::MAX;

/// Pair interner producing dense n-gram ids.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    pairs: FxHashMap<u64, u32>,
    next: u32,
}

impl Interner {
    /// Clears the table; new ids start at `first_id`.
    pub(crate) fn reset(&mut self, first_id: u32) {
        self.pairs.clear();
        self.next = first_id;
    }

    /// Makes room for `additional` more n-grams without rehashing.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.pairs.reserve(additional);
    }

    /// Allocates a fresh id (for unigrams).
    #[inline]
    pub(crate) fn fresh(&mut self) -> u32 {
        let id = self.next;
        self.next += 1;
        id
    }

    /// Number of ids handed out so far (an upper bound for every id).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.next as usize
    }

    #[inline]
    fn key(prefix: u32, last: u32) -> u64 {
        (u64::from(prefix) << 32) | u64::from(last)
    }

    /// Id of the n-gram `prefix + last`, allocating it if new.
    #[inline]
    pub(crate) fn intern(&mut self, prefix: u32, last: u32) -> u32 {
        let next = &mut self.next;
        *self
            .pairs
            .entry(Self::key(prefix, last))
            .or_insert_with(|| {
                let id = *next;
                *next += 1;
                id
            })
    }

    /// Id of `prefix + last` if it was interned, else [`ABSENT`].
    #[inline]
    pub(crate) fn get(&self, prefix: u32, last: u32) -> u32 {
        if prefix == ABSENT || last == ABSENT {
            return ABSENT;
        }
        self.pairs
            .get(&Self::key(prefix, last))
            .copied()
            .unwrap_or(ABSENT)
    }
}

/// Appends the ids of all n-grams of order `1..=max_order` of `uni` (unigram ids) to
/// `out[n-1]`, interning new n-grams.
pub(crate) fn intern_all(
    interner: &mut Interner,
    uni: &[u32],
    max_order: usize,
    out: &mut [Vec<u32>],
) {
    if max_order == 0 {
        return;
    }
    let mut prev_start = out[0].len();
    out[0].extend_from_slice(uni);
    for n in 2..=max_order {
        if uni.len() < n {
            break;
        }
        let (lo, hi) = out.split_at_mut(n - 1);
        let prev = &lo[n - 2][prev_start..];
        let cur = &mut hi[0];
        prev_start = cur.len();
        cur.extend(
            prev.iter()
                .zip(&uni[n - 1..])
                .map(|(p, u)| interner.intern(*p, *u)),
        );
    }
}

/// Like [`intern_all`] but only looks n-grams up (hypothesis side); unknown ones are
/// [`ABSENT`].
pub(crate) fn lookup_all(interner: &Interner, uni: &[u32], max_order: usize, out: &mut [Vec<u32>]) {
    if max_order == 0 {
        return;
    }
    let mut prev_start = out[0].len();
    out[0].extend_from_slice(uni);
    for n in 2..=max_order {
        if uni.len() < n {
            break;
        }
        let (lo, hi) = out.split_at_mut(n - 1);
        let prev = &lo[n - 2][prev_start..];
        let cur = &mut hi[0];
        prev_start = cur.len();
        cur.extend(
            prev.iter()
                .zip(&uni[n - 1..])
                .map(|(p, u)| interner.get(*p, *u)),
        );
    }
}

/// Clipped match count: `sum over distinct hyp n-grams of min(hyp count, ref_count[id])`.
///
/// `used` must be zero on entry for every id of `hyp`; it is restored to zero on exit.
#[inline]
pub(crate) fn clipped_matches(hyp: &[u32], ref_count: &[u32], used: &mut [u32]) -> u64 {
    let mut m = 0u64;
    for &id in hyp {
        if id != ABSENT {
            let u = &mut used[id as usize];
            if *u < ref_count[id as usize] {
                *u += 1;
                m += 1;
            }
        }
    }
    for &id in hyp {
        if id != ABSENT {
            used[id as usize] = 0;
        }
    }
    m
}
