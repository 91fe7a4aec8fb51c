//! Bad input given to the `pema` binary: each case gets a clear error (exit 1, or 2 for a
//! flag refused while parsing) naming the flag, file or line, before any work is lost — and
//! never a panic, an abort or a backtrace. The README's reliability table lists these cases.

use crate::common::*;

/// Asserts a refused flag value: clap's usage error (exit 2) naming the flag.
#[track_caller]
fn refused_flag(r: &Run, flag: &str) {
    assert_eq!(r.code, Some(2), "stderr:\n{}", r.stderr);
    assert!(
        r.stderr.contains(flag),
        "stderr lacks {flag}:\n{}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

#[test]
fn missing_pairs_file_is_named_before_the_model_loads() {
    let s = Sandbox::new();
    let r = pema(s.decode("nope.tsv", &arg(&s.path("h")), &[]));
    r.fails_with(&["--pairs nope.tsv", "does not exist"]);
    // Checked before loading: the model's load line never appears.
    assert!(!r.stderr.contains("packed weights"), "{}", r.stderr);
}

#[test]
fn missing_model_directory_is_named() {
    let s = Sandbox::new();
    let pairs = s.pairs("p.tsv", 2);
    pema([
        "decode",
        "--model",
        "no-model",
        "--pairs",
        &arg(&pairs),
        "--out",
        &arg(&s.path("h")),
    ])
    .fails_with(&["--model no-model", "does not exist"]);
}

#[test]
fn pairs_given_as_a_directory_is_refused() {
    let s = Sandbox::new();
    pema(s.decode(&arg(&s.model()), &arg(&s.path("h")), &[]))
        .fails_with(&["--pairs", "is a directory"]);
}

#[test]
fn a_file_that_is_not_gguf_gets_one_line_per_cause_said_once() {
    let s = Sandbox::new();
    let bad = s.path("bad");
    std::fs::create_dir(&bad).expect("mkdir");
    std::fs::write(bad.join("model.gguf"), b"garbage!").expect("write");
    let pairs = s.pairs("p.tsv", 2);
    let r = pema([
        "decode",
        "--model",
        &arg(&bad),
        "--pairs",
        &arg(&pairs),
        "--out",
        &arg(&s.path("h")),
    ]);
    let err = r.fails_with(&["not a GGUF file", "model.gguf"]);
    assert_eq!(err.matches("not a GGUF file").count(), 1, "{err}");
}

#[test]
fn rust_backtrace_in_the_environment_adds_no_backtrace_to_ordinary_errors() {
    let s = Sandbox::new();
    let args = [
        "decode",
        "--model",
        &arg(&s.model()),
        "--pairs",
        "nope.tsv",
        "--out",
        "h",
    ];
    let r = pema_env(args, &[("RUST_BACKTRACE", "1")]);
    r.fails_with(&["does not exist"]);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    let r = pema_env(args, &[("PEMA_BACKTRACE", "1")]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("backtrace:"), "{}", r.stderr);
}

#[test]
fn decode_out_equal_to_pairs_is_refused_and_the_pairs_survive() {
    let s = Sandbox::new();
    let pairs = s.pairs("p.tsv", 3);
    let before = std::fs::read(&pairs).expect("read");
    pema(s.decode(&arg(&pairs), &arg(&pairs), &[]))
        .fails_with(&["--out", "would overwrite the input given by --pairs"]);
    assert_eq!(std::fs::read(&pairs).expect("read"), before);
}

#[test]
fn decode_refs_out_equal_to_pairs_or_out_is_refused() {
    let s = Sandbox::new();
    let pairs = s.pairs("p.tsv", 3);
    let (p, h) = (arg(&pairs), arg(&s.path("h.txt")));
    pema(s.decode(&p, &h, &["--refs-out", &p])).fails_with(&["--refs-out", "--pairs"]);
    pema(s.decode(&p, &h, &["--refs-out", &h]))
        .fails_with(&["--refs-out and --out name the same file"]);
}

#[test]
fn export_head_into_the_model_file_is_refused_and_the_model_survives() {
    let s = Sandbox::new();
    let gguf = s.model().join("model.gguf");
    let before = std::fs::read(&gguf).expect("read");
    pema([
        "export-head",
        "--model",
        &arg(&s.model()),
        "--out",
        &arg(&gguf),
    ])
    .fails_with(&["would overwrite the input given by --model"]);
    assert_eq!(std::fs::read(&gguf).expect("read"), before);
}

#[test]
fn decode_into_a_missing_directory_fails_before_decoding() {
    let s = Sandbox::new();
    let pairs = s.pairs("p.tsv", 3);
    let r = pema(s.decode(&arg(&pairs), &arg(&s.path("no/dir/h.txt")), &[]));
    r.fails_with(&["--out", "does not exist"]);
    assert!(!r.stderr.contains("decoded"), "{}", r.stderr);
}

#[test]
fn a_malformed_pairs_line_is_named_by_number() {
    let s = Sandbox::new();
    let pairs = s.write("p.tsv", "a b\tc d\nno tab here\n");
    pema(s.decode(&arg(&pairs), &arg(&s.path("h")), &[])).fails_with(&["p.tsv", "line 2"]);
}

#[test]
fn a_missing_template_file_is_named() {
    let s = Sandbox::new();
    let pairs = s.pairs("p.tsv", 2);
    pema(s.build(
        &arg(&pairs),
        &arg(&s.path("m")),
        &["--template", "no-template.txt"],
    ))
    .fails_with(&["--template no-template.txt", "does not exist"]);
}

#[test]
fn train_out_naming_a_file_is_refused() {
    let s = Sandbox::new();
    let f = s.write("f", "x");
    let d = arg(&s.model());
    pema(on_memories(
        "train",
        [&d, &d, &arg(&s.model().join("model.gguf")), &arg(&f)],
        &[],
    ))
    .fails_with(&["--out", "is a file"]);
}

#[test]
fn memory_verify_of_a_missing_directory_is_named() {
    pema(["memory", "verify", "no-such-memory"]).fails_with(&["no-such-memory", "does not exist"]);
}

#[test]
fn out_of_range_numbers_are_refused_while_parsing() {
    let s = Sandbox::new();
    let (m, p) = (arg(&s.model()), arg(&s.pairs("p.tsv", 2)));
    let d = arg(&s.model());
    let train = |extra: &[&str]| {
        let mut a = vec![
            "train",
            "--memory",
            &d,
            "--dev-memory",
            &d,
            "--head",
            &p,
            "--out",
            "o",
        ];
        a.extend_from_slice(extra);
        pema(a)
    };
    refused_flag(&train(&["--length-ratio=-3"]), "--length-ratio");
    refused_flag(&train(&["--rank", "0"]), "--rank");
    refused_flag(&train(&["--lr", "nan"]), "--lr");
    refused_flag(&train(&["--kappa", "1.5"]), "--kappa");
    refused_flag(&train(&["--dropout", "1"]), "--dropout");
    refused_flag(&train(&["--batch2", "0"]), "--batch2");
    refused_flag(&train(&["--validate-every", "0"]), "--validate-every");
    let score = |extra: &[&str]| {
        let mut a = vec!["score", "--hyp", &p, "--ref", &p];
        a.extend_from_slice(extra);
        pema(a)
    };
    refused_flag(
        &score(&["--confidence", "--confidence-n", "0"]),
        "--confidence-n",
    );
    refused_flag(&score(&["--smooth-value=-5"]), "--smooth-value");
    refused_flag(&score(&["--paired-bs-n", "0"]), "--paired-bs-n");
    refused_flag(
        &pema(s.build(&p, "o", &["--batch-size", "0"])),
        "--batch-size",
    );
    refused_flag(
        &pema(s.build(&p, "o", &["--pairs-per-shard", "0"])),
        "--pairs-per-shard",
    );
    refused_flag(
        &pema(s.decode(&p, "o", &["--batch-size", "0"])),
        "--batch-size",
    );
    refused_flag(
        &pema(s.decode(&p, "o", &["--lambda-max", "1.5"])),
        "--lambda-max",
    );
    refused_flag(
        &pema(on_memories("knn-tune", [&d, &d, &p, "o"], &["--k", "4, 0"])),
        "--k",
    );
    refused_flag(
        &pema([
            "generate",
            "--model",
            &m,
            "--prompt",
            "a",
            "--max-tokens",
            "0",
        ]),
        "--max-tokens",
    );
}

#[test]
fn memory_build_writes_progress_lines_into_a_log_file() {
    let s = Sandbox::new();
    let pairs = s.pairs("p.tsv", 6);
    let r = pema(s.build(
        &arg(&pairs),
        &arg(&s.path("m")),
        &["--pairs-per-shard", "2"],
    ));
    r.succeeds();
    assert_eq!(
        r.stderr.matches("pairs committed").count(),
        3,
        "{}",
        r.stderr
    );
}
