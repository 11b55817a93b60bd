//! What a run reports: one [`StepEvent`] a step, appended to `events.jsonl` (the TUI tails it),
//! and the [`TrainEvent`]s a caller sees as the run goes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Reward statistics over a set of rollouts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RewardStats {
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl RewardStats {
    pub fn of(xs: &[f64]) -> RewardStats {
        let n = xs.len();
        if n == 0 {
            return RewardStats::default();
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        RewardStats {
            mean,
            std: var.sqrt(),
            n,
        }
    }
}

/// One rollout shown in the events (and the TUI): what was written and what it scored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutSample {
    pub scenario: String,
    pub state: String,
    pub text: String,
    pub reward: f64,
}

/// One line of `events.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepEvent {
    pub step: usize,
    pub steps: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Tokens the gradient passes ran on (GRPO: rollout tokens).
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub eta_s: f64,
    /// GRPO: reward over every rollout of the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<RewardStats>,
    /// GRPO: reward per state (the six states and `response`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reward_by_state: BTreeMap<String, RewardStats>,
    /// GRPO: mean low-variance KL estimate against the base (adapters off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    /// GRPO: a few rollouts with their rewards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<RolloutSample>,
    /// GRPO: seconds the step spent sampling rollouts. None in SFT and in events written
    /// before the step's time was split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_s: Option<f64>,
    /// GRPO: seconds the step spent scoring rollouts (the reward's calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_s: Option<f64>,
    /// Seconds of the gradient passes and optimizer updates (GRPO: with the reference's and
    /// behaviour log-probabilities; SFT: the whole step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_s: Option<f64>,
}

/// One validation pass, a line of `events.jsonl` tagged `"event": "val"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename = "val")]
pub struct ValEvent {
    /// Steps taken when the policy was validated (0: before the first).
    pub step: usize,
    pub steps: usize,
    /// The eval run folder of this pass.
    pub run: std::path::PathBuf,
    pub scenarios: usize,
    /// Scenario means ×100 with bootstrap 95% intervals: the judged reply (`response`), each
    /// state when GRPO trains states, and the similarity measures.
    pub metrics: BTreeMap<String, crate::eval::stats::Estimate>,
    /// Plain SFT: held-out loss per target token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// What the best step is chosen by (`loss`, lower is better; `response`, higher) and its
    /// value here.
    pub criterion: String,
    pub value: f64,
    /// The best step so far, this one included.
    pub best_step: usize,
    /// Judgements that failed after their retries (scored 0; the eval run can be resumed).
    #[serde(default)]
    pub judge_failures: usize,
    pub secs: f64,
}

/// The lines of a run's `events.jsonl` that parse as `T` (one being written is skipped);
/// validation lines are told apart from steps by their `event` tag.
fn read_lines<T: serde::de::DeserializeOwned>(out: &Path, val: bool) -> Vec<T> {
    let text = std::fs::read_to_string(out.join("events.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("event").is_some() == val)
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}

/// Read a run's step events.
pub fn read_events(out: &Path) -> Vec<StepEvent> {
    let mut events = vec![];
    for ev in read_lines(out, false) {
        push_event(&mut events, ev);
    }
    events
}

/// Read a run's validation events; as with steps, a resumed run's repeat replaces the
/// interrupted run's line for the same step.
pub fn read_val_events(out: &Path) -> Vec<ValEvent> {
    let mut events: Vec<ValEvent> = vec![];
    for ev in read_lines::<ValEvent>(out, true) {
        push_val_event(&mut events, ev);
    }
    events
}

/// Append a validation pass to a run's history, replacing an interrupted run's passes at or
/// after its step.
pub fn push_val_event(events: &mut Vec<ValEvent>, ev: ValEvent) {
    events.retain(|e| e.step < ev.step);
    events.push(ev);
}

/// Append a step to a run's history. A resumed run repeats the steps after its last checkpoint,
/// and the repeat replaces what the interrupted run logged for them.
pub fn push_event(events: &mut Vec<StepEvent>, ev: StepEvent) {
    events.retain(|e| e.step < ev.step);
    events.push(ev);
}

/// What a training run reports as it goes.
pub enum TrainEvent<'a> {
    Data {
        examples: usize,
        skipped: &'a [String],
    },
    /// Something worth a line (e.g. traces being written).
    Note(&'a str),
    Step(&'a StepEvent),
    Val(&'a ValEvent),
    Saved(&'a Path),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_runs_repeated_steps_replace_the_interrupted_ones() {
        let dir = tempfile::tempdir().unwrap();
        let line = |step: usize, loss: f64| {
            format!(
                r#"{{"step":{step},"steps":5,"loss":{loss},"lr":0.1,"grad_norm":1.0,"tokens":3,"tokens_per_s":1.0,"eta_s":0.0}}"#
            )
        };
        // Stopped after step 3 with checkpoint-1; the resume ran 2..5 again.
        let text = [
            line(1, 9.0),
            line(2, 8.0),
            line(3, 7.0),
            line(2, 8.5),
            line(3, 7.5),
            "{\"step\": 4, \"truncated".into(),
            line(4, 6.5),
            line(5, 6.0),
        ]
        .join("\n");
        std::fs::write(dir.path().join("events.jsonl"), text).unwrap();
        let events = read_events(dir.path());
        let got: Vec<(usize, f64)> = events.iter().map(|e| (e.step, e.loss)).collect();
        assert_eq!(got, [(1, 9.0), (2, 8.5), (3, 7.5), (4, 6.5), (5, 6.0)]);
    }
}
