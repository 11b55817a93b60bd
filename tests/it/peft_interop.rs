//! PEFT interoperability: an adapter our trainer saved gives, in our runtime, the logits Python
//! `peft` computes with it; and an adapter `peft` saved does too. References made by
//! scripts/reference/peft_interop.py.

use crate::common;

use candle_core::{DType, Device, IndexOp, Tensor};
use humanlm::model::lora::Adapter;
use humanlm::model::weights::LoadOptions;
use humanlm::model::Ops;

/// Largest difference from the reference's top and probe logits (and logsumexp) at each position.
fn worst_gap(adapter: Option<&str>, fixture: &str) -> f32 {
    let mut model = common::load(
        "smollm2-135m-instruct",
        LoadOptions {
            dequantize: true,
            dtype: Some(DType::F32),
            ..Default::default()
        },
    );
    if let Some(name) = adapter {
        let dir = common::fixture(&format!("peft/{name}"));
        let a = Adapter::load(&dir, name, &Device::Cpu, DType::F32).unwrap();
        model.decoder.attach_adapter(&a).unwrap();
        model.decoder.set_active_adapter(Some(name)).unwrap();
    }
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture(&format!("peft/{fixture}_reference.json")))
            .unwrap(),
    )
    .unwrap();
    let ids: Vec<u32> = fx["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let probes: Vec<usize> = fx["probe_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model
        .decoder
        .forward(&input, None, Ops::Diff, true)
        .unwrap()
        .i(0)
        .unwrap();
    let mut worst = 0f32;
    for (pos, want) in fx["positions"].as_object().unwrap() {
        let row: Vec<f32> = logits
            .i(pos.parse::<usize>().unwrap())
            .unwrap()
            .to_vec1()
            .unwrap();
        let f = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        };
        for (id, w) in want["top_ids"]
            .as_array()
            .unwrap()
            .iter()
            .zip(f(&want["top_logits"]))
        {
            worst = worst.max((row[id.as_u64().unwrap() as usize] - w).abs());
        }
        for (id, w) in probes.iter().zip(f(&want["probe_logits"])) {
            worst = worst.max((row[*id] - w).abs());
        }
        let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = m + row.iter().map(|x| (*x as f64 - m).exp()).sum::<f64>().ln();
        worst = worst.max((lse - want["logsumexp"].as_f64().unwrap()).abs() as f32);
    }
    worst
}

#[test]
fn our_adapter_gives_peft_logits() {
    let with = worst_gap(Some("ours"), "ours");
    let without = worst_gap(None, "ours");
    assert!(with < 2e-3, "our adapter vs peft: max |Δlogit| {with}");
    // The check has teeth: without the adapter the gap is far larger.
    assert!(
        without > 20.0 * with.max(1e-4),
        "base {without} vs adapted {with}"
    );
}

#[test]
fn a_peft_adapter_gives_peft_logits_here() {
    let with = worst_gap(Some("theirs"), "theirs");
    let without = worst_gap(None, "theirs");
    assert!(
        with < 2e-3,
        "peft adapter in ours vs peft: max |Δlogit| {with}"
    );
    assert!(
        without > 20.0 * with.max(1e-4),
        "base {without} vs adapted {with}"
    );
}
