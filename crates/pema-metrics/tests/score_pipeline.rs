//! The `pema score` pipeline through the library API: JSON lines, paired tests, and typed
//! errors for bad input files.

use std::path::PathBuf;

use pema_metrics::report::{MetricKind, PairedTest, ScoreOptions, parse_metric_list, score_files};
use pema_metrics::{Bleu, Chrf, Metric, MetricsError, Ter};
use serde_json::Value;

fn write(dir: &tempfile::TempDir, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, content).expect("write test file");
    p
}

const REF: &str = "Die Katze sitzt auf der Matte.\nEs regnet heute in Berlin.\nDas Ergebnis: 3,5 % mehr als 2023!\n\n";
const HYP_A: &str = "Die Katze sitzt auf einer Matte.\nHeute regnet es in Berlin.\nDas Ergebnis ist 3,5 % mehr als 2023.\n\n";
const HYP_B: &str = "Eine Katze sitzt.\nEs regnet.\nErgebnis: mehr als 2023!\n\n";

#[test]
fn json_lines_carry_name_score_signature_and_stats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = write(&dir, "ref.txt", REF.as_bytes());
    let h = write(&dir, "hyp.txt", HYP_A.as_bytes());
    let opts = ScoreOptions::default();
    let reports = score_files(&[h], &[r], &opts).expect("score");
    let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["BLEU", "chrF2", "chrF2++", "TER"]);
    let hyps: Vec<&str> = HYP_A.lines().collect();
    let refs = vec![REF.lines().collect::<Vec<_>>()];
    let expected = [
        Bleu::default()
            .corpus_score(&hyps, &refs)
            .expect("bleu")
            .score,
        Chrf::default().corpus_score(&hyps, &refs).expect("chrf"),
    ];
    for (rep, want) in reports.iter().zip(expected) {
        assert_eq!(rep.score, want);
    }
    for rep in &reports {
        let line = rep.to_json_line();
        assert!(line.starts_with("{\"name\":"), "{line}");
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).expect("valid JSON");
        assert_eq!(v["name"], rep.name.as_str());
        // serde_json's default parser may be one ulp off; the printed value is exact (ryu)
        let parsed = v["score"].as_f64().expect("score");
        assert!((parsed - rep.score).abs() <= 1e-12 * rep.score.abs().max(1.0));
        assert_eq!(v["signature"], rep.signature.as_str());
        assert!(v["stats"].as_array().is_some_and(|s| !s.is_empty()));
        assert_eq!(v["version"], pema_metrics::SACREBLEU_VERSION);
    }
    let bleu: Value = serde_json::from_str(&reports[0].to_json_line()).expect("json");
    assert_eq!(bleu["counts"].as_array().map(Vec::len), Some(4));
    assert!(
        reports[0]
            .to_text_line(2, false, false)
            .starts_with("BLEU|nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    );
    let ter: Value = serde_json::from_str(&reports[3].to_json_line()).expect("json");
    assert!(ter["num_edits"].is_number());
    let _ = Ter::default().name();
}

#[test]
fn paired_tests_need_two_systems_and_report_p_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = write(&dir, "ref.txt", REF.as_bytes());
    let a = write(&dir, "a.txt", HYP_A.as_bytes());
    let b = write(&dir, "b.txt", HYP_B.as_bytes());
    let mut opts = ScoreOptions {
        metrics: parse_metric_list("bleu,chrf").expect("metrics"),
        ..ScoreOptions::default()
    };
    opts.paired = Some(PairedTest::Bootstrap(200));
    assert!(matches!(
        score_files(std::slice::from_ref(&a), std::slice::from_ref(&r), &opts),
        Err(MetricsError::InvalidConfig(_))
    ));
    let reps =
        score_files(&[a.clone(), b.clone()], std::slice::from_ref(&r), &opts).expect("paired bs");
    assert_eq!(reps.len(), 4);
    assert!(reps[0].is_baseline && reps[0].p_value.is_none() && reps[0].confidence.is_some());
    let p = reps[1].p_value.expect("p-value");
    assert!(p > 0.0 && p <= 1.0);
    assert!(reps[1].signature.contains("|bs:200|seed:12345|"));
    opts.paired = Some(PairedTest::ApproximateRandomization(500));
    let reps2 =
        score_files(&[a.clone(), b.clone()], std::slice::from_ref(&r), &opts).expect("paired ar");
    assert!(reps2[1].signature.contains("|ar:500|seed:12345|"));
    // reproducible
    let reps3 = score_files(&[a, b], &[r], &opts).expect("paired ar");
    assert_eq!(reps2[1].p_value, reps3[1].p_value);
    assert_eq!(MetricKind::ChrfPlusPlus, "chrf++".parse().expect("kind"));
}

#[test]
fn bad_inputs_are_typed_errors_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = write(&dir, "ref.txt", REF.as_bytes());
    let short = write(&dir, "short.txt", b"only one line\n");
    let opts = ScoreOptions::default();
    match score_files(
        std::slice::from_ref(&short),
        std::slice::from_ref(&r),
        &opts,
    ) {
        Err(e @ MetricsError::FileLengthMismatch { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("short.txt") && msg.contains("ref.txt") && msg.contains("line 2"),
                "{msg}"
            );
        }
        other => panic!("expected a length mismatch, got {other:?}"),
    }
    let bad = write(&dir, "bad.txt", b"fine\nnot \xc3\x28 utf8\nx\n\n");
    match score_files(&[bad], std::slice::from_ref(&r), &opts) {
        Err(MetricsError::InvalidUtf8 {
            path,
            line,
            byte_offset,
        }) => {
            assert!(path.ends_with("bad.txt"));
            assert_eq!((line, byte_offset), (2, 4));
        }
        other => panic!("expected invalid UTF-8, got {other:?}"),
    }
    let missing = dir.path().join("missing.txt");
    let err = score_files(&[missing], &[r], &opts).expect_err("missing file");
    assert!(matches!(err, MetricsError::MissingFile { .. }));
    assert!(err.to_string().contains("missing.txt"));
    // in-memory streams of different lengths
    let e = Bleu::default()
        .corpus_score(&["a", "b"], &[vec!["a"]])
        .expect_err("mismatch");
    assert!(matches!(
        e,
        MetricsError::LengthMismatch {
            expected: 2,
            found: 1,
            ..
        }
    ));
    assert!(matches!(
        Bleu::default().corpus_score(&["a"], &Vec::<Vec<&str>>::new()),
        Err(MetricsError::NoReferences)
    ));
}

#[test]
fn score_rejects_zero_resamples_and_negative_smoothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = write(&dir, "ref.txt", REF.as_bytes());
    let h = write(&dir, "hyp.txt", HYP_A.as_bytes());
    let h2 = write(&dir, "hyp2.txt", HYP_B.as_bytes());
    let bad = |opts: ScoreOptions, hyps: &[PathBuf], needle: &str| {
        let e = score_files(hyps, std::slice::from_ref(&r), &opts).expect_err(needle);
        assert!(matches!(e, MetricsError::InvalidConfig(_)), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    };
    let one = [h.clone()];
    let two = [h, h2];
    bad(
        ScoreOptions {
            confidence: Some(0),
            ..ScoreOptions::default()
        },
        &one,
        "--confidence-n",
    );
    bad(
        ScoreOptions {
            paired: Some(PairedTest::Bootstrap(0)),
            ..ScoreOptions::default()
        },
        &two,
        "--paired-bs-n",
    );
    let mut opts = ScoreOptions::default();
    opts.bleu.smoothing = pema_metrics::bleu::Smoothing::Floor(-5.0);
    bad(opts, &one, "--smooth-value");
    assert!(pema_metrics::bleu::Smoothing::from_name("add-k", Some(f64::NAN)).is_err());
    assert!(pema_metrics::bleu::Smoothing::from_name("floor", Some(0.0)).is_ok());
}
