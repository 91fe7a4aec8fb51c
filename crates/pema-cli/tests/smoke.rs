//! The tiny model directory runs through the binary like a real one.
mod common;
use common::*;

#[test]
fn generate_runs_on_the_tiny_model() {
    let s = Sandbox::new();
    let out = pema([
        "generate",
        "--model",
        &arg(&s.model()),
        "--prompt",
        "a b c",
        "--max-tokens",
        "4",
    ]);
    out.succeeds();
}
