//! Validation during training: held-out scenarios evaluated on the live policy at step 0, every
//! few steps and at the end, through the same pass as `humanlm eval`.

use crate::train::{says_config, sft_config, short_prompts, tiny_dataset};
use humanlm::train::{run, Data, TrainEvent, ValConfig, ValEvent};
use std::path::Path;

/// Held-out scenarios in the style of the training ones (`tiny_dataset`), none of them shared.
fn held_out(dir: &Path, n: usize) {
    let rows = [
        (
            "parking",
            "Should supermarkets charge for parking after two hours?",
            "Charge me and I'll shop online, simple as that.",
        ),
        (
            "queue",
            "Is it ever fine to save a place in a queue for a friend?",
            "One friend, fine. Six friends, absolutely not.",
        ),
        (
            "trains",
            "Rail fares are going up again. Worth it?",
            "I pay more for a train than for the flight it replaces.",
        ),
        (
            "dogs",
            "Should dogs be allowed in pubs?",
            "Better company than half the regulars, honestly.",
        ),
        (
            "wifi",
            "Cafes that limit wifi to an hour: fair or petty?",
            "Fair. Buy a second coffee or go home.",
        ),
        (
            "phones",
            "Ban phones at the dinner table?",
            "Only if the conversation is worth putting it down for.",
        ),
    ];
    for (id, post, reply) in rows.iter().take(n) {
        std::fs::write(
            dir.join(format!("{id}.toml")),
            format!(
                "id = \"{id}\"\ndomain = \"opinion\"\ntitle = \"t\"\n[[turns]]\nauthor = \"op\"\ntext = \"{post}\"\n[target]\nauthor = \"grumpy\"\nresponse = \"{reply}\"\n"
            ),
        )
        .unwrap();
    }
}

/// Run `cfg` to the end; its training rewards (GRPO) or losses, and its validation events.
fn run_collecting(
    cfg: &humanlm::train::TrainConfig,
    roots: &humanlm::roots::Roots,
    out: &Path,
) -> (Vec<f64>, Vec<ValEvent>) {
    let mut steps = vec![];
    let mut vals = vec![];
    run(cfg, out, roots, false, None, &mut |e| match e {
        TrainEvent::Step(s) => steps.push(s.reward.as_ref().map_or(s.loss, |r| r.mean)),
        TrainEvent::Val(v) => {
            eprintln!("{}", humanlm::train::val::describe(v));
            vals.push(v.clone())
        }
        _ => {}
    })
    .unwrap();
    (steps, vals)
}

/// GRPO with a verifiable reward — the reply opens with "next" (within 4 tokens), which the
/// default model does about one time in ten at the rollouts' temperature 0.8 and never on these
/// held-out scenarios at validation's 0.4, where "HUMAN" wins the first token: on held-out
/// scenarios the validation reward — the same contains judge, on the reply as `eval` parses it, decoded as the
/// paper protocol does — rises with the training reward. Each pass is an eval run folder that
/// `compare` pairs, a `val` line beside the steps in events.jsonl, and with `keep_best` the best
/// step's adapter in best/.
#[test]
fn grpo_validation_reward_rises_with_the_training_reward() {
    let data = tempfile::tempdir().unwrap();
    tiny_dataset(data.path());
    let val = tempfile::tempdir().unwrap();
    held_out(val.path(), 3);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("grpo");
    let (_prompts, roots) = short_prompts();
    const STEPS: usize = 8;
    let mut cfg = says_config(data.path(), "next", 4);
    cfg.prompts = Some("short".into());
    cfg.steps = STEPS;
    cfg.batch = 1;
    cfg.lr = 6e-3;
    cfg.warmup = 1;
    cfg.val = Some(ValConfig {
        data: Data::Scenarios {
            path: val.path().into(),
        },
        every: 0,
        judge: None,
        limit: None,
        max_tokens: None,
        keep_best: true,
    });
    let (rewards, vals) = run_collecting(&cfg, &roots, &out);
    assert_eq!(rewards.len(), STEPS);
    let steps: Vec<usize> = vals.iter().map(|v| v.step).collect();
    assert_eq!(steps, [0, STEPS], "validated at step 0 and at the end");
    let (first, last) = (&vals[0], &vals[1]);
    assert_eq!(first.scenarios, 3);
    assert_eq!(first.criterion, "response");
    let train_first = (rewards[0] + rewards[1]) / 2.0;
    let train_last = rewards[STEPS / 2..].iter().sum::<f64>() / (STEPS / 2) as f64;
    assert!(
        train_last > train_first,
        "training reward {train_first:.3} → {train_last:.3}"
    );
    assert!(
        last.value > first.value,
        "validation reward {:.1} → {:.1} while training went {train_first:.3} → {train_last:.3}",
        first.value,
        last.value
    );
    // The validation runs are eval runs: `compare` pairs them scenario by scenario.
    let cmp = humanlm::eval::compare(&first.run, &last.run, 0).unwrap();
    assert!(
        (cmp.metrics["response"].b - cmp.metrics["response"].a - (last.value - first.value)).abs()
            < 1e-9
    );
    // Steps and validations share events.jsonl; each reader sees its own lines.
    assert_eq!(humanlm::train::read_events(&out).len(), STEPS);
    assert_eq!(humanlm::train::read_val_events(&out), vals);
    // The best step's adapter is kept, and says which step it is.
    let best: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("best/best.json")).unwrap())
            .unwrap();
    assert_eq!(best["step"], last.best_step);
    assert_eq!(last.best_step, STEPS);
    assert!(out.join("best/adapter_model.safetensors").is_file());
}

/// SFT on four scenarios: the held-out loss per target token falls, validations run at step 0,
/// every `every` steps and at the end, and the best step is the lowest loss.
#[test]
fn sft_validation_loss_falls_on_held_out_scenarios() {
    let data = tempfile::tempdir().unwrap();
    tiny_dataset(data.path());
    let val = tempfile::tempdir().unwrap();
    held_out(val.path(), 4);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sft");
    let (_prompts, roots) = short_prompts();
    let mut cfg = sft_config(data.path());
    cfg.prompts = Some("short".into());
    cfg.steps = 8;
    cfg.val = Some(ValConfig {
        data: Data::Scenarios {
            path: val.path().into(),
        },
        every: 4,
        judge: None,
        limit: Some(3),
        max_tokens: Some(8),
        keep_best: false,
    });
    let (losses, vals) = run_collecting(&cfg, &roots, &out);
    assert_eq!(losses.len(), 8);
    let steps: Vec<usize> = vals.iter().map(|v| v.step).collect();
    assert_eq!(steps, [0, 4, 8]);
    assert!(vals
        .iter()
        .all(|v| v.scenarios == 3 && v.criterion == "loss"));
    let loss = |v: &ValEvent| v.loss.unwrap();
    assert!(
        loss(&vals[2]) < loss(&vals[0]),
        "held-out loss {:?}",
        vals.iter().map(loss).collect::<Vec<_>>()
    );
    let lowest = vals
        .iter()
        .min_by(|a, b| loss(a).total_cmp(&loss(b)))
        .unwrap();
    assert_eq!(vals[2].best_step, lowest.step);
    // The default SFT judge is the embedding judge; every pass scored the reply.
    assert!(vals.iter().all(|v| v.metrics.contains_key("response")));
    assert!(!out.join("best").exists(), "best/ only with keep_best");
}
