//! Training: LoRA gradients against finite differences, SFT that overfits, exact resume, and
//! refusals of bad input.

use crate::common;

use candle_core::{DType, Tensor, Var};
use humanlm::model::lora_params::LoraParams;
use humanlm::model::weights::LoadOptions;
use humanlm::model::Checkpoint;
use humanlm::train::reward::RewardSpec;
use humanlm::train::{run, sft_loss, Data, Example, GrpoParams, Method, TrainConfig, TrainEvent};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// The tiny random llama in float64 with rank-2 LoRA factors on every projection, B non-zero
/// (B starts at zero in training, which would make every gradient of A zero).
fn tiny_f64_with_lora() -> (humanlm::model::Model, Vec<Var>) {
    let mut model = common::load(
        common::fixture("tiny/llama").to_str().unwrap(),
        LoadOptions {
            dtype: Some(DType::F64),
            ..Default::default()
        },
    );
    let mut cfg = TrainConfig::sft("tiny", Data::Scenarios { path: ".".into() });
    cfg.rank = 2;
    cfg.alpha = 4.0;
    let lora = LoraParams::init(&model, &cfg).unwrap();
    let mut rng = 7u64;
    let mut next = || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((rng >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.2
    };
    let mut vars: Vec<Var> = vec![];
    for (_, a, b) in &lora.vars {
        for v in [a, b] {
            let n = v.elem_count();
            let vals: Vec<f64> = (0..n).map(|_| next()).collect();
            let t = Tensor::from_vec(vals, v.dims(), &candle_core::Device::Cpu).unwrap();
            vars.push(Var::from_tensor(&t).unwrap());
        }
    }
    let f64_lora = LoraParams {
        vars: lora
            .vars
            .iter()
            .zip(vars.chunks(2))
            .map(|((n, _, _), ab)| (n.clone(), ab[0].clone(), ab[1].clone()))
            .collect(),
        config: lora.config.clone(),
        dropout: None,
    };
    f64_lora
        .attach(&mut model.decoder, Path::new("tiny"))
        .unwrap();
    (model, vars)
}

/// The analytic gradient of the SFT loss with respect to LoRA factors matches central finite
/// differences (float64, tiny random llama) within 1e-3 relative error.
#[test]
fn lora_gradients_match_finite_differences() {
    let (model, vars) = tiny_f64_with_lora();
    let ex = Example {
        scenario: "x".into(),
        prompt: vec![5, 17, 42, 9, 100, 3],
        target: vec![77, 8, 150, 2],
    };
    let loss = |m: &humanlm::model::Model| -> f64 {
        sft_loss(m, &[&ex])
            .unwrap()
            .0
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let (l, _) = sft_loss(&model, &[&ex]).unwrap();
    let grads = l.backward().unwrap();
    let h = 1e-5;
    let mut checked = 0;
    let mut worst = 0.0f64;
    for (vi, v) in vars.iter().enumerate().step_by(3) {
        let g: Vec<f64> = grads
            .get(v.as_tensor())
            .expect("every factor gets a gradient")
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for k in [0, base.len() / 2, base.len() - 1] {
            let set = |delta: f64| {
                let mut x = base.clone();
                x[k] += delta;
                v.set(&Tensor::from_vec(x, v.dims(), &candle_core::Device::Cpu).unwrap())
                    .unwrap();
            };
            set(h);
            let up = loss(&model);
            set(-h);
            let down = loss(&model);
            set(0.0);
            let numeric = (up - down) / (2.0 * h);
            let rel = (numeric - g[k]).abs() / numeric.abs().max(g[k].abs()).max(1e-6);
            assert!(
                rel <= 1e-3,
                "var {vi} elem {k}: analytic {} numeric {numeric} (rel {rel})",
                g[k]
            );
            worst = worst.max(rel);
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked}");
    eprintln!("checked {checked} LoRA parameters, worst relative error {worst:.2e}");
}

/// Four short scenarios written for the test (short threads keep each step fast on 2 cores).
pub(crate) fn tiny_dataset(dir: &Path) {
    let rows = [
        (
            "gym",
            "Should gyms put up signs asking people to wipe benches?",
            "Signs won't fix people who never read anything.",
        ),
        (
            "bins",
            "The council wants fortnightly bin collections. Thoughts?",
            "Fortnightly? My bin is full in four days, mate.",
        ),
        (
            "tea",
            "Is it rude to bring your own tea bags to a cafe?",
            "Only if you ask them for free hot water.",
        ),
        (
            "bikes",
            "Should cyclists pay road tax?",
            "There is no road tax, it's vehicle excise duty. Next.",
        ),
    ];
    for (id, post, reply) in rows {
        std::fs::write(
            dir.join(format!("{id}.toml")),
            format!(
                "id = \"{id}\"\ndomain = \"opinion\"\ntitle = \"t\"\n[[turns]]\nauthor = \"op\"\ntext = \"{post}\"\n[target]\nauthor = \"grumpy\"\nresponse = \"{reply}\"\n"
            ),
        )
        .unwrap();
    }
}

/// The default model's prompt set with a one-line system prompt, in a prompts folder of its own
/// (`short`): the tests whose cost is the prompt's forward and backward passes (full weights,
/// GRPO) train on prompts half as long. The folder lives as long as the returned guard.
pub(crate) fn short_prompts() -> (tempfile::TempDir, humanlm::roots::Roots) {
    let dir = tempfile::tempdir().unwrap();
    // `instruct` inherits from `humanlm`, so both come along.
    common::copy_prompt_set("humanlm", &dir.path().join("humanlm"));
    common::copy_prompt_set("instruct", &dir.path().join("short"));
    let system = dir.path().join("short/system.jinja");
    std::fs::write(system, "You write HUMAN's next message.").unwrap();
    let roots = humanlm::roots::Roots::new(common::checkpoints(), dir.path());
    (dir, roots)
}

pub(crate) fn sft_config(scenarios: &Path) -> TrainConfig {
    let mut cfg = TrainConfig::sft(
        "smollm2-135m-instruct",
        Data::Scenarios {
            path: scenarios.into(),
        },
    );
    cfg.lr = 3e-3;
    cfg.warmup = 2;
    cfg.seed = 1;
    cfg
}

/// Run `cfg` into `out` to the end; its step events.
fn train_steps(
    cfg: &TrainConfig,
    roots: &humanlm::roots::Roots,
    out: &Path,
    resume: bool,
) -> Vec<humanlm::train::StepEvent> {
    let mut steps = vec![];
    run(cfg, out, roots, resume, None, &mut |e| {
        if let TrainEvent::Step(s) = e {
            steps.push(s.clone())
        }
    })
    .unwrap();
    steps
}

/// Run `cfg` into a fresh `out`, interrupting it (as Ctrl-C does) once step `n` is done; the
/// steps it ran and the run's error.
fn train_until(
    cfg: &TrainConfig,
    roots: &humanlm::roots::Roots,
    out: &Path,
    n: usize,
) -> (Vec<humanlm::train::StepEvent>, String) {
    let cancel = AtomicBool::new(false);
    let mut steps = vec![];
    let err = run(cfg, out, roots, false, Some(&cancel), &mut |e| {
        if let TrainEvent::Step(s) = e {
            steps.push(s.clone());
            if s.step == n {
                cancel.store(true, Ordering::Relaxed);
            }
        }
    })
    .unwrap_err()
    .to_string();
    (steps, err)
}

fn step_losses(steps: &[humanlm::train::StepEvent]) -> Vec<f64> {
    steps.iter().map(|s| s.loss).collect()
}

#[test]
fn sft_overfits_four_scenarios_and_saves_a_loadable_adapter() {
    let data = tempfile::tempdir().unwrap();
    tiny_dataset(data.path());
    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("adapter");
    // The short prompt set: the same replies to learn, a fraction of the prompt to run (the
    // shipped set took 58 of the 60 s budget on a slower machine).
    let (_prompts, roots) = short_prompts();
    let mut cfg = sft_config(data.path());
    cfg.prompts = Some("short".into());
    // Sixteen steps (four passes over the data) at twice the usual rate.
    cfg.steps = 16;
    cfg.lr = 6e-3;
    let losses = step_losses(&train_steps(&cfg, &roots, &out, false));
    assert_eq!(losses.len(), 16);
    let first = losses[0];
    let last = losses[12..].iter().cloned().fold(f64::MAX, f64::min);
    assert!(
        last <= first / 2.0,
        "loss {first:.3} → {last:.3}: {losses:?}"
    );
    let events = std::fs::read_to_string(out.join("events.jsonl")).unwrap();
    assert_eq!(events.lines().count(), 16);
    // The adapter is a checkpoint: PEFT files, its base resolved by name.
    let ckpt = Checkpoint::resolve(out.to_str().unwrap(), &common::checkpoints()).unwrap();
    assert!(matches!(
        ckpt.kind,
        humanlm::model::checkpoint::CheckpointKind::Adapter { .. }
    ));
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg_json["peft_type"], "LORA");
    assert_eq!(cfg_json["r"], 8);
    let keys = candle_core::safetensors::load(
        out.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(keys.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    assert_eq!(keys.len(), 30 * 7 * 2);
}

/// `dtype = bf16` (what a GPU gets by default) trains on the CPU too: the adapter is saved in
/// bf16, the optimizer keeps f32 moments and master weights, and the run may resume in f32.
#[test]
fn sft_in_bf16_keeps_f32_optimizer_state_and_resumes_in_f32() {
    let data = tempfile::tempdir().unwrap();
    tiny_dataset(data.path());
    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("bf16");
    // The short prompt set and eight steps: bf16 matmuls on the CPU are the slow path.
    let (_prompts, roots) = short_prompts();
    let mut cfg = sft_config(data.path());
    cfg.prompts = Some("short".into());
    cfg.dtype = Some("bf16".into());
    cfg.steps = 8;
    cfg.save_every = 4;
    let (first_part, err) = train_until(&cfg, &roots, &out, 4);
    assert!(err.contains("interrupted at step 4"), "{err}");
    let ck = out.join("checkpoint-4");
    let adapter = candle_core::safetensors::load(
        ck.join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(adapter
        .values()
        .all(|t| t.dtype() == candle_core::DType::BF16));
    let opt =
        candle_core::safetensors::load(ck.join("optimizer.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let masters: Vec<_> = opt.keys().filter(|k| k.starts_with("master.")).collect();
    assert_eq!(masters.len(), 30 * 7 * 2);
    assert!(opt.values().all(|t| t.dtype() == candle_core::DType::F32));
    // The same run, moved to f32: accepted, and it continues from step 4.
    let mut f32_cfg = cfg.clone();
    f32_cfg.dtype = Some("f32".into());
    let mut losses = step_losses(&first_part);
    losses.extend(step_losses(&train_steps(&f32_cfg, &roots, &out, true)));
    assert_eq!(losses.len(), 8, "{losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()));
    let (first, last) = (
        losses[0],
        losses[6..].iter().cloned().fold(f64::MAX, f64::min),
    );
    assert!(
        last < first * 0.8,
        "loss {first:.3} → {last:.3}: {losses:?}"
    );
    // A different run is still refused.
    let mut other = f32_cfg.clone();
    other.rank = 4;
    let err = run(&other, &out, &roots, true, None, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("different configuration"), "{err}");
    // A device this build cannot use is named.
    let mut gpu = cfg.clone();
    gpu.device = "cuda:0".into();
    let err = run(
        &gpu,
        &out.with_extension("gpu"),
        &roots,
        false,
        None,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--device 'cuda:0'"), "{err}");
}

/// Mean SFT loss of `model` over the tiny dataset's examples.
fn dataset_loss(
    model: &humanlm::model::Model,
    cfg: &TrainConfig,
    roots: &humanlm::roots::Roots,
) -> f64 {
    let (scenarios, _) = cfg.data.load().unwrap();
    let set =
        humanlm::prompts::PromptSet::load(cfg.prompts.as_deref().unwrap(), &roots.prompts).unwrap();
    let (examples, _) =
        humanlm::train::sft_examples(model, &set, &scenarios, cfg.max_seq, None).unwrap();
    let refs: Vec<&Example> = examples.iter().collect();
    let (loss, _) = sft_loss(model, &refs).unwrap();
    loss.to_scalar::<f32>().unwrap() as f64
}

/// The configuration of the `--full` SFT tests: the short prompt set, every weight trained.
fn full_sft_config(data: &Path, steps: usize) -> TrainConfig {
    let mut cfg = sft_config(data);
    cfg.prompts = Some("short".into());
    cfg.full = true;
    cfg.lr = 1e-4;
    cfg.steps = steps;
    // Saved at the end (and by an interruption) only: each whole checkpoint with its optimizer
    // state is 1.6 GB to write.
    cfg.save_every = 0;
    cfg
}

/// `--full` trains every weight: the loss falls, and the output folder is a whole Hugging Face
/// checkpoint that loads (HF row order, so the plain rotary path) with the trained weights.
#[test]
fn full_sft_saves_a_loadable_checkpoint_of_the_trained_model() {
    let data = tempfile::tempdir().unwrap();
    tiny_dataset(data.path());
    let tmp = tempfile::tempdir().unwrap();
    let (_prompts, roots) = short_prompts();
    let cfg = full_sft_config(data.path(), 3);
    let a = tmp.path().join("a");
    let losses = step_losses(&train_steps(&cfg, &roots, &a, false));
    assert_eq!(losses.len(), 3);
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(a.join(f).is_file(), "{f}");
    }
    assert!(!a.join("adapter_config.json").exists());

    // The folder is a checkpoint, and it is the trained model.
    let ckpt = Checkpoint::resolve(a.to_str().unwrap(), &common::checkpoints()).unwrap();
    assert!(matches!(
        ckpt.kind,
        humanlm::model::checkpoint::CheckpointKind::Hf { .. }
    ));
    let f32_cpu = LoadOptions {
        dtype: Some(DType::F32),
        dequantize: true,
        ..Default::default()
    };
    let trained = dataset_loss(&ckpt.load(&f32_cpu).unwrap(), &cfg, &roots);
    let base = Checkpoint::resolve("smollm2-135m-instruct", &common::checkpoints()).unwrap();
    let before = dataset_loss(&base.load(&f32_cpu).unwrap(), &cfg, &roots);
    // Every example, before and after: the saved weights are the trained ones, read right.
    assert!(
        trained < 0.7 * before,
        "loss over the data {before:.3} → {trained:.3}"
    );
}

/// An interrupted `--full` run resumes to the same bits as one that ran straight through (the
/// optimizer's moments of every weight come back from the checkpoint). On the tiny random Qwen3
/// (an HF folder, so the resumed base loads by the safetensors path): what is tested is the
/// bookkeeping, which is the same at every size, and the default model's 1.6 GB checkpoints
/// would cost most of the budget in writes.
#[test]
fn full_sft_resumes_exactly() {
    let data = tempfile::tempdir().unwrap();
    tiny_dataset(data.path());
    let tmp = tempfile::tempdir().unwrap();
    let (_prompts, roots) = short_prompts();
    // The fixture with room for the prompt and a reply (it was saved with 256 positions).
    let model = tmp.path().join("tiny-qwen3");
    std::fs::create_dir(&model).unwrap();
    for f in std::fs::read_dir(common::fixture("tiny/qwen3")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    config["max_position_embeddings"] = 1024.into();
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let mut cfg = full_sft_config(data.path(), 3);
    cfg.base = model.to_str().unwrap().into();
    cfg.lr = 1e-2;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let losses = step_losses(&train_steps(&cfg, &roots, &a, false));
    assert_eq!(losses.len(), 3);
    // Stopped after step 2, then resumed.
    let (_, err) = train_until(&cfg, &roots, &b, 2);
    assert!(err.contains("interrupted at step 2"), "{err}");
    run(&cfg, &b, &roots, true, None, &mut |_| {}).unwrap();
    let load = |d: &Path| {
        candle_core::safetensors::load(d.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap()
    };
    let (wa, wb) = (load(&a), load(&b));
    assert_eq!(wa.len(), wb.len());
    for (k, t) in &wa {
        let d: f32 = (t - &wb[k])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0, "{k} differs after the resume");
    }
    // Every weight trained, so the resumed weights are not merely the base's.
    let base = candle_core::safetensors::load(
        common::fixture("tiny/qwen3").join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let moved = base.iter().filter(|(k, t)| {
        let d: f32 = (t.to_dtype(DType::F32).unwrap()
            - wa[k.as_str()].to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
        d > 0.0
    });
    assert_eq!(moved.count(), base.len(), "losses {losses:?}");
}

/// GRPO with `--full` keeps a frozen copy of the base as its reference (there is no adapter to
/// switch off): KL starts at zero and stays a finite, non-negative estimate.
#[test]
fn full_grpo_measures_kl_against_a_frozen_copy() {
    let data = tempfile::tempdir().unwrap();
    tiny_dataset(data.path());
    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("full-grpo");
    let (_prompts, roots) = short_prompts();
    // Eight-token rollouts: what is tested is the reference copy, not what the policy learns.
    let mut cfg = says_human_config(data.path(), 8);
    // Two rollouts a prompt: enough for an advantage, half the passes of four.
    if let Method::Grpo(p) = &mut cfg.method {
        p.n = 2;
    }
    cfg.prompts = Some("short".into());
    cfg.full = true;
    cfg.steps = 2;
    cfg.lr = 1e-4;
    cfg.warmup = 0;
    let kls: Vec<f64> = train_steps(&cfg, &roots, &out, false)
        .iter()
        .map(|s| s.kl.unwrap())
        .collect();
    assert_eq!(kls.len(), 2);
    assert!(kls[0].abs() < 1e-6, "{kls:?}");
    assert!(kls[1].is_finite() && kls[1] >= 0.0, "{kls:?}");
    assert!(out.join("model.safetensors").is_file());
}

/// Interrupted after two steps and resumed, a run ends bit-identical to an uninterrupted one.
#[test]
fn resume_continues_exactly() {
    let data = tempfile::tempdir().unwrap();
    tiny_dataset(data.path());
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = sft_config(data.path());
    cfg.steps = 4;
    cfg.targets = vec!["q_proj".into(), "v_proj".into()];
    // Dropout masks come from a generator seeded per micro-batch, so they repeat on resume.
    cfg.dropout = 0.1;
    let straight = tmp.path().join("straight");
    run(&cfg, &straight, &common::roots(), false, None, &mut |_| {}).unwrap();

    let resumed = tmp.path().join("resumed");
    let (_, e) = train_until(&cfg, &common::roots(), &resumed, 2);
    assert!(e.contains("interrupted at step 2"), "{e}");
    // Without --resume the folder is not overwritten.
    let e = run(&cfg, &resumed, &common::roots(), false, None, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("--resume"), "{e}");
    let steps: Vec<usize> = train_steps(&cfg, &common::roots(), &resumed, true)
        .iter()
        .map(|s| s.step)
        .collect();
    assert_eq!(steps, [3, 4]);
    let load = |p: &Path| {
        candle_core::safetensors::load(
            p.join("adapter_model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (a, b) = (load(&straight), load(&resumed));
    assert_eq!(a.len(), b.len());
    for (k, x) in &a {
        let y = &b[k];
        let d = (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{k} differs by {d}");
    }
    // A different configuration does not resume silently.
    let mut other = cfg.clone();
    other.lr = 1e-4;
    let e = run(&other, &resumed, &common::roots(), true, None, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("different configuration"), "{e}");
}

#[test]
fn no_usable_rows_and_adapter_bases_are_refused() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("x.toml"),
        "id = \"x\"\ndomain = \"news\"\ntitle = \"t\"\n[[turns]]\nauthor = \"a\"\ntext = \"Hi\"\n[target]\nauthor = \"b\"\n",
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let cfg = sft_config(data.path());
    let e = run(
        &cfg,
        &out.path().join("a"),
        &common::roots(),
        false,
        None,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("no usable training example") && e.contains("no reference reply"),
        "{e}"
    );
    let mut cfg = sft_config(data.path());
    cfg.base = common::fixture("tiny/qwen3-lora").display().to_string();
    let e = run(
        &cfg,
        &out.path().join("b"),
        &common::roots(),
        false,
        None,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("adapter"), "{e}");
}

/// GRPO runs the prompt once per group and lets every rollout attend to its keys and values;
/// the log-probabilities and the LoRA gradients equal those of running each full sequence
/// (float64, tiny random llama).
#[test]
fn a_shared_prompt_gives_the_same_logits_and_gradients() {
    use candle_core::{IndexOp, D};
    let (model, vars) = tiny_f64_with_lora();
    let dec = &model.decoder;
    let dev = &candle_core::Device::Cpu;
    let prompt: Vec<u32> = vec![5, 17, 42, 9, 100, 3];
    let rows: [Vec<u32>; 2] = [vec![77, 8, 150, 4], vec![12, 9, 9, 31]];
    let picked = |logits: &Tensor, labels: &[u32]| -> Tensor {
        let lp = candle_nn::ops::log_softmax(logits, D::Minus1).unwrap();
        let l = Tensor::new(labels, dev).unwrap().unsqueeze(1).unwrap();
        lp.gather(&l, 1).unwrap().squeeze(1).unwrap()
    };
    // Each sequence on its own.
    let mut separate = vec![];
    for r in &rows {
        let ids: Vec<u32> = prompt.iter().chain(r).copied().collect();
        let input = Tensor::new(&ids[..ids.len() - 1], dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = dec
            .forward_from(&input, None, humanlm::model::Ops::Diff, prompt.len() - 1)
            .unwrap()
            .i(0)
            .unwrap();
        separate.push(picked(&logits, r));
    }
    // The prompt once, both rows after it.
    let (first, prefix) = dec
        .prefix(
            &Tensor::new(prompt.as_slice(), dev)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        )
        .unwrap();
    let input: Vec<u32> = rows
        .iter()
        .flat_map(|r| r[..r.len() - 1].to_vec())
        .collect();
    let input = Tensor::from_vec(input, (2, 3), dev).unwrap();
    let rest = dec.forward_after(&input, &prefix, 0).unwrap();
    let mut shared = vec![];
    for (i, r) in rows.iter().enumerate() {
        let logits = Tensor::cat(&[&first, &rest.i(i).unwrap()], 0).unwrap();
        shared.push(picked(&logits, r));
    }
    let total = |v: &[Tensor]| {
        v.iter().fold(Tensor::new(0f64, dev).unwrap(), |acc, t| {
            (acc + t.sum_all().unwrap()).unwrap()
        })
    };
    for (a, b) in separate.iter().zip(&shared) {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(
            d.to_scalar::<f64>().unwrap() < 1e-10,
            "log-probabilities differ"
        );
    }
    let (ga, gb) = (
        total(&separate).backward().unwrap(),
        total(&shared).backward().unwrap(),
    );
    let mut worst = 0.0f64;
    for v in &vars {
        let (x, y) = (ga.get(v).unwrap(), gb.get(v).unwrap());
        let d = (x - y).unwrap().abs().unwrap().max_all().unwrap();
        let scale = x
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        worst = worst.max(d.to_scalar::<f64>().unwrap() / scale.max(1e-12));
    }
    assert!(
        worst < 1e-9,
        "LoRA gradients differ by {worst:e} (relative)"
    );
}

fn grpo_config(scenarios: &Path, params: GrpoParams) -> TrainConfig {
    let mut cfg = TrainConfig::new(
        Method::Grpo(params),
        "smollm2-135m-instruct",
        Data::Scenarios {
            path: scenarios.into(),
        },
    );
    cfg.targets = vec!["q_proj".into(), "v_proj".into()];
    cfg.seed = 3;
    // One prompt a step keeps these runs short (GRPO's default is one per state).
    cfg.batch = 1;
    cfg
}

/// GRPO on the replies only, rewarded by saying "human" within `tokens` tokens.
fn says_human_config(scenarios: &Path, tokens: usize) -> TrainConfig {
    says_config(scenarios, "human", tokens)
}

/// GRPO on the replies only, rewarded by saying `word` within `tokens` tokens.
pub(crate) fn says_config(scenarios: &Path, word: &str, tokens: usize) -> TrainConfig {
    grpo_config(
        scenarios,
        GrpoParams {
            states: vec!["response".into()],
            max_new_tokens: tokens,
            reward: RewardSpec::Contains {
                word: word.into(),
                max_tokens: tokens,
            },
            ..Default::default()
        },
    )
}

/// GRPO with a verifiable reward (the reply says "human" within 24 tokens — the default model
/// does so about a third of the time) raises the mean reward clearly in a short CPU run,
/// starting from zero KL (the adapter starts as the identity). Rollouts are seeded, so the run
/// is deterministic on a given machine.
#[test]
fn grpo_raises_a_verifiable_reward() {
    let data = tempfile::tempdir().unwrap();
    tiny_dataset(data.path());
    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("grpo");
    let (_prompts, roots) = short_prompts();
    let mut cfg = says_human_config(data.path(), 24);
    cfg.prompts = Some("short".into());
    cfg.steps = STEPS;
    cfg.batch = 1;
    cfg.lr = 3e-3;
    cfg.warmup = 1;
    // Five steps: the reward has clearly risen by then (six took 59 of the 60 s budget on a
    // slower machine, eight 50 s on a faster one).
    const STEPS: usize = 5;
    let mut events = vec![];
    run(&cfg, &out, &roots, false, None, &mut |e| {
        if let TrainEvent::Step(s) = e {
            eprintln!(
                "step {} reward {:.3} kl {:.5} loss {:.4}",
                s.step,
                s.reward.as_ref().unwrap().mean,
                s.kl.unwrap(),
                s.loss
            );
            events.push(s.clone())
        }
    })
    .unwrap();
    assert_eq!(events.len(), STEPS);
    let reward = |e: &humanlm::train::StepEvent| e.reward.as_ref().unwrap().mean;
    // A step has only 4 rollouts, so single steps are noisy: the start (the first two steps,
    // before the adapter has moved far) against the whole second half (12 rollouts).
    let first: f64 = events[..2].iter().map(reward).sum::<f64>() / 2.0;
    let half = &events[STEPS / 2..];
    let last: f64 = half.iter().map(reward).sum::<f64>() / half.len() as f64;
    assert!(
        last >= first + 0.25,
        "mean reward {first:.3} → {last:.3}: {:?}",
        events.iter().map(reward).collect::<Vec<_>>()
    );
    assert!(
        events[0].kl.unwrap() < 1e-6,
        "KL at the start: {:?}",
        events[0].kl
    );
    assert!(events[STEPS - 1].kl.unwrap() > 0.0);
    assert!(events[0].reward_by_state.contains_key("response"));
    assert!(!events[0].rollouts.is_empty());
    // The event file holds the same steps, for the TUI to tail.
    assert_eq!(humanlm::train::read_events(&out).len(), STEPS);
}

/// A short GRPO run in the recipe's shape: two states, both in each step's batch of two; two
/// optimizer updates of one prompt each; an entropy bonus; each step's time split into
/// rollouts, judging and updates. A checkpoint whose config still holds the older
/// `mini_batches` resumes when the count maps onto whole prompts and is refused otherwise.
#[test]
fn grpo_mixes_states_in_mini_batches_with_an_entropy_bonus() {
    let data = tempfile::tempdir().unwrap();
    tiny_dataset(data.path());
    let out = tempfile::tempdir().unwrap();
    let out = out.path().join("grpo");
    let (_prompts, roots) = short_prompts();
    let mut cfg = grpo_config(
        data.path(),
        GrpoParams {
            states: vec!["stance".into(), "response".into()],
            max_new_tokens: 4,
            ppo_mini_batch: 1,
            entropy_coef: 0.01,
            reward: RewardSpec::Contains {
                word: "the".into(),
                max_tokens: 4,
            },
            ..Default::default()
        },
    );
    cfg.prompts = Some("short".into());
    cfg.steps = 2;
    cfg.batch = 2;
    cfg.warmup = 0;
    let steps = train_steps(&cfg, &roots, &out, false);
    assert_eq!(steps.len(), 2);
    for s in &steps {
        let states: Vec<&str> = s.reward_by_state.keys().map(|k| k.as_str()).collect();
        assert_eq!(states, ["response", "stance"], "step {}", s.step);
        assert!(s.loss.is_finite() && s.grad_norm.is_finite(), "{s:?}");
        for t in [s.rollout_s, s.judge_s, s.update_s] {
            assert!(t.is_some_and(|t| t >= 0.0), "{s:?}");
        }
        assert!(
            s.rollout_s.unwrap() > 0.0 && s.update_s.unwrap() > 0.0,
            "{s:?}"
        );
    }
    // The run's last checkpoint as a build before --ppo-mini-batch saved it: two updates of a
    // batch of two read as one prompt each, the same run (nothing is left to train).
    let state = out.join("checkpoint-2/trainer_state.json");
    let write_old = |mini_batches: usize| {
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
        let c = v["config"].as_object_mut().unwrap();
        c.remove("ppo_mini_batch");
        c.remove("entropy_coef");
        c.insert("mini_batches".into(), mini_batches.into());
        std::fs::write(&state, serde_json::to_string(&v).unwrap()).unwrap();
    };
    let old = GrpoParams {
        entropy_coef: 0.0,
        ..match &cfg.method {
            Method::Grpo(g) => g.clone(),
            _ => unreachable!(),
        }
    };
    let mut old_cfg = cfg.clone();
    old_cfg.method = Method::Grpo(old);
    write_old(2);
    assert!(train_steps(&old_cfg, &roots, &out, true).is_empty());
    // Three updates of two prompts split a group: refused in one line.
    write_old(3);
    let e = run(&old_cfg, &out, &roots, true, None, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("--mini-batches 3") && !e.contains('\n'), "{e}");
}

/// A judge that cannot be reached stops the run with a checkpoint it can resume from.
#[test]
fn grpo_stops_resumably_when_the_judge_fails() {
    let data = tempfile::tempdir().unwrap();
    tiny_dataset(data.path());
    let tmp = tempfile::tempdir().unwrap();
    // A port nothing listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let judge = tmp.path().join("judge.toml");
    std::fs::write(
        &judge,
        format!(
            "kind = \"rubric\"\ncheckpoint = \"endpoint:http://127.0.0.1:{port}/v1#judge\"\nretries = 1\nbackoff_s = 0.0\n"
        ),
    )
    .unwrap();
    let out = tmp.path().join("grpo");
    let mut cfg = grpo_config(
        data.path(),
        GrpoParams {
            states: vec!["stance".into()],
            max_new_tokens: 8,
            reward: RewardSpec::Judge {
                config: Some(judge),
            },
            ..Default::default()
        },
    );
    cfg.steps = 3;
    let e = run(&cfg, &out, &common::roots(), false, None, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("reward failed at step 1") && e.contains("--resume"),
        "{e}"
    );
    assert!(out.join("checkpoint-0/trainer_state.json").is_file());
}

/// `--data` trains straight from a HUMANUAL file: its usable rows become examples and the
/// unusable ones are reported, through the real binary. The rank given on the command line gets
/// the same alpha (so the same adapter scale) as the workbench's Train form gives it.
#[test]
fn sft_from_a_humanual_file() {
    let out = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_humanlm"))
        .args(["--checkpoints-dir"])
        .arg(common::checkpoints())
        .args([
            "train",
            "sft",
            "--checkpoint",
            "smollm2-135m-instruct",
            "--data",
        ])
        .arg(common::fixture("humanual/rows.jsonl"))
        .args([
            "--domain",
            "opinion",
            "--steps",
            "1",
            "--targets",
            "q_proj",
            "--rank",
            "4",
            "--out",
        ])
        .arg(out.path().join("a"))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert!(run.status.success(), "{stdout}\n{stderr}");
    // rows.jsonl: an empty thread, and a chat row whose persona fails the recipe's persona
    // filter (one list item; --min-persona-items defaults to 10).
    assert!(
        stdout.contains("3 training examples; skipped 2"),
        "{stdout}"
    );
    assert!(out.path().join("a/adapter_model.safetensors").is_file());
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("a/checkpoint-1/trainer_state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["config"]["data"]["kind"], "humanual");
    assert_eq!(state["config"]["data"]["min_persona_items"], 10);
    let mut form = crate::tui::app(120, 40);
    form.train.form.base = "smollm2-135m-instruct".into();
    form.train.form.rank = "4".into();
    let (tui, ..) = humanlm::tui::update::train_plan(&form).unwrap();
    assert_eq!(state["config"]["rank"], 4);
    assert_eq!(state["config"]["alpha"].as_f64(), Some(tui.alpha));
    assert_eq!(tui.alpha / tui.rank as f64, 2.0);
    // A domain it does not know is refused in one line.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_humanlm"))
        .args([
            "train",
            "sft",
            "--checkpoint",
            "smollm2-135m-instruct",
            "--data",
        ])
        .arg(common::fixture("humanual/rows.jsonl"))
        .args(["--domain", "sports", "--out"])
        .arg(out.path().join("b"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2));
    assert!(err.contains("unknown domain 'sports'"), "{err}");
}

/// SFT-think: the judge's model writes a trace per scenario, cached in the run folder (a resumed
/// run asks for none again), and the target becomes the trace, `</think>` and the tagged reply.
#[test]
fn sft_think_writes_caches_and_trains_on_traces() {
    let data = tempfile::tempdir().unwrap();
    tiny_dataset(data.path());
    for id in ["tea", "bikes"] {
        std::fs::remove_file(data.path().join(format!("{id}.toml"))).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let judge = tmp.path().join("writer.toml");
    std::fs::write(
        &judge,
        "kind = \"rubric\"\ncheckpoint = \"smollm2-135m-instruct\"\nretries = 1\nbackoff_s = 0.0\n[sampling]\ntemperature = 0.0\nmax_tokens = 48\n",
    )
    .unwrap();
    let mut cfg = TrainConfig::new(
        Method::Sft {
            think: Some(humanlm::train::ThinkConfig {
                judge: judge.clone(),
            }),
        },
        "smollm2-135m-instruct",
        Data::Scenarios {
            path: data.path().into(),
        },
    );
    // The instruct set pre-fills the reply's tag, leaving no room for a thinking block.
    let out = tmp.path().join("think");
    let e = run(&cfg, &out, &common::roots(), false, None, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("pre-fills"), "{e}");
    std::fs::remove_dir_all(&out).unwrap();
    cfg.prompts = Some("humanlm".into());
    cfg.targets = vec!["q_proj".into()];
    cfg.steps = 2;
    cfg.save_every = 1;
    let stop = AtomicBool::new(false);
    let mut notes = 0;
    let e = run(
        &cfg,
        &out,
        &common::roots(),
        false,
        Some(&stop),
        &mut |e| match e {
            TrainEvent::Note(n) if n.contains("thinking trace") => notes += 1,
            TrainEvent::Step(_) => stop.store(true, Ordering::Relaxed),
            _ => {}
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("interrupted at step 1"), "{e}");
    assert_eq!(notes, 2);
    let traces = std::fs::read_to_string(out.join("traces.jsonl")).unwrap();
    assert_eq!(traces.lines().count(), 2);
    for l in traces.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let t = v["trace"].as_str().unwrap();
        assert!(!t.trim().is_empty() && !t.contains("<think>"), "{t}");
    }
    // Resumed: the cached traces are used, none is asked for again.
    let mut notes = 0;
    run(&cfg, &out, &common::roots(), true, None, &mut |e| {
        if let TrainEvent::Note(n) = e {
            notes += usize::from(n.contains("thinking trace"));
        }
    })
    .unwrap();
    assert_eq!(notes, 0);
    // The examples target the trace then the reply.
    let model = common::default_model();
    let set =
        humanlm::prompts::PromptSet::load("humanlm", &common::root().join("prompts")).unwrap();
    let scenarios = Data::Scenarios {
        path: data.path().into(),
    }
    .load()
    .unwrap()
    .0;
    let by_id: std::collections::HashMap<String, String> = traces
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["scenario"].as_str().unwrap().to_string(),
                v["trace"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let (ex, _) =
        humanlm::train::sft_examples(model, &set, &scenarios, 4096, Some(&by_id)).unwrap();
    assert_eq!(ex.len(), 2);
    // The prompt ends with the open <think>; the target continues it (train_targets.rs checks
    // the exact ids).
    let text = model.tokenizer.decode(&ex[0].target).unwrap();
    assert!(
        text.starts_with('\n')
            && !text.contains("<think>")
            && text.contains("\n</think>\n<response>\n"),
        "{text}"
    );
}
