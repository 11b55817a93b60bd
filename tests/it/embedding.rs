//! all-MiniLM-L6-v2 embeddings against sentence-transformers
//! (fixture: `scripts/reference/minilm_embeddings.py`).

use crate::common;

use candle_core::Device;
use humanlm::judge::embedding::{cosine, Embedder, Pooling, DEFAULT_EMBEDDER};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

fn model_dir() -> PathBuf {
    common::checkpoints().join(DEFAULT_EMBEDDER)
}

fn embedder() -> &'static Embedder {
    static E: OnceLock<Embedder> = OnceLock::new();
    E.get_or_init(|| Embedder::load(&model_dir(), &Device::Cpu).unwrap_or_else(|e| panic!("{e}")))
}

fn fixture() -> &'static Value {
    static F: OnceLock<Value> = OnceLock::new();
    F.get_or_init(|| {
        let path = common::fixture("minilm_embeddings.json");
        let text = std::fs::read_to_string(&path).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

/// Cosine in f64 throughout, so a report near 1 keeps its digits.
fn cosine64(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    dot / (na * nb)
}

struct Case {
    text: String,
    n_tokens: usize,
    embedding: Vec<f32>,
}

fn cases() -> Vec<Case> {
    fixture()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_string(),
            n_tokens: c["n_tokens"].as_u64().unwrap() as usize,
            embedding: c["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect(),
        })
        .collect()
}

#[test]
fn config_is_read() {
    let e = embedder();
    assert_eq!(e.dim(), 384);
    assert_eq!(
        e.max_seq_length(),
        fixture()["max_seq_length"].as_u64().unwrap() as usize
    );
    assert_eq!(e.pooling(), Pooling::Mean);
}

#[test]
fn token_counts_match_reference_truncation() {
    let e = embedder();
    for c in cases() {
        let ids = e.token_ids(&c.text).unwrap();
        assert_eq!(ids.len(), c.n_tokens, "token count of {:?}", c.text);
        assert_eq!(ids.first(), Some(&101), "[CLS] first in {:?}", c.text);
        assert_eq!(ids.last(), Some(&102), "[SEP] last in {:?}", c.text);
    }
}

#[test]
fn embeddings_match_sentence_transformers() {
    let e = embedder();
    let cases = cases();
    assert!(cases.len() >= 24);
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();

    let t0 = Instant::now();
    let first24 = e.embed(&texts[..24]).unwrap();
    let t24 = t0.elapsed();
    let t0 = Instant::now();
    let ours = e.embed(&texts).unwrap();
    let tall = t0.elapsed();
    eprintln!(
        "embedding timings (CPU): 24 texts {:.1} ms; all {} texts (2 of 256 tokens) {:.1} ms",
        t24.as_secs_f64() * 1e3,
        texts.len(),
        tall.as_secs_f64() * 1e3
    );
    assert_eq!(ours.len(), cases.len());

    let mut worst = (f64::INFINITY, String::new());
    let mut max_abs = 0f32;
    for (c, v) in cases.iter().zip(&ours) {
        assert_eq!(v.len(), 384);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-5,
            "not a unit vector ({norm}) for {:?}",
            c.text
        );
        let cos = cosine64(v, &c.embedding);
        for (a, b) in v.iter().zip(&c.embedding) {
            max_abs = max_abs.max((a - b).abs());
        }
        if cos < worst.0 {
            worst = (cos, c.text.clone());
        }
        assert!(
            cos >= 0.9999,
            "cosine {cos} to the reference for {:?}",
            c.text
        );
    }
    eprintln!(
        "worst cosine to sentence-transformers: {:.9} (1 - cos = {:.1e}, {:?}); max |Δ| of a \
         component {:.2e}",
        worst.0,
        1.0 - worst.0,
        worst.1.chars().take(40).collect::<String>(),
        max_abs
    );
    // The batch of 24 and the batch of all agree on the texts they share (padding is masked).
    for (a, b) in first24.iter().zip(&ours) {
        assert!(cosine(a, b) > 0.99999);
    }
}

#[test]
fn batching_and_padding_do_not_change_embeddings() {
    let e = embedder();
    let cases = cases();
    let long = cases.iter().find(|c| c.n_tokens == 256).unwrap();
    // A prefix of the long text just over half its length shares its batch, padded by 100+ tokens.
    let words: Vec<&str> = long.text.split(' ').collect();
    let mut k = 1;
    while e.token_ids(&words[..k].join(" ")).unwrap().len() < 140 {
        k += 1;
    }
    let medium = words[..k].join(" ");
    let short = cases
        .iter()
        .find(|c| c.n_tokens < 8 && c.n_tokens > 2)
        .unwrap();
    let alone = e.embed(&[medium.as_str()]).unwrap();
    let batched = e
        .embed(&[short.text.as_str(), long.text.as_str(), medium.as_str()])
        .unwrap();
    let cos = cosine(&alone[0], &batched[2]);
    assert!(cos > 0.99999, "padding changed the embedding: cosine {cos}");
    let max_diff = alone[0]
        .iter()
        .zip(&batched[2])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_diff < 1e-5, "padding changed a component by {max_diff}");
    // Order in the input does not matter either.
    let short_alone = e.embed(&[short.text.as_str()]).unwrap();
    assert!(cosine(&short_alone[0], &batched[0]) > 0.99999);
    assert!(e.embed(&[]).unwrap().is_empty());
}

#[test]
fn similarity_matches_reference_pairs() {
    let e = embedder();
    let cases = cases();
    let pairs = fixture()["pairs"].as_array().unwrap();
    assert!(!pairs.is_empty());
    let mut worst = 0f32;
    for p in pairs {
        let a = p["a"].as_u64().unwrap() as usize;
        let b = p["b"].as_u64().unwrap() as usize;
        let want = p["cosine"].as_f64().unwrap() as f32;
        let got = e.similarity(&cases[a].text, &cases[b].text).unwrap();
        worst = worst.max((got - want).abs());
        assert!(
            (got - want).abs() <= 1e-4,
            "similarity({:?}, {:?}) = {got}, reference {want}",
            cases[a].text,
            cases[b].text
        );
    }
    eprintln!(
        "worst |Δ similarity| over {} pairs: {worst:.2e}",
        pairs.len()
    );
    // Paraphrases score above unrelated texts.
    let s1 = e
        .similarity("The cat sat on the mat.", "A cat was sitting on a rug.")
        .unwrap();
    let s2 = e
        .similarity("The cat sat on the mat.", "Quarterly revenue grew 12%.")
        .unwrap();
    assert!(s1 > s2 + 0.3, "{s1} vs {s2}");
}

/// A temporary copy of the model folder's small files, the weights linked rather than copied.
fn scratch_copy(with_weights: bool) -> tempfile::TempDir {
    let src = model_dir();
    let tmp = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "modules.json",
        "sentence_bert_config.json",
    ] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    std::fs::create_dir(tmp.path().join("1_Pooling")).unwrap();
    std::fs::copy(
        src.join("1_Pooling/config.json"),
        tmp.path().join("1_Pooling/config.json"),
    )
    .unwrap();
    if with_weights {
        link(
            &src.join("model.safetensors"),
            &tmp.path().join("model.safetensors"),
        );
    }
    tmp
}

#[cfg(unix)]
fn link(src: &Path, dst: &Path) {
    std::os::unix::fs::symlink(src, dst).unwrap();
}

#[cfg(not(unix))]
fn link(src: &Path, dst: &Path) {
    std::fs::copy(src, dst).unwrap();
}

fn load_err(dir: &Path) -> String {
    match Embedder::load(dir, &Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_weights_is_a_one_line_error_naming_the_file() {
    let tmp = scratch_copy(false);
    let msg = load_err(tmp.path());
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(msg.contains("model.safetensors"), "{msg}");
    assert!(msg.contains("missing"), "{msg}");
}

#[test]
fn bad_files_are_one_line_errors_naming_the_file() {
    // Unsupported pooling mode.
    let tmp = scratch_copy(true);
    std::fs::write(
        tmp.path().join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 384, "pooling_mode_weightedmean_tokens": true}"#,
    )
    .unwrap();
    let msg = load_err(tmp.path());
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(
        msg.contains("1_Pooling") && msg.contains("weightedmean"),
        "{msg}"
    );

    // Broken config.json.
    let tmp = scratch_copy(true);
    std::fs::write(tmp.path().join("config.json"), "{ not json").unwrap();
    let msg = load_err(tmp.path());
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(
        msg.contains("config.json") && msg.contains("invalid JSON"),
        "{msg}"
    );

    // Truncated weights.
    let tmp = scratch_copy(false);
    std::fs::write(
        tmp.path().join("model.safetensors"),
        b"\x08\0\0\0\0\0\0\0{}",
    )
    .unwrap();
    let msg = load_err(tmp.path());
    assert_eq!(msg.lines().count(), 1, "{msg}");
    assert!(msg.contains("model.safetensors"), "{msg}");

    // Not a folder.
    let msg = load_err(&tmp.path().join("nope"));
    assert!(msg.contains("nope"), "{msg}");
}

#[test]
fn cls_pooling_is_read_from_the_pooling_config() {
    let tmp = scratch_copy(true);
    std::fs::write(
        tmp.path().join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 384, "pooling_mode_cls_token": true,
            "pooling_mode_mean_tokens": false}"#,
    )
    .unwrap();
    let cls = Embedder::load(tmp.path(), &Device::Cpu).unwrap();
    assert_eq!(cls.pooling(), Pooling::Cls);
    let text = "Thanks for sending the draft over.";
    let a = cls.embed(&[text]).unwrap().remove(0);
    let b = embedder().embed(&[text]).unwrap().remove(0);
    let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5);
    assert!(cosine(&a, &b) < 0.999, "cls and mean pooling should differ");
}
