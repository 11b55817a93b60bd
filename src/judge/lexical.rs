//! Lexical overlap scores: ROUGE-L F1 and token F1.
//!
//! Both reproduce a reference implementation exactly (same tokens, same arithmetic, so the same
//! f64 bits), checked in `tests/lexical.rs` against the fixture made by
//! `scripts/reference/lexical_scores.py`:
//!
//! - [`rouge_l_f1`] is Google's `rouge-score` package (`rouge_scorer.RougeScorer(["rougeL"])`,
//!   default tokenizer, no stemmer), `.score(target=reference, prediction=candidate)["rougeL"]
//!   .fmeasure`. Its tokenizer lowercases (Python `str.lower`), turns every run of characters
//!   other than `[a-z0-9]` into a space and splits. **Non-ASCII text is dropped**: `"café"` gives
//!   the token `caf`, Chinese or Japanese text gives no tokens at all (so two CJK replies score 0),
//!   and the few characters whose lowercase is ASCII survive (`"İ"` → `i`, the Kelvin sign → `k`).
//!   An empty token list on either side scores 0 (both empty included).
//! - [`token_f1`] is the SQuAD v1.1 evaluation script's `f1_score(prediction, ground_truth)`:
//!   lowercase, delete ASCII punctuation (`string.punctuation`), replace the words `a`, `an`,
//!   `the` by a space (`re.sub(r"\b(a|an|the)\b", " ", s)`), split on whitespace, then precision
//!   and recall of the multiset overlap. Non-ASCII text is kept (`"café"` stays `café`). When
//!   nothing overlaps the score is 0, **including when both sides normalise to nothing** (v1.1
//!   returns 0 there; SQuAD v2.0's script would return 1).
//!
//! Two approximations of Python's Unicode tables, both far from ordinary text: a "word character"
//! for the article rule is Rust's `char::is_alphanumeric` where Python uses `str.isalnum` (they
//! differ only on the combining vowel signs and symbols that carry the Alphabetic property, such
//! as Devanagari matras or circled letters, and only matter when one touches `a`/`an`/`the`); and
//! lowercasing uses Rust's Unicode tables where Python uses its own version's.

use std::collections::HashMap;

/// `rouge-score`'s default tokens: lowercase, non-`[a-z0-9]` runs are separators.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    lower
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// Length of the longest common subsequence; O(n·m) time, O(min(n, m)) memory.
pub fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    if short.is_empty() {
        return 0;
    }
    let mut row = vec![0usize; short.len() + 1];
    for x in long {
        // `diag` is the previous row's value at j-1.
        let mut diag = 0usize;
        for (j, y) in short.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if x == y { diag + 1 } else { up.max(row[j]) };
            diag = up;
        }
    }
    row[short.len()]
}

/// Tokens as small integers (equal strings, equal ids), so the LCS compares `u32`s.
fn intern<'a>(a: &'a [String], b: &'a [String]) -> (Vec<u32>, Vec<u32>) {
    let mut ids: HashMap<&'a str, u32> = HashMap::new();
    let mut map = |toks: &'a [String]| -> Vec<u32> {
        toks.iter()
            .map(|t| {
                let n = ids.len() as u32;
                *ids.entry(t.as_str()).or_insert(n)
            })
            .collect()
    };
    let a = map(a);
    let b = map(b);
    (a, b)
}

/// `rouge_score.scoring.fmeasure`, same operation order.
fn fmeasure(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// ROUGE-L F-measure of `candidate` against `reference`, exactly as `rouge-score` computes it
/// with its default tokenizer and no stemming (see the module doc for non-ASCII text).
pub fn rouge_l_f1(candidate: &str, reference: &str) -> f64 {
    let pred = rouge_tokens(candidate);
    let target = rouge_tokens(reference);
    if pred.is_empty() || target.is_empty() {
        return 0.0;
    }
    let (p, t) = intern(&pred, &target);
    let lcs = lcs_len(&p, &t) as f64;
    let precision = lcs / pred.len() as f64;
    let recall = lcs / target.len() as f64;
    fmeasure(precision, recall)
}

/// Python's `str.isspace` (what `str.split()` splits on): Unicode White_Space plus the ASCII
/// information separators U+001C..U+001F, which Python counts and Rust does not.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// SQuAD v1.1 `normalize_answer`: lower, remove ASCII punctuation, remove the articles a/an/the
/// (whole words), collapse whitespace. Returns the tokens (the script's `.split()` of the result).
pub fn squad_tokens(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let no_punc: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    // re.sub(r"\b(a|an|the)\b", " ", s): a maximal run of word characters equal to an article.
    let mut out = String::with_capacity(no_punc.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if matches!(word.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in no_punc.chars() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out.split(py_isspace)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// SQuAD v1.1 `normalize_answer` as one string (tokens joined by single spaces).
pub fn squad_normalize(text: &str) -> String {
    squad_tokens(text).join(" ")
}

/// Token F1 of `candidate` (the prediction) against `reference` (the ground truth), exactly as
/// the SQuAD v1.1 evaluation script's `f1_score`. 0 when nothing overlaps, also when both
/// normalise to no tokens.
pub fn token_f1(candidate: &str, reference: &str) -> f64 {
    let pred = squad_tokens(candidate);
    let truth = squad_tokens(reference);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &truth {
        *counts.entry(t.as_str()).or_insert(0) += 1;
    }
    // Counter(pred) & Counter(truth): each predicted token matches at most as often as it occurs
    // in the reference.
    let mut num_same = 0usize;
    for t in &pred {
        if let Some(n) = counts.get_mut(t.as_str()) {
            if *n > 0 {
                *n -= 1;
                num_same += 1;
            }
        }
    }
    if num_same == 0 {
        return 0.0;
    }
    let precision = 1.0 * num_same as f64 / pred.len() as f64;
    let recall = 1.0 * num_same as f64 / truth.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

/// Whether `text` holds `word` (lowercase) as a whole word, case-insensitively: words are runs
/// of letters, digits and apostrophes.
pub fn has_word(text: &str, word: &str) -> bool {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .any(|w| w == word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rouge_edges() {
        assert_eq!(rouge_l_f1("", ""), 0.0);
        assert_eq!(rouge_l_f1("hello", ""), 0.0);
        assert_eq!(rouge_l_f1("", "hello"), 0.0);
        assert_eq!(rouge_l_f1("!!! ...", "?"), 0.0);
        assert_eq!(rouge_l_f1("The cat sat.", "the CAT sat"), 1.0);
        assert_eq!(rouge_l_f1("alpha beta", "gamma delta"), 0.0);
        // Non-ASCII is dropped: CJK gives no tokens, "café" is "caf".
        assert!(rouge_tokens("我觉得很好").is_empty());
        assert_eq!(
            rouge_tokens("Café-au-lait, 2x!"),
            ["caf", "au", "lait", "2x"]
        );
        assert_eq!(rouge_tokens("İstanbul"), ["i", "stanbul"]);
        assert_eq!(rouge_l_f1("我觉得很好", "我觉得很好"), 0.0);
    }

    #[test]
    fn rouge_value() {
        // LCS of "a b c d" and "a c e d" is "a c d": p = r = 3/4.
        assert!((rouge_l_f1("a b c d", "a c e d") - 0.75).abs() < 1e-15);
        // p = 2/2, r = 2/4 → 2·1·0.5/1.5.
        assert!((rouge_l_f1("x y", "x q y r") - 2.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn lcs_cases() {
        assert_eq!(lcs_len::<u32>(&[], &[1, 2]), 0);
        assert_eq!(lcs_len(&[1, 2, 3, 4, 1], &[3, 4, 1, 2, 1, 3]), 3);
        assert_eq!(lcs_len(&[1, 1, 1], &[1, 1]), 2);
        assert_eq!(lcs_len(&[1, 2, 3], &[1, 2, 3]), 3);
        assert_eq!(lcs_len(&[1, 2, 3], &[3, 2, 1]), 1);
    }

    #[test]
    fn token_f1_edges() {
        assert_eq!(token_f1("", ""), 0.0); // SQuAD v1.1: no overlap → 0, even both empty
        assert_eq!(token_f1("the", "a an"), 0.0); // articles only normalise to nothing
        assert_eq!(token_f1("Hello, world!", "hello world"), 1.0);
        assert_eq!(token_f1("red green", "blue yellow"), 0.0);
        assert_eq!(token_f1("x", ""), 0.0);
        // Counter intersection: "the cat cat" vs "cat": 1 shared of 2 predicted.
        assert!((token_f1("the cat cat", "cat") - 2.0 * 0.5 / 1.5).abs() < 1e-15);
        // Non-ASCII kept.
        assert_eq!(token_f1("café", "café"), 1.0);
        assert_eq!(token_f1("我觉得很好", "我觉得很好"), 1.0);
    }

    #[test]
    fn squad_normalisation() {
        assert_eq!(squad_normalize("The  Quick, brown fox!"), "quick brown fox");
        assert_eq!(squad_normalize("an apple a day"), "apple day");
        assert_eq!(squad_normalize("theatre and ana"), "theatre and ana");
        assert_eq!(squad_normalize("don't"), "dont");
        // An article next to a non-word, non-space character is still a word.
        assert_eq!(squad_normalize("the—end"), "—end");
        // "a" glued to a letter is not an article; punctuation is removed before articles.
        assert_eq!(squad_normalize("aé a.b"), "aé ab");
        // Python splits on U+001C..U+001F too.
        assert_eq!(squad_tokens("x\u{1c}y\u{3000}z"), ["x", "y", "z"]);
    }
}
