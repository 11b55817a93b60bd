//! Compare (`c`): one scenario under two or three checkpoint/prompt-set sides, and the blind
//! rating of their replies (appended to `runs/ratings.jsonl`).

use super::{cancel, cycle, new_job};
use crate::sim::SamplingChoice;
use crate::tui::action::{Effect, SimRequest};
use crate::tui::app::*;
use crate::tui::keys::Cmd;
use crate::tui::text;

/// The first sides: the checkpoint in use under the set in use and under another set.
pub(super) fn init_compare(app: &mut App) {
    let other = app
        .sets
        .iter()
        .find(|s| s.name != app.set && s.error.is_none())
        .map_or_else(|| app.set.clone(), |s| s.name.clone());
    app.compare.sides = vec![
        Side {
            checkpoint: app.checkpoint.clone(),
            set: app.set.clone(),
        },
        Side {
            checkpoint: app.checkpoint.clone(),
            set: other,
        },
    ];
    app.compare.selected = 0;
}

/// A command on Compare: choose the sides and run them, or rate the replies blind.
pub(super) fn compare_cmd(app: &mut App, cmd: Cmd, fx: &mut Vec<Effect>) {
    if let Some(b) = app.compare.blind.as_mut() {
        let n = b.order.len().max(1);
        let (mut reveal, mut incomplete) = (false, false);
        match cmd {
            Cmd::Left => {
                b.focus = (b.focus + n - 1) % n;
                b.field = 0;
            }
            Cmd::Right => {
                b.focus = (b.focus + 1) % n;
                b.field = 0;
            }
            Cmd::NextPane | Cmd::PrevPane => b.field = 1 - b.field,
            Cmd::Score(v) if !b.revealed => {
                let field = b.field;
                b.ratings[b.focus][field] = Some(v);
                // After similarity comes humanlike; after both, the next reply.
                if field == 0 {
                    b.field = 1;
                } else if b.focus + 1 < b.ratings.len() {
                    b.focus += 1;
                    b.field = 0;
                }
            }
            Cmd::Enter if !b.revealed => {
                if b.complete() {
                    b.revealed = true;
                    reveal = true;
                } else {
                    incomplete = true;
                }
            }
            _ => {}
        }
        if reveal {
            fx.push(Effect::AppendRating(rating_record(app)));
        } else if incomplete {
            app.info("rate every reply for similarity and humanlikeness first (1-9, 0 = 10)");
        }
        return;
    }
    let n = app.compare.sides.len();
    if n == 0 {
        return;
    }
    match cmd {
        Cmd::Up | Cmd::PrevPane => app.compare.selected = (app.compare.selected + n - 1) % n.max(1),
        Cmd::Down | Cmd::NextPane => app.compare.selected = (app.compare.selected + 1) % n.max(1),
        Cmd::Left | Cmd::Right => {
            let names: Vec<String> = app
                .sets
                .iter()
                .filter(|s| s.error.is_none())
                .map(|s| s.name.clone())
                .collect();
            if let Some(side) = app.compare.sides.get_mut(app.compare.selected) {
                if let Some(next) = cycle(&names, &side.set, cmd == Cmd::Right) {
                    side.set = next;
                }
            }
        }
        Cmd::PrevCheckpoint | Cmd::NextCheckpoint => {
            if !app.ckpts.scanned {
                fx.push(Effect::ScanCheckpoints);
                app.info("reading checkpoints/ … press again");
                return;
            }
            let names: Vec<String> = app
                .ckpts
                .rows
                .iter()
                .filter(|r| r.error.is_none() && r.unsupported().is_none())
                .map(|r| r.name.clone())
                .collect();
            if let Some(side) = app.compare.sides.get_mut(app.compare.selected) {
                if let Some(next) = cycle(&names, &side.checkpoint, cmd == Cmd::NextCheckpoint) {
                    side.checkpoint = next;
                }
            }
        }
        Cmd::AddSide if n < 3 => {
            let last = app.compare.sides.last().cloned();
            if let Some(s) = last {
                app.compare.sides.push(s);
                app.compare.selected = app.compare.sides.len() - 1;
            }
        }
        Cmd::RemoveSide if n > 2 => {
            app.compare.sides.pop();
            app.compare.selected = app.compare.selected.min(app.compare.sides.len() - 1);
        }
        Cmd::Enter => start_compare(app, fx),
        Cmd::Blind => {
            let runs = &app.compare.runs;
            if runs.is_empty() || runs.iter().any(|r| r.status != RunStatus::Done) {
                app.info("run a comparison to the end first (Enter)");
                return;
            }
            let mut order: Vec<usize> = (0..runs.len()).collect();
            let job = app.compare.runs[0].job;
            {
                use rand::seq::SliceRandom;
                use rand::SeedableRng;
                let mut rng = rand::rngs::StdRng::seed_from_u64(app.seed ^ job);
                order.shuffle(&mut rng);
            }
            app.compare.blind = Some(Blind {
                ratings: vec![[None, None]; order.len()],
                order,
                focus: 0,
                field: 0,
                revealed: false,
            });
        }
        _ => {}
    }
}

/// Run the selected scenario under every side, one sample each (a running comparison is
/// cancelled).
fn start_compare(app: &mut App, fx: &mut Vec<Effect>) {
    let Some(entry) = app.selected_scenario().cloned() else {
        app.info("select a scenario in Simulate first");
        return;
    };
    cancel(app, JobKind::Compare);
    let job = new_job(app, JobKind::Compare);
    // Blind rating needs one reply per side: one sample each.
    let sampling = SamplingChoice {
        n: 1,
        ..app.sampling.clone()
    };
    app.compare.runs = app
        .compare
        .sides
        .iter()
        .map(|side| {
            let mut r = SimRun::new(job.id, &entry.scenario.id, app.mode, &sampling, app.tick);
            r.checkpoint = side.checkpoint.clone();
            r.set = side.set.clone();
            r
        })
        .collect();
    app.compare.job = Some(job.id);
    app.compare.scenario = Some(entry.scenario.id.clone());
    app.compare.blind = None;
    fx.push(Effect::Compare {
        req: SimRequest {
            job: job.id,
            scenario: entry.scenario,
            set: app.set.clone(),
            mode: app.mode,
            sampling,
            cancel: job.cancel,
        },
        sides: app.compare.sides.clone(),
    });
}

/// The line appended to `runs/ratings.jsonl` once every reply is rated.
fn rating_record(app: &App) -> serde_json::Value {
    let c = &app.compare;
    let reference = c
        .scenario
        .as_ref()
        .and_then(|id| app.scenario_by_id(id))
        .and_then(|e| e.scenario.target.response.clone());
    let Some(b) = &c.blind else {
        return serde_json::Value::Null;
    };
    let items: Vec<serde_json::Value> = b
        .order
        .iter()
        .enumerate()
        .map(|(letter, &side)| {
            let run = &c.runs[side];
            let reply = run
                .samples
                .first()
                .map(|s| text::reply_text(run, s).1)
                .unwrap_or_default();
            serde_json::json!({
                "label": ((b'A' + letter as u8) as char).to_string(),
                "checkpoint": run.checkpoint,
                "prompt_set": run.set,
                "prompt_hash": run.set_hash,
                "reply": reply,
                "similarity": b.ratings[letter][0],
                "humanlike": b.ratings[letter][1],
            })
        })
        .collect();
    let run0 = c.runs.first();
    serde_json::json!({
        "scenario": c.scenario,
        "mode": run0.map(|r| r.mode.name()),
        "seed": run0.map(|r| r.sampling.seed),
        "reference": reference,
        "items": items,
    })
}
