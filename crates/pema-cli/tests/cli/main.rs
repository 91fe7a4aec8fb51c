//! End-to-end tests of the `pema` binary on a tiny random model (one test binary: each links
//! the whole workspace).

mod bad_input;
mod common;
mod defects;
mod faults;

use common::*;

#[test]
fn generate_runs_on_the_tiny_model() {
    let s = Sandbox::new();
    let m = arg(&s.model());
    pema([
        "generate",
        "--model",
        &m,
        "--prompt",
        "a b c",
        "--max-tokens",
        "4",
    ])
    .succeeds();
}
