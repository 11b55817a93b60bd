//! `humanlm gpu-check` on its CPU path at tiny shapes: the same binary and code the GPU run uses,
//! with the "device" being the CPU in bf16 against the CPU in f32, so parity is a real check
//! (bf16 must differ from f32, but only within the tolerance).

use crate::common;

use serde_json::Value;
use std::process::Command;

fn gpu_check(args: &[&str]) -> (i32, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_humanlm"))
        .arg("gpu-check")
        .args(args)
        .env("HUMANLM_CHECKPOINTS", common::checkpoints())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), json, stderr)
}

const TINY: &[&str] = &[
    "--device",
    "cpu",
    "--dtype",
    "bf16",
    "--shapes",
    "tiny-qwen3",
    "--prompt",
    "32",
    "--batches",
    "1,2",
    "--decode",
    "8",
    "--train-batch",
    "2x32",
    "--train-steps",
    "2",
    "--repeats",
    "1",
];

fn num(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

fn check_parity(p: &Value, what: &str) {
    assert_eq!(p["pass"], Value::Bool(true), "{what}: {p}");
    let rel = num(&p["rel_diff"], what);
    // bf16 against f32 must differ (else the candidate did not run in bf16) and stay close.
    assert!(
        rel > 0.0 && rel <= num(&p["tolerance_rel"], what),
        "{what}: {p}"
    );
    let positions = num(&p["positions"], what);
    assert!(positions >= 16.0, "{what}: {p}");
    assert!(
        num(&p["top1_agree"], what) >= positions * 0.75,
        "{what}: {p}"
    );
    assert_eq!(p["all_finite"], Value::Bool(true), "{what}: {p}");
}

#[test]
fn cpu_path_reports_parity_and_speed_at_tiny_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("summary.json");
    let mut args = TINY.to_vec();
    let out_arg = out_file.to_str().unwrap();
    args.extend(["--out", out_arg, "--meta", "runner=test"]);
    let (code, v, stderr) = gpu_check(&args);
    assert_eq!(code, 0, "{stderr}");

    // Provenance.
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["dtype"], "bf16");
    assert_eq!(v["meta"]["runner"], "test");
    let candle = v["candle_version"].as_str().unwrap();
    assert!(candle.starts_with("0."), "candle version {candle}");
    assert!(v["command"].as_str().unwrap().contains("gpu-check"));
    assert_eq!(v["parity_pass"], Value::Bool(true));

    // Parity: the default checkpoint (quantized, candle's kernels in bf16) and a seeded random
    // Qwen3 (dense), each against the CPU f32 path.
    check_parity(&v["parity"]["default_model"], "default model");
    assert_eq!(v["parity"]["default_model"]["weights"], "Q4_1");
    check_parity(&v["parity"]["random_model"], "random model");

    // Throughput: every batch size, finite and positive.
    let t = &v["throughput"]["tiny-qwen3"];
    assert!(t.get("error").is_none(), "{t}");
    assert_eq!(num(&t["parameters"], "parameters"), 557_824.0);
    for kind in ["prefill", "decode"] {
        let rows = t["inference"][kind].as_array().unwrap();
        let batches: Vec<u64> = rows.iter().map(|r| r["batch"].as_u64().unwrap()).collect();
        assert_eq!(batches, [1, 2], "{kind}");
        for r in rows {
            let tps = num(&r["tok_per_s"], kind);
            assert!(tps.is_finite() && tps > 0.0, "{kind}: {r}");
        }
    }
    // The anchor: stock candle-transformers on the same weights is the same model (bf16 here:
    // the two differ only in rounding) and is measured at every batch size too.
    let stock = &t["stock_candle"];
    assert!(stock.get("error").is_none(), "{stock}");
    let agree = &stock["agreement_with_ours"];
    assert!(num(&agree["rel_diff"], "agreement") < 0.08, "{agree}");
    for kind in ["prefill", "decode"] {
        let rows = stock[kind].as_array().unwrap();
        assert_eq!(rows.len(), 2, "stock {kind}: {stock}");
        assert!(rows.iter().all(|r| num(&r["tok_per_s"], kind) > 0.0));
    }
    let train = &t["train"];
    assert!(train.get("error").is_none(), "{train}");
    let tps = num(&train["tok_per_s"], "train");
    assert!(tps.is_finite() && tps > 0.0, "{train}");
    assert_eq!(train["steps"], 2);
    // LoRA r=16 on 7 projections × 2 layers, r·(in+out) each: q 128→128, k and v 128→64,
    // o 128→128, gate and up 128→256, down 256→128.
    let per_layer = 16 * ((128 + 128) * 2 + (128 + 64) * 2 + (128 + 256) * 3);
    assert_eq!(
        num(&train["trainable_parameters"], "trainable"),
        (2 * per_layer) as f64
    );
    // Random weights predict nearly uniformly: the first loss is close to ln(vocab).
    let losses = train["losses"].as_array().unwrap();
    assert_eq!(losses.len(), 3);
    let first = num(&losses[0], "loss");
    assert!((first - (1024f64).ln()).abs() < 0.3, "first loss {first}");

    // Targets and anchors are carried for comparison; tiny shapes meet none of them.
    let targets = v["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 6);
    assert!(targets.iter().all(|x| x["measured_tok_per_s"].is_null()));
    assert_eq!(
        v["anchors"]["pytorch_2.11_transformers_5.17"]["qwen3-8b"]["lora_train"],
        6691.0
    );

    // The file written along the way holds the same summary.
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(saved, v);
}

#[test]
fn a_failed_parity_check_exits_non_zero_with_the_summary() {
    // bf16 cannot match f32 to 1e-6: the check must say so (training skipped: 0x0).
    let mut args: Vec<&str> = TINY.to_vec();
    let at = args.iter().position(|a| *a == "--train-batch").unwrap();
    args[at + 1] = "0x0";
    args.extend(["--tolerance", "1e-6", "--no-default-model"]);
    let (code, v, stderr) = gpu_check(&args);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("parity check failed"), "{stderr}");
    assert_eq!(v["parity_pass"], Value::Bool(false));
    assert_eq!(v["parity"]["random_model"]["pass"], Value::Bool(false));
    assert!(v["parity"]["default_model"]["skipped"].is_string());
    assert!(v["throughput"]["tiny-qwen3"]["train"]["skipped"].is_string());
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    for (args, needle) in [
        (vec!["--device", "cpu", "--shapes", "qwen3-9b"], "qwen3-9b"),
        (
            vec!["--device", "cpu", "--shapes", "/nonexistent/config.json"],
            "/nonexistent/config.json",
        ),
        (vec!["--device", "cpu", "--dtype", "f8"], "--dtype 'f8'"),
        (
            vec!["--device", "cpu", "--train-batch", "4x1"],
            "--train-batch 4x1",
        ),
        (
            vec!["--device", "cpu", "--checkpoint", "/nonexistent.gguf"],
            "/nonexistent.gguf",
        ),
        (
            vec![
                "--device",
                "cpu",
                "--shapes",
                "tiny-qwen3",
                "--prompt",
                "4000",
            ],
            "exceeds",
        ),
    ] {
        let (code, v, stderr) = gpu_check(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(v.is_null(), "{args:?}: printed a summary");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let (code, _, stderr) = gpu_check(&["--train-batch", "4by512"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("SEQUENCESxTOKENS"), "{stderr}");
}
