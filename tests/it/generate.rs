//! Generation behaviour on the real default model: seeds, batching, stop strings, streaming,
//! cancellation, n-gram bans, and the CLI's JSON.

use crate::common;

use humanlm::generate::{generate, Event, SamplingParams, StopReason};
use humanlm::model::chat::Message;
use std::sync::atomic::{AtomicBool, Ordering};

fn chat_ids(question: &str) -> Vec<u32> {
    let m = common::default_model();
    let text = m
        .chat
        .render(
            &[Message::new("user", question)],
            true,
            &serde_json::json!({}),
        )
        .unwrap();
    m.tokenizer.encode_rendered(&text).unwrap()
}

fn run(ids: &[u32], p: &SamplingParams) -> humanlm::generate::Generation {
    generate(common::default_model(), ids, p, None, &mut |_| {}).unwrap()
}

#[test]
fn same_seed_same_tokens() {
    let ids = chat_ids("Tell me about your weekend.");
    let p = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        max_new_tokens: 24,
        seed: 11,
        ..Default::default()
    };
    let a = run(&ids, &p);
    let b = run(&ids, &p);
    assert_eq!(a.samples[0].token_ids, b.samples[0].token_ids);
    let c = run(
        &ids,
        &SamplingParams {
            seed: 12,
            ..p.clone()
        },
    );
    assert_ne!(
        a.samples[0].token_ids, c.samples[0].token_ids,
        "a different seed should give a different sample"
    );
    assert!(a.ttft_ms > 0.0 && a.tokens_per_s > 0.0);
}

/// n samples share one prefill and decode as a batch; greedy rows must equal the unbatched run,
/// and seeded rows must be reproducible.
#[test]
fn batched_samples() {
    let ids = chat_ids("Name three fruits.");
    let one = run(
        &ids,
        &SamplingParams {
            max_new_tokens: 20,
            ..Default::default()
        },
    );
    let three = run(
        &ids,
        &SamplingParams {
            max_new_tokens: 20,
            n: 3,
            ..Default::default()
        },
    );
    assert_eq!(three.samples.len(), 3);
    for s in &three.samples {
        assert_eq!(s.token_ids, one.samples[0].token_ids);
    }
    let p = SamplingParams {
        temperature: 1.0,
        max_new_tokens: 16,
        n: 4,
        seed: 5,
        ..Default::default()
    };
    let x = run(&ids, &p);
    let y = run(&ids, &p);
    let xs: Vec<_> = x.samples.iter().map(|s| s.token_ids.clone()).collect();
    let ys: Vec<_> = y.samples.iter().map(|s| s.token_ids.clone()).collect();
    assert_eq!(xs, ys);
    assert!(
        xs.iter().any(|t| t != &xs[0]),
        "samples at temperature 1 should differ"
    );
}

#[test]
fn eos_and_length() {
    let ids = chat_ids("What is 2+2?");
    let g = run(
        &ids,
        &SamplingParams {
            max_new_tokens: 64,
            ..Default::default()
        },
    );
    assert_eq!(g.samples[0].stop_reason, StopReason::Eos);
    let g = run(
        &ids,
        &SamplingParams {
            max_new_tokens: 5,
            ..Default::default()
        },
    );
    assert_eq!(g.samples[0].stop_reason, StopReason::Length);
    assert_eq!(g.samples[0].tokens, 5);
}

#[test]
fn stop_strings_strip_or_keep_and_never_stream() {
    let ids = chat_ids("Write two sentences about the sea.");
    let full = run(
        &ids,
        &SamplingParams {
            max_new_tokens: 60,
            ..Default::default()
        },
    )
    .samples
    .remove(0)
    .text;
    // Stop on the second word boundary of the greedy text.
    let cut = full.match_indices(' ').nth(2).expect("a few words").0;
    let stop = full[cut..cut + 3].to_string();
    let first = full.find(&stop).unwrap();
    for keep in [false, true] {
        let p = SamplingParams {
            max_new_tokens: 60,
            stop: vec!["@@never@@".into(), stop.clone()],
            keep_stop: keep,
            ..Default::default()
        };
        let mut streamed = String::new();
        let g = generate(common::default_model(), &ids, &p, None, &mut |e| {
            if let Event::Text { delta, .. } = e {
                streamed.push_str(delta);
            }
        })
        .unwrap();
        let s = &g.samples[0];
        assert_eq!(s.stop_reason, StopReason::Stop);
        assert_eq!(s.stop_string.as_deref(), Some(stop.as_str()));
        let want = if keep {
            &full[..first + stop.len()]
        } else {
            &full[..first]
        };
        assert_eq!(s.text, want);
        assert_eq!(streamed, s.text, "the stream must equal the final text");
    }
}

#[test]
fn cancellation_between_tokens() {
    let ids = chat_ids("Tell me a long story about a dragon.");
    let cancel = AtomicBool::new(false);
    let mut events = 0;
    let p = SamplingParams {
        max_new_tokens: 200,
        ignore_eos: true,
        ..Default::default()
    };
    let g = generate(common::default_model(), &ids, &p, Some(&cancel), &mut |e| {
        if matches!(e, Event::Text { .. }) {
            events += 1;
            if events == 3 {
                cancel.store(true, Ordering::Relaxed);
            }
        }
    })
    .unwrap();
    assert_eq!(g.samples[0].stop_reason, StopReason::Cancelled);
    assert!(
        g.samples[0].tokens < 10,
        "stopped after {} tokens",
        g.samples[0].tokens
    );
}

/// Esc during a long prefill: the flag is read between prefill steps, so a call cancelled while
/// it reads its prompt returns after the step it is in, with every sample `Cancelled` and empty.
/// A flag that is never set must not change the tokens.
#[test]
fn cancellation_during_prefill() {
    let long =
        "The council met again about the library, and the same people said the same things. "
            .repeat(130);
    let ids = chat_ids(&format!("{long}\nWhat do you think?"));
    // Timed against a whole prefill: no call may take its prompt from the prefix cache.
    common::default_model().prefix_cache.set_bound_mb(0);
    // Four groups of prefill steps, so a flag set early stops well before the end.
    assert!(ids.len() > 1900, "prompt of {} tokens", ids.len());
    let p = SamplingParams {
        max_new_tokens: 6,
        ..Default::default()
    };
    let plain = run(&ids, &p);
    let never = AtomicBool::new(false);
    let t0 = std::time::Instant::now();
    let flagged = generate(common::default_model(), &ids, &p, Some(&never), &mut |_| {}).unwrap();
    let full = t0.elapsed();
    assert_eq!(
        plain.samples[0].token_ids, flagged.samples[0].token_ids,
        "a cancel flag that is never set must not change the tokens"
    );

    let cancel = AtomicBool::new(false);
    let mut finished = vec![];
    let t0 = std::time::Instant::now();
    let g = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(full / 10);
            cancel.store(true, Ordering::Relaxed);
        });
        generate(
            common::default_model(),
            &ids,
            &SamplingParams { n: 2, ..p.clone() },
            Some(&cancel),
            &mut |e| {
                if let Event::Finished { sample, reason } = e {
                    finished.push((sample, reason));
                }
            },
        )
        .unwrap()
    });
    let took = t0.elapsed();
    assert!(
        took < full / 2,
        "cancelled after {:?} took {took:?}; a whole prefill took {full:?}",
        full / 10
    );
    assert_eq!(g.samples.len(), 2);
    for s in &g.samples {
        assert_eq!(s.stop_reason, StopReason::Cancelled);
        assert_eq!(s.tokens, 0);
        assert!(s.text.is_empty());
    }
    assert_eq!(
        finished,
        vec![(0, StopReason::Cancelled), (1, StopReason::Cancelled)]
    );
}

#[test]
fn no_repeat_ngram_ban_holds() {
    let m = common::default_model();
    let ids = m
        .tokenizer
        .encode_raw("one two three one two three one two three one two")
        .unwrap();
    let p = SamplingParams {
        max_new_tokens: 48,
        ignore_eos: true,
        no_repeat_ngram: 4,
        ..Default::default()
    };
    let g = run(&ids, &p);
    let seq: Vec<u32> = ids.iter().chain(&g.samples[0].token_ids).copied().collect();
    let mut seen = std::collections::HashSet::new();
    for w in seq[ids.len().saturating_sub(3)..].windows(4) {
        // Every 4-gram that ends in a generated token must be new.
        let all_prior: Vec<&[u32]> = seq.windows(4).collect();
        let count = all_prior.iter().filter(|x| **x == w).count();
        assert_eq!(count, 1, "4-gram {w:?} repeats");
        seen.insert(w.to_vec());
    }
    // Without the ban, greedy decoding of this prompt does repeat.
    let free = run(
        &ids,
        &SamplingParams {
            no_repeat_ngram: 0,
            ..p
        },
    );
    let seq: Vec<u32> = ids
        .iter()
        .chain(&free.samples[0].token_ids)
        .copied()
        .collect();
    let distinct: std::collections::HashSet<&[u32]> = seq.windows(4).collect();
    assert!(
        distinct.len() < seq.len() - 3,
        "the unbanned run should repeat some 4-gram"
    );
}

#[test]
fn cli_json_outputs() {
    let ck = common::checkpoints();
    let v = common::run_json(
        &[
            "generate",
            "--prompt",
            "Hi there!",
            "--chat",
            "--max-tokens",
            "8",
            "--n",
            "2",
            "--temperature",
            "0.7",
            "--json",
        ],
        &ck,
    );
    assert_eq!(v["samples"].as_array().unwrap().len(), 2);
    for s in v["samples"].as_array().unwrap() {
        assert!(
            s["text"].is_string()
                && s["tokens"].as_u64().unwrap() <= 8
                && s["stop_reason"].is_string()
        );
    }
    assert!(v["ttft_ms"].as_f64().unwrap() > 0.0 && v["tokens_per_s"].is_number());

    let v = common::run_json(&["checkpoints", "--json"], &ck);
    let smol = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "smollm2-135m-instruct")
        .expect("default checkpoint listed");
    assert_eq!(smol["architecture"], "llama");
    assert_eq!(smol["parameters"], 134_515_008);
    assert_eq!(smol["context_length"], 8192);
    assert!(smol["dtype"].as_str().unwrap().starts_with("Q4_1"));

    let v = common::run_json(
        &[
            "bench",
            "--prompt-tokens",
            "32",
            "--new-tokens",
            "4",
            "--threads",
            "2",
            "--json",
        ],
        &ck,
    );
    for k in [
        "prefill_tok_s",
        "decode_tok_s_b1",
        "decode_tok_s_b4",
        "peak_rss_mb",
    ] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}");
    }
}

#[test]
fn adapters_listed_under_their_base() {
    let v = common::run_json(&["checkpoints", "--json"], &common::fixture("tiny"));
    let lora = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "qwen3-lora")
        .unwrap();
    assert_eq!(lora["adapter_base"], "qwen3");
    assert_eq!(lora["format"], "lora");
    let qwen2 = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "qwen2")
        .unwrap();
    assert_eq!(qwen2["architecture"], "qwen2");
    assert!(qwen2["parameters"].as_u64().unwrap() > 0);
}

/// Prompts decoded together (`generate_many`, what a simulation's calls do) give each prompt
/// exactly the tokens it gets alone: different lengths, seeds, budgets and stop strings, one
/// and two samples each, nine rows, more than one joint step takes (so steps split into groups),
/// rows leaving as they finish; on the packed default model and on its dequantized, dense twin.
#[test]
fn prompts_decoded_together_give_what_each_gives_alone() {
    let dense = common::load(&common::default_gguf().display().to_string(), dense_opts());
    together_equals_alone(&[common::default_model(), &dense]);
}

/// The same with a live adapter (GRPO's rollouts decode together under the policy's adapter).
#[test]
fn prompts_decoded_together_under_a_live_adapter_give_what_each_gives_alone() {
    let mut packed = common::load("smollm2-135m-instruct", Default::default());
    let mut dense = common::load(&common::default_gguf().display().to_string(), dense_opts());
    for m in [&mut packed, &mut dense] {
        let dir = common::fixture("peft/theirs");
        let a = humanlm::model::lora::Adapter::load(
            &dir,
            "theirs",
            &candle_core::Device::Cpu,
            candle_core::DType::F32,
        )
        .unwrap();
        m.decoder.attach_adapter(&a).unwrap();
        m.decoder.set_active_adapter(Some("theirs")).unwrap();
    }
    together_equals_alone(&[&packed, &dense]);
}

fn dense_opts() -> humanlm::model::weights::LoadOptions {
    humanlm::model::weights::LoadOptions {
        dequantize: true,
        ..Default::default()
    }
}

fn together_equals_alone(models: &[&humanlm::model::Model]) {
    use humanlm::generate::{generate_many, Job};
    let questions = [
        "Name three fruits.",
        "What should I cook tonight? I have rice, eggs and spinach, and twenty minutes.",
        "Say hi.",
        "Write one sentence about the sea.",
        "Why is the sky blue? Explain it to a child in two sentences.",
        "List two colours.",
    ];
    let prompts: Vec<Vec<u32>> = questions.iter().map(|q| chat_ids(q)).collect();
    let params: Vec<SamplingParams> = (0..questions.len())
        .map(|i| SamplingParams {
            temperature: if i == 2 { 0.0 } else { 0.9 },
            max_new_tokens: 6 + 5 * i,
            seed: 40 + i as u64,
            n: 1 + i % 2,
            stop: if i == 3 { vec![".".into()] } else { vec![] },
            ..Default::default()
        })
        .collect();
    for &model in models {
        let jobs: Vec<Job> = prompts
            .iter()
            .zip(&params)
            .map(|(prompt, params)| Job { prompt, params })
            .collect();
        let mut texts = vec![String::new(); jobs.len()];
        let together = generate_many(model, &jobs, None, &mut |j, e| {
            if let Event::Text { sample: 0, delta } = e {
                texts[j].push_str(delta);
            }
        })
        .unwrap();
        assert_eq!(together.len(), jobs.len());
        let mut lengths = std::collections::BTreeSet::new();
        for (j, (job, g)) in jobs.iter().zip(&together).enumerate() {
            let alone = generate(model, job.prompt, job.params, None, &mut |_| {}).unwrap();
            assert_eq!(g.samples.len(), job.params.n);
            for (a, b) in g.samples.iter().zip(&alone.samples) {
                assert_eq!(a.token_ids, b.token_ids, "job {j}: tokens differ");
                assert_eq!(a.stop_reason, b.stop_reason, "job {j}");
                assert_eq!(a.text, b.text, "job {j}");
                lengths.insert(a.tokens);
            }
            assert_eq!(
                texts[j], g.samples[0].text,
                "job {j}'s events stream its text"
            );
            assert_eq!(g.prompt_tokens, job.prompt.len());
        }
        assert!(
            lengths.len() >= 3,
            "rows should finish at different steps: {lengths:?}"
        );
    }
}
