//! ROUGE-L F1 and token F1 against rouge-score and the SQuAD v1.1 script
//! (fixture: `scripts/reference/lexical_scores.py`), plus properties.

use crate::common;

use humanlm::judge::lexical::{lcs_len, rouge_l_f1, rouge_tokens, squad_tokens, token_f1};
use proptest::prelude::*;
use serde_json::Value;

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn scores_match_the_python_references() {
    let path = common::fixture("lexical_scores.json");
    let fixture: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    let mut failures = vec![];
    let mut worst = (0f64, String::new());
    let mut exact = 0;
    for c in cases {
        let cand = c["candidate"].as_str().unwrap();
        let refr = c["reference"].as_str().unwrap();
        let want_rouge = c["rouge_l_f1"].as_f64().unwrap();
        let want_f1 = c["token_f1"].as_f64().unwrap();
        let (rouge, f1) = (rouge_l_f1(cand, refr), token_f1(cand, refr));
        for (what, got, want) in [("rouge_l_f1", rouge, want_rouge), ("token_f1", f1, want_f1)] {
            if (got - want).abs() > worst.0 {
                worst = (
                    (got - want).abs(),
                    format!("{what}({cand:?}, {refr:?}): {got:?} vs {want:?}"),
                );
            }
        }
        if rouge_tokens(cand) != strings(&c["rouge_candidate_tokens"]) {
            failures.push(format!(
                "rouge tokens of {cand:?}: {:?}, reference {:?}",
                rouge_tokens(cand),
                c["rouge_candidate_tokens"]
            ));
        }
        if squad_tokens(cand) != strings(&c["squad_candidate_tokens"]) {
            failures.push(format!(
                "SQuAD tokens of {cand:?}: {:?}, reference {:?}",
                squad_tokens(cand),
                c["squad_candidate_tokens"]
            ));
        }
        // The same f64 bits as Python (its repr text, parsed correctly rounded).
        for (what, got) in [("rouge_l_f1", rouge), ("token_f1", f1)] {
            let text = c["repr"][what].as_str().unwrap();
            let want: f64 = text.parse().unwrap();
            if got.to_bits() == want.to_bits() {
                exact += 1;
            } else {
                failures.push(format!(
                    "{what}({cand:?}, {refr:?}) = {got:?}, Python {text} (not bit-identical)"
                ));
            }
        }
        if (rouge - want_rouge).abs() > 1e-9 {
            failures.push(format!(
                "rouge_l_f1({cand:?}, {refr:?}) = {rouge}, reference {want_rouge}"
            ));
        }
        if (f1 - want_f1).abs() > 1e-9 {
            failures.push(format!(
                "token_f1({cand:?}, {refr:?}) = {f1}, reference {want_f1}"
            ));
        }
    }
    eprintln!(
        "{} pairs, {exact} scores bit-identical to Python; worst |Δ| against the JSON numbers as \
         serde_json reads them {:e} {}",
        cases.len(),
        worst.0,
        worst.1
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The textbook full-table LCS, to check the two-row version against.
fn lcs_naive(a: &[u8], b: &[u8]) -> usize {
    let mut t = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            t[i][j] = if a[i - 1] == b[j - 1] {
                t[i - 1][j - 1] + 1
            } else {
                t[i - 1][j].max(t[i][j - 1])
            };
        }
    }
    t[a.len()][b.len()]
}

/// Text made of a few words (some articles, some repeated), punctuation, non-ASCII and spaces.
fn text() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        Just("the".to_string()),
        Just("a".to_string()),
        Just("An".to_string()),
        Just("cat".to_string()),
        Just("Cat!".to_string()),
        Just("don't".to_string()),
        Just("café".to_string()),
        Just("我们".to_string()),
        Just("👍".to_string()),
        Just("...".to_string()),
        "[a-z]{1,6}",
        "\\PC{1,4}",
    ];
    let sep = prop_oneof![
        Just(" "),
        Just("  "),
        Just("\n"),
        Just(", "),
        Just("\u{3000}")
    ];
    prop::collection::vec((word, sep), 0..12).prop_map(|ws| {
        ws.into_iter()
            .map(|(w, s)| format!("{w}{s}"))
            .collect::<String>()
    })
}

proptest! {
    #[test]
    fn lcs_matches_the_full_table(a in prop::collection::vec(0u8..4, 0..40),
                                  b in prop::collection::vec(0u8..4, 0..40)) {
        let n = lcs_len(&a, &b);
        prop_assert_eq!(n, lcs_naive(&a, &b));
        prop_assert_eq!(n, lcs_len(&b, &a));
        prop_assert!(n <= a.len().min(b.len()));
    }

    #[test]
    fn scores_are_bounded_and_symmetric(a in text(), b in text()) {
        for s in [rouge_l_f1(&a, &b), token_f1(&a, &b)] {
            prop_assert!((0.0..=1.0).contains(&s), "{} out of [0, 1]", s);
        }
        // Both F-measures are symmetric in exact arithmetic (precision and recall swap); the
        // f64 products may round differently.
        prop_assert!((rouge_l_f1(&a, &b) - rouge_l_f1(&b, &a)).abs() < 1e-12);
        prop_assert!((token_f1(&a, &b) - token_f1(&b, &a)).abs() < 1e-12);
    }

    #[test]
    fn identical_text_scores_one_when_it_has_tokens(a in text()) {
        let r = rouge_l_f1(&a, &a);
        if rouge_tokens(&a).is_empty() {
            prop_assert_eq!(r, 0.0);
        } else {
            prop_assert_eq!(r, 1.0);
        }
        let f = token_f1(&a, &a);
        if squad_tokens(&a).is_empty() {
            prop_assert_eq!(f, 0.0);
        } else {
            prop_assert_eq!(f, 1.0);
        }
    }

    #[test]
    fn case_and_ascii_punctuation_do_not_matter(a in "[a-z ,.!?]{0,40}") {
        let upper = a.to_uppercase();
        prop_assert_eq!(rouge_l_f1(&a, &a), rouge_l_f1(&upper, &a));
        prop_assert_eq!(token_f1(&a, &a), token_f1(&upper, &a));
    }
}
