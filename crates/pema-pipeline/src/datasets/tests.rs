//! Tests of the datasets: parsing, cleaning, rules, deterministic leak-free splits.

use super::ding::*;
use super::formality::*;
use super::*;

const SAMPLE: &str = "\
# Version :: test
Ärger {m}; Sorge {f} | Keine Bange!; Keine Sorge!; Kein Problem! :: worry | No worries! [Austr.] [coll.]
Alkohol {m} | Ich trinke keinen Alkohol. | dem Alkohol verfallen :: alcohol | I don’t take alcohol. | to become addicted to alcohol
Hinweis {m} | Er hat den Wink nicht verstanden. | Kannst Du mir auf die Sprünge helfen? (Ich komm nicht drauf) :: hint | He didn’t take the hint. | Give me a hint.
Dienst {m} | Kann ich Ihnen (irgendwie) behilflich sein? | Es freut mich, wenn ich helfen kann. :: service | May I be of service to you?; Can I be of any service? | I am glad to be of service.
Ärger {m}; Zoff {m} [ugs.] | Da bekommst du Ärger. :: trouble; aggravation; aggro [Br.] [coll.] | You’ll be in trouble for this.
Abgemacht!; Ist geritzt! [ugs.] :: Done!; It’s a deal! [coll.]
Alkoholiker {m}; Alki {m} [ugs.] :: alcoholic; alky [coll.]; alkie [coll.]
Hilfe {f} | Er hat (k)eine Ahnung. | Kannst du jdm. helfen? :: help | He has (no) idea. | Can you help sb.?
Wetter {n} | Es wird morgen regnen. | Das Wetter ist schön. :: weather | It is going to rain tomorrow. | The weather is fine.
Wahl {f} | Ich will nicht gehen. | Sie gehen nicht. :: choice | I do not want to go. | They are not going.
Aussage {f} | Das ist alles. :: statement | That is all.
Einladung {f} | Ich komme gern. :: invitation | I would like to come.
Gerät {n} | Das Gerät ist kaputt. :: device | The device is broken.
kaputt {adj} | Das Gerät ist hinüber. :: broken | The device is bust. | extra
";

fn write_sample(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("de-en");
    fs::write(&path, text).expect("write sample");
    path
}

fn read_split(dir: &Path, name: &str) -> Vec<Pair> {
    pema_memory::PairsFile::read(&dir.join(name))
        .expect("read split")
        .pairs
}

#[test]
fn mt_cleaning_rules() {
    let pairs = extract_mt_pairs(SAMPLE);
    let got: Vec<(&str, &str)> = pairs
        .iter()
        .map(|p| (p.source.as_str(), p.target.as_str()))
        .collect();
    assert!(got.contains(&("I don’t take alcohol.", "Ich trinke keinen Alkohol.")));
    // Explanatory and optional parentheses are removed.
    assert!(got.contains(&("Give me a hint.", "Kannst Du mir auf die Sprünge helfen?")));
    assert!(got.contains(&(
        "May I be of service to you?",
        "Kann ich Ihnen behilflich sein?"
    )));
    assert!(got.contains(&(
        "Can I be of any service?",
        "Kann ich Ihnen behilflich sein?"
    )));
    // Glued brackets, placeholders, words and phrases are dropped.
    assert!(
        !got.iter()
            .any(|(s, _)| s.contains("idea") || s.contains("sb"))
    );
    assert!(
        !got.iter()
            .any(|(s, _)| *s == "worry" || s.starts_with("to "))
    );
    // Lines whose alternatives do not line up are skipped.
    assert!(!got.iter().any(|(s, _)| s.contains("bust")));
    for (s, t) in &got {
        assert!(!s.contains(['[', ']', '{', '}', '(', ')']) && !t.contains(['{', '[', '(']));
        assert!(s.ends_with(['.', '!', '?']) && t.ends_with(['.', '!', '?']));
    }
    assert_eq!(got.len(), 14, "{got:#?}");
}

#[test]
fn strip_annotations_rules() {
    assert_eq!(
        strip_annotations("Aal {m} (auf der Speisekarte) [cook.]").as_deref(),
        Some("Aal")
    );
    assert_eq!(strip_annotations("Freund(in)"), None);
    assert_eq!(strip_annotations("(k)eine Ahnung"), None);
    assert_eq!(strip_annotations("broken (]"), None);
    assert_eq!(
        strip_annotations("to bash in [coll.] <> sth.").as_deref(),
        Some("to bash in sth.")
    );
    assert_eq!(strip_annotations("Hallo (du) !").as_deref(), Some("Hallo!"));
}

#[test]
fn formality_rewrites() {
    assert_eq!(
        formalise("I don't take alcohol.").as_deref(),
        Some("I do not take alcohol.")
    );
    assert_eq!(
        formalise("You'll be in trouble for this.").as_deref(),
        Some("You will be in trouble for this.")
    );
    assert_eq!(
        formalise("It's been raining.").as_deref(),
        Some("It has been raining.")
    );
    assert_eq!(formalise("It's a deal!").as_deref(), Some("It is a deal!"));
    assert_eq!(formalise("Can't you take a hint?"), None); // inverted question
    assert_eq!(formalise("I'd like that."), None); // 'd is ambiguous
    assert_eq!(formalise("He's finished the job."), None); // is/has is ambiguous
    assert_eq!(formalise("John's car is red."), None); // possessive: nothing to expand
    assert_eq!(
        formalise("Yeah, I'm gonna do it.").as_deref(),
        Some("Yes, I am going to do it.")
    );
    assert_eq!(
        informalise("I do not want to go.").as_deref(),
        Some("I don't wanna go.")
    );
    assert_eq!(
        informalise("It is going to rain tomorrow.").as_deref(),
        Some("It's gonna rain tomorrow.")
    );
    assert_eq!(
        informalise("They are going to win.").as_deref(),
        Some("They're gonna win.")
    );
    assert_eq!(informalise("That is all.").as_deref(), Some("That's all."));
    assert_eq!(
        informalise("I am not sure they would not come.").as_deref(),
        Some("I'm not sure they wouldn't come.")
    );
    assert_eq!(informalise("I know what it is."), None); // no 's at the clause end
    assert_eq!(informalise("Where is he?"), None);
    assert_eq!(
        informalise("I cannot come, I would like to.").as_deref(),
        Some("I can't come, I'd like to.")
    );
}

#[test]
fn formality_pairs_from_sample() {
    let pairs = extract_formality_pairs(SAMPLE);
    let got: Vec<(&str, &str)> = pairs
        .iter()
        .map(|p| (p.source.as_str(), p.target.as_str()))
        .collect();
    assert!(got.contains(&("aggro", "trouble")));
    assert!(got.contains(&("alky", "alcoholic")));
    assert!(got.contains(&("alkie", "alcoholic")));
    assert!(got.contains(&("It's a deal!", "Done!")));
    assert!(got.contains(&("I don't take alcohol.", "I do not take alcohol.")));
    assert!(got.contains(&("They aren't going.", "They are not going.")));
    assert!(got.contains(&("I'd like to come.", "I would like to come.")));
    for (s, t) in &got {
        assert_ne!(normalise(s), normalise(t));
        assert!(!s.contains('’') && !t.contains('’'));
    }
}

#[test]
fn split_has_no_leakage_and_respects_sizes() {
    // 300 pairs, with targets shared by pairs 3k, 3k+1, 3k+2 and some duplicate sources.
    let mut pairs: Vec<Pair> = (0..300)
        .map(|i| Pair {
            source: format!("Source sentence number {i}."),
            target: format!("Zielsatz Nummer {}.", i / 3),
            line: i + 1,
        })
        .collect();
    pairs.push(Pair {
        source: "source sentence NUMBER 7!".into(),
        target: "Anderes Ziel.".into(),
        line: 301,
    });
    let [train, dev, test] = split_pairs(pairs, 42);
    assert_eq!(train.len() + dev.len() + test.len(), 300);
    assert!((30..=32).contains(&test.len()), "{}", test.len());
    assert!((30..=32).contains(&dev.len()), "{}", dev.len());
    let sentences = |split: &[Pair]| -> std::collections::HashSet<String> {
        split
            .iter()
            .flat_map(|p| [normalise(&p.source), normalise(&p.target)])
            .collect()
    };
    let (a, b, c) = (sentences(&train), sentences(&dev), sentences(&test));
    assert!(a.is_disjoint(&b) && a.is_disjoint(&c) && b.is_disjoint(&c));
    // A different seed gives a different test split.
    let pairs2: Vec<Pair> = (0..300)
        .map(|i| Pair {
            source: format!("Source sentence number {i}."),
            target: format!("Zielsatz Nummer {}.", i / 3),
            line: i + 1,
        })
        .collect();
    let [_, _, test2] = split_pairs(pairs2, 43);
    assert_ne!(test, test2);
}

fn big_sample() -> String {
    let mut text = String::from(SAMPLE);
    for i in 0..60 {
        text.push_str(&format!(
            "Wort{i} {{n}} | Das ist Satz Nummer {i}. :: word{i} | This is sentence number {i}.\n"
        ));
    }
    text
}

#[test]
fn deterministic_reuse_and_changed_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ding = write_sample(dir.path(), &big_sample());
    let (out1, out2) = (dir.path().join("a"), dir.path().join("b"));
    let info1 = prepare_ding_mt(&ding, &out1, 7).expect("first run");
    let info2 = prepare_ding_mt(&ding, &out2, 7).expect("second run");
    assert!(!info1.reused && !info2.reused);
    for name in SPLIT_NAMES.iter().chain(&["split.json"]) {
        let a = fs::read(out1.join(name)).expect("read a");
        let b = fs::read(out2.join(name)).expect("read b");
        assert_eq!(a, b, "{name} differs between runs");
    }
    let total = info1.train.count + info1.dev.count + info1.test.count;
    assert_eq!(total, 74);
    assert_eq!(info1.dev.count, 7);
    assert_eq!(info1.test.count, 7);
    assert_eq!(read_split(&out1, "test.jsonl").len(), 7);

    // Reuse when everything verifies.
    let again = prepare_ding_mt(&ding, &out1, 7).expect("reuse");
    assert!(again.reused);
    assert_eq!(
        SplitInfo {
            reused: false,
            ..again
        },
        info1
    );

    // A tampered split file is regenerated identically.
    fs::write(out1.join("dev.jsonl"), "tampered\n").expect("tamper");
    let regenerated = prepare_ding_mt(&ding, &out1, 7).expect("regenerate");
    assert!(!regenerated.reused);
    assert_eq!(regenerated, info1);

    // A different seed for an existing split is an error.
    let err = prepare_ding_mt(&ding, &out1, 8).expect_err("seed mismatch");
    assert!(format!("{err:#}").contains("seed"), "{err:#}");

    // A changed Ding file is an error, not a silent resplit.
    write_sample(dir.path(), &format!("{}Neu {{n}} :: new\n", big_sample()));
    let err = prepare_ding_mt(&ding, &out1, 7).expect_err("changed input");
    let msg = format!("{err:#}");
    assert!(msg.contains("changed") && msg.contains("de-en"), "{msg}");
    // ... and the recorded split is left alone.
    assert_eq!(
        fs::read(out1.join("dev.jsonl")).expect("dev"),
        fs::read(out2.join("dev.jsonl")).expect("dev")
    );
}

#[test]
fn formality_split_is_marked_synthetic_and_deterministic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ding = write_sample(dir.path(), &big_sample());
    let a = prepare_formality(&ding, &dir.path().join("f1"), 3).expect("run 1");
    let b = prepare_formality(&ding, &dir.path().join("f2"), 3).expect("run 2");
    assert_eq!(a, b);
    assert_eq!(a.task, "synthetic-formality");
    assert!(a.synthetic);
    let json = fs::read_to_string(dir.path().join("f1/split.json")).expect("split.json");
    assert!(json.contains("\"task\": \"synthetic-formality\""));
    assert!(json.contains("\"synthetic\": true"));
    // The 60 generated "This is ..." sentences contract to "This is" (no rule), so the
    // pairs come from the hand-written lines only.
    assert!(a.train.count + a.dev.count + a.test.count >= 8);
    // Using an MT split directory for the formality task is refused.
    prepare_ding_mt(&ding, &dir.path().join("m"), 3).expect("mt");
    let err = prepare_formality(&ding, &dir.path().join("m"), 3).expect_err("task mismatch");
    assert!(format!("{err:#}").contains("belongs to task"));
}

/// The real Ding file (`cargo xtask fetch-assets`); skipped when absent.
#[test]
fn real_ding_counts() {
    let ding = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/ding/de-en");
    if !ding.exists() {
        eprintln!(
            "skipping: {} is absent (run cargo xtask fetch-assets)",
            ding.display()
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mt = prepare_ding_mt(&ding, &dir.path().join("mt"), 20240601).expect("mt");
    let fo = prepare_formality(&ding, &dir.path().join("fo"), 20240601).expect("formality");
    for info in [&mt, &fo] {
        eprintln!(
            "{}: train {} dev {} test {}",
            info.task, info.train.count, info.dev.count, info.test.count
        );
        // Groups of pairs sharing a sentence may overshoot the target a little.
        let total = info.train.count + info.dev.count + info.test.count;
        let eval = MAX_EVAL_PAIRS.min(total / 10);
        assert!((eval..eval + 20).contains(&info.dev.count));
        assert!((eval..eval + 20).contains(&info.test.count));
    }
    assert!(mt.train.count > 10_000, "{}", mt.train.count);
    assert!(fo.train.count > 3_000, "{}", fo.train.count);
    for sub in ["mt", "fo"] {
        for p in read_split(&dir.path().join(sub), "test.jsonl")
            .iter()
            .take(8)
        {
            eprintln!("  {} => {}", p.source, p.target);
        }
    }
}

#[test]
fn unreadable_input_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = prepare_ding_mt(&dir.path().join("missing"), &dir.path().join("o"), 1)
        .expect_err("missing file");
    assert!(format!("{err:#}").contains("missing"));
    let ding = write_sample(dir.path(), "# only a comment\n");
    let err = prepare_ding_mt(&ding, &dir.path().join("o"), 1).expect_err("no pairs");
    assert!(format!("{err:#}").contains("no usable pairs"));
}
