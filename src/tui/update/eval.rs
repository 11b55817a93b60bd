//! Eval (`e`): the runs under `runs/`, drilling into a run's samples, and the judge picker that
//! starts a new evaluation.

use super::new_job;
use crate::tui::action::Effect;
use crate::tui::app::*;
use crate::tui::keys::Cmd;

/// A command on Eval: move in the runs or a run's samples, rescan, or open the judge picker.
pub(super) fn eval_cmd(app: &mut App, cmd: Cmd, fx: &mut Vec<Effect>) {
    if let Some(sel) = app.eval.drill {
        let n = app.eval.detail.as_ref().map_or(0, |d| d.samples.len());
        app.eval.drill = Some(match cmd {
            Cmd::Up => sel.saturating_sub(1),
            Cmd::Down => (sel + 1).min(n.saturating_sub(1)),
            Cmd::PageUp => sel.saturating_sub(10),
            Cmd::PageDown => (sel + 10).min(n.saturating_sub(1)),
            Cmd::Top => 0,
            Cmd::Bottom => n.saturating_sub(1),
            _ => sel,
        });
        return;
    }
    let n = app.eval.runs.len();
    let before = app.eval.selected;
    match cmd {
        Cmd::Up => app.eval.selected = app.eval.selected.saturating_sub(1),
        Cmd::Down => app.eval.selected = (app.eval.selected + 1).min(n.saturating_sub(1)),
        Cmd::Top => app.eval.selected = 0,
        Cmd::Bottom => app.eval.selected = n.saturating_sub(1),
        Cmd::Rescan => fx.push(Effect::ScanRuns),
        Cmd::Enter
            if app
                .eval
                .detail
                .as_ref()
                .is_some_and(|d| !d.samples.is_empty()) =>
        {
            app.eval.drill = Some(0);
        }
        Cmd::RunEval => {
            if app.job(JobKind::Eval).is_some() || app.eval.progress.is_some() {
                app.info("an evaluation is running (Esc cancels it)");
                return;
            }
            if app.eval.judges.is_none() {
                fx.push(Effect::ScanJudges);
            }
            app.eval.picker = Some(preferred_judge(app));
        }
        _ => {}
    }
    if app.eval.selected != before {
        app.eval.detail = None;
        fx.extend(load_selected_run(app));
    }
}

/// Load the selected run's detail, with the run before it to compare with.
pub(super) fn load_selected_run(app: &App) -> Option<Effect> {
    let run = app.eval.runs.get(app.eval.selected)?;
    Some(Effect::LoadRun {
        path: run.path.clone(),
        prev: app
            .eval
            .runs
            .get(app.eval.selected + 1)
            .map(|r| r.path.clone()),
    })
}

/// The judge the picker opens on: the last one used here, else the embedding judge.
pub(super) fn preferred_judge(app: &App) -> usize {
    let Some(rows) = &app.eval.judges else {
        return 0;
    };
    app.eval
        .judge
        .as_ref()
        .and_then(|j| rows.iter().position(|r| r.name == *j))
        .or_else(|| rows.iter().position(|r| r.name == "embedding"))
        .unwrap_or(0)
}

/// Keys of the judge picker.
pub(super) fn picker_cmd(app: &mut App, cmd: Cmd, fx: &mut Vec<Effect>) {
    let n = app.eval.judges.as_ref().map_or(0, |j| j.len());
    let sel = app.eval.picker.unwrap_or(0);
    match cmd {
        Cmd::Quit => app.quit = true,
        Cmd::Help => app.help = Some(0),
        Cmd::Back => app.eval.picker = None,
        Cmd::Up => app.eval.picker = Some(sel.saturating_sub(1)),
        Cmd::Down => app.eval.picker = Some((sel + 1).min(n.saturating_sub(1))),
        Cmd::Top => app.eval.picker = Some(0),
        Cmd::Bottom => app.eval.picker = Some(n.saturating_sub(1)),
        Cmd::Rescan => {
            app.eval.judges = None;
            fx.push(Effect::ScanJudges);
        }
        Cmd::Enter => {
            let Some(row) = app.eval.judges.as_ref().and_then(|j| j.get(sel)).cloned() else {
                return;
            };
            let config = match (&row.unavailable, row.config) {
                (None, Some(c)) => c,
                (why, _) => {
                    let why = why.clone().unwrap_or_else(|| "does not load".into());
                    app.fail(format!("judge {}: {why}", row.name));
                    return;
                }
            };
            app.eval.picker = None;
            app.eval.judge = Some(row.name.clone());
            start_eval(app, fx, config);
        }
        _ => {}
    }
}

/// Start an evaluation of the checkpoint in use over `scenarios/` with `judge`.
fn start_eval(app: &mut App, fx: &mut Vec<Effect>, judge: crate::judge::JudgeConfig) {
    if app.job(JobKind::Eval).is_some() || app.eval.progress.is_some() {
        app.info("an evaluation is running (Esc cancels it)");
        return;
    }
    let job = new_job(app, JobKind::Eval);
    let spec = crate::eval::EvalSpec {
        checkpoints: vec![app.checkpoint.clone()],
        scenarios: app.paths.scenarios.clone(),
        mode: app.mode,
        prompts: Some(app.set.clone()),
        judge,
        sampling: app.sampling.clone(),
        truncate: crate::sim::Truncate::None,
        out: app.paths.runs.clone(),
        protocol: None,
        paper: vec![],
        state_judge: None,
        rejudge: false,
        device: "cpu".into(),
    };
    app.eval.progress = Some(EvalProgress {
        job: job.id,
        started: app.tick,
        current: "starting".into(),
        ..Default::default()
    });
    fx.push(Effect::Eval {
        job: job.id,
        spec: Box::new(spec),
        cancel: job.cancel,
    });
}

/// A message from the evaluation worker: progress, then where the run was written.
pub(super) fn eval_msg(app: &mut App, job: u64, msg: EvalMsg, fx: &mut Vec<Effect>) {
    let tick = app.tick;
    let Some(p) = app.eval.progress.as_mut().filter(|p| p.job == job) else {
        return;
    };
    match msg {
        EvalMsg::Started { total, resumed } => {
            p.total = total;
            p.resumed = resumed;
            p.done = resumed;
        }
        EvalMsg::Loading { checkpoint } => p.current = format!("loading {checkpoint}"),
        EvalMsg::Scenario { scenario } => p.current = scenario,
        EvalMsg::Done { .. } => {
            p.done += 1;
            p.first_done.get_or_insert(tick);
        }
        EvalMsg::Skipped { .. } => p.skipped += 1,
        EvalMsg::Finished(r) => {
            app.eval.progress = None;
            app.jobs.retain(|j| j.id != job);
            match r {
                Ok(dir) => {
                    app.info(format!("evaluation written to {}", dir.display()));
                    app.eval.selected = 0;
                    app.eval.detail = None;
                }
                Err(e) if e.starts_with("cancelled") => {
                    app.info("evaluation cancelled: r resumes it where it stopped")
                }
                Err(e) => app.fail(format!("evaluation: {e}")),
            }
            fx.push(Effect::ScanRuns);
        }
    }
}
