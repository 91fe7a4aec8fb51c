//! Tests of the training loop's rules.
use super::phase::permutation;
use super::*;

#[test]
fn early_stopping_fires_when_the_loss_exceeds_both_previous_ones() {
    let mut h = Vec::new();
    assert_eq!(record_validation(&mut h, 100, 5.0), (true, false));
    assert_eq!(record_validation(&mut h, 200, 4.0), (true, false));
    // Above the last one only: no stop.
    assert_eq!(record_validation(&mut h, 300, 4.5), (false, false));
    // 4.2 < 4.5: no stop, and not a new best (4.0).
    assert_eq!(record_validation(&mut h, 400, 4.2), (false, false));
    // 4.6 > 4.2 and > 4.5: stop.
    assert_eq!(record_validation(&mut h, 500, 4.6), (false, true));
}

#[test]
fn permutations_are_seeded_and_complete() {
    let p = permutation(100, 7);
    assert_eq!(p, permutation(100, 7));
    assert_ne!(p, permutation(100, 8));
    let mut s = p.clone();
    s.sort_unstable();
    assert_eq!(s, (0..100).collect::<Vec<u64>>());
}
