//! Train (`t`): the form (its choices and text fields), starting a pass from it, the pass's
//! progress, and loading the adapter it wrote. What the form may start is decided by
//! `train::plan`; this file only gathers the form's values and the lists it names.

use super::{cycle, new_job};
use crate::tui::action::Effect;
use crate::tui::app::*;
use crate::tui::keys::{Cmd, Ctx};
use ratatui::crossterm::event::{KeyCode, KeyEvent};

/// The base checkpoints a pass can start from: local models, not adapters or endpoints.
pub fn train_bases(app: &App) -> Vec<String> {
    app.ckpts
        .rows
        .iter()
        .filter(|r| {
            r.depth == 0 && r.error.is_none() && r.endpoint.is_none() && r.unsupported().is_none()
        })
        .filter(|r| r.info.as_ref().is_none_or(|i| i.adapter_base.is_none()))
        .map(|r| r.name.clone())
        .collect()
}

/// The base the form names, else the checkpoint in use when it is a local base, else the
/// default checkpoint.
pub fn train_base(app: &App) -> String {
    let f = &app.train.form;
    if !f.base.is_empty() {
        return f.base.clone();
    }
    let in_use_is_base = !app.checkpoint.starts_with("endpoint:")
        && !app
            .ckpts
            .rows
            .iter()
            .any(|r| r.name == app.checkpoint && r.depth > 0);
    if in_use_is_base {
        app.checkpoint.clone()
    } else {
        crate::model::checkpoint::DEFAULT_CHECKPOINT.to_string()
    }
}

/// The output folder name the form gives, or its default.
pub fn train_output(app: &App) -> String {
    let f = &app.train.form;
    crate::train::plan::output_name(&f.output, &train_base(app), f.method == TrainMethod::Grpo)
}

/// What a start of the form would run: the configuration, the adapter's folder name and
/// path, and the reward judge's name; or what is wrong, naming the field. The checks are
/// `train::plan`'s; this gathers the form's values and what the checkpoint and judge lists hold
/// under the names it gives.
pub fn train_plan(
    app: &App,
) -> Result<
    (
        crate::train::TrainConfig,
        String,
        std::path::PathBuf,
        Option<String>,
    ),
    String,
> {
    use crate::train::plan::{self, Existing, GrpoRequest, PlanError, Request, ValRequest};
    let f = &app.train.form;
    let base = train_base(app);
    let rows = &app.ckpts.rows;
    let name = train_output(app);
    let existing = rows.iter().find(|r| r.name == name).map(|r| {
        let adapter = r.depth > 0 || r.info.as_ref().is_some_and(|i| i.adapter_base.is_some());
        if adapter {
            Existing::Adapter
        } else {
            Existing::Checkpoint
        }
    });
    let judge = app
        .eval
        .judges
        .as_ref()
        .and_then(|rows| rows.iter().find(|r| r.name == f.reward))
        .map(|r| match &r.unavailable {
            Some(why) => Err(why.as_str()),
            None => Ok(r.path.as_path()),
        });
    let req = Request {
        base: &base,
        base_is_adapter: rows.iter().any(|r| r.name == base && r.depth > 0),
        scenarios: &f.scenarios,
        output: &f.output,
        existing,
        resume: f.resume,
        steps: &f.steps,
        rank: &f.rank,
        lr: &f.lr,
        grpo: (f.method == TrainMethod::Grpo).then_some(GrpoRequest {
            rollouts: &f.n,
            reward: &f.reward,
            judge,
            // The workbench's cap on new tokens holds for rollouts too.
            max_new_tokens: app.sampling.max_tokens,
        }),
        validation: (!f.validation.trim().is_empty()).then_some(ValRequest {
            scenarios: &f.validation,
            every: &f.val_every,
            // The workbench's cap holds for validation calls as for every other.
            max_tokens: app.sampling.max_tokens,
        }),
        checkpoints: &app.paths.checkpoints,
    };
    match plan::plan(&req) {
        Ok(p) => Ok((p.config, p.name, p.out, p.judge)),
        // On the form, the arrows choose a judge from the list.
        Err(e @ PlanError::UnknownJudge { .. }) => Err(format!("{e} (←/→ chooses one)")),
        Err(e) => Err(e.to_string()),
    }
}

/// A command on Train: move in the form and change its choices, start, stop, load the adapter.
pub(super) fn train_cmd(app: &mut App, cmd: Cmd, fx: &mut Vec<Effect>) {
    let has_run = app.train.run.is_some();
    match cmd {
        Cmd::StartTrain => return start_train(app, fx),
        Cmd::LoadAdapter => return load_adapter(app, fx, false),
        Cmd::LoadBest => return load_adapter(app, fx, true),
        Cmd::TrainForm => {
            if has_run {
                app.train.show_run = !app.train.show_run;
            }
            return;
        }
        _ => {}
    }
    if has_run && app.train.show_run {
        let running = app.train.run.as_ref().is_some_and(|r| r.running());
        if cmd == Cmd::Enter && !running {
            app.train.show_run = false;
        }
        return;
    }
    let fields = app.train.form.fields();
    let n = fields.len();
    let form = &mut app.train.form;
    form.focus = form.focus.min(n - 1);
    let field = fields[form.focus];
    match cmd {
        Cmd::Up | Cmd::PrevPane => form.focus = form.focus.saturating_sub(1),
        Cmd::Down | Cmd::NextPane => form.focus = (form.focus + 1).min(n - 1),
        Cmd::Top => form.focus = 0,
        Cmd::Bottom => form.focus = n - 1,
        Cmd::Enter if field.is_text() => form.editing = true,
        Cmd::Enter | Cmd::Right => cycle_train_choice(app, field, true, fx),
        Cmd::Left => cycle_train_choice(app, field, false, fx),
        _ => {}
    }
}

/// The next (or previous) value of a choice field of the form.
fn cycle_train_choice(app: &mut App, field: TrainField, forward: bool, fx: &mut Vec<Effect>) {
    // A refusal is about the values it saw; a change makes it stale.
    app.train.form.error = None;
    match field {
        TrainField::Method => {
            let f = &mut app.train.form;
            f.method = match f.method {
                TrainMethod::Sft => TrainMethod::Grpo,
                TrainMethod::Grpo => TrainMethod::Sft,
            };
            if f.method == TrainMethod::Grpo && app.eval.judges.is_none() {
                fx.push(Effect::ScanJudges);
            }
        }
        TrainField::Base => {
            if !app.ckpts.scanned {
                fx.push(Effect::ScanCheckpoints);
                app.info("reading checkpoints/ … press again");
                return;
            }
            let current = train_base(app);
            if let Some(next) = cycle(&train_bases(app), &current, forward) {
                app.train.form.base = next;
            }
        }
        TrainField::Resume => app.train.form.resume = !app.train.form.resume,
        TrainField::Reward => {
            let Some(rows) = &app.eval.judges else {
                fx.push(Effect::ScanJudges);
                app.info("reading prompts/judges/ … press again");
                return;
            };
            let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
            let current = app.train.form.reward.clone();
            if let Some(next) = cycle(&names, &current, forward) {
                app.train.form.reward = next;
            }
        }
        _ => {}
    }
}

/// Keys while a text field of the Train form is edited.
pub(super) fn train_edit_key(app: &mut App, key: KeyEvent) {
    let cmd = app.keys.lookup(&[Ctx::TrainEdit], &key);
    if cmd == Some(Cmd::Quit) {
        app.quit = true;
        return;
    }
    let fields = app.train.form.fields();
    let form = &mut app.train.form;
    let field = fields[form.focus.min(fields.len() - 1)];
    match cmd {
        Some(Cmd::Enter) => form.editing = false,
        Some(_) => {}
        // Not a binding: the key edits the value.
        None => match key.code {
            KeyCode::Backspace => {
                form.error = None;
                if let Some(t) = form.text_mut(field) {
                    t.pop();
                }
            }
            KeyCode::Char(c) => {
                form.error = None;
                if let Some(t) = form.text_mut(field) {
                    t.push(c);
                }
            }
            _ => {}
        },
    }
}

/// Start the pass the form describes, or put what is wrong on the form.
fn start_train(app: &mut App, fx: &mut Vec<Effect>) {
    if app.train.run.as_ref().is_some_and(|r| r.running()) {
        app.info("a training pass is running (Esc stops it)");
        return;
    }
    let (cfg, name, out, judge) = match train_plan(app) {
        Ok(p) => p,
        Err(e) => {
            app.train.form.error = Some(e.clone());
            app.train.show_run = false;
            app.info(format!("not started: {e}"));
            return;
        }
    };
    app.train.form.error = None;
    app.train.form.editing = false;
    app.train.quit_warned = false;
    let job = new_job(app, JobKind::Train);
    app.train.run = Some(TrainRun {
        job: job.id,
        method: app.train.form.method,
        base: cfg.base.clone(),
        name,
        out: out.clone(),
        rank: cfg.rank,
        steps: cfg.steps,
        judge,
        // A resumed run shows its whole history, not just the steps from here on.
        events: if app.train.form.resume {
            crate::train::read_events(&out)
        } else {
            vec![]
        },
        val: if app.train.form.resume {
            crate::train::read_val_events(&out)
        } else {
            vec![]
        },
        examples: None,
        log: vec![],
        saved: None,
        status: TrainStatus::Running,
        stopping: false,
        started: app.tick,
    });
    app.train.show_run = true;
    fx.push(Effect::Train {
        job: job.id,
        cfg: Box::new(cfg),
        out,
        resume: app.train.form.resume,
        cancel: job.cancel,
    });
}

/// A message from the trainer: data, steps, saves, the end.
pub(super) fn train_msg(app: &mut App, job: u64, msg: TrainMsg, fx: &mut Vec<Effect>) {
    let Some(run) = app.train.run.as_mut().filter(|r| r.job == job) else {
        return;
    };
    match msg {
        TrainMsg::Data { examples, skipped } => {
            run.examples = Some((examples, skipped));
            run.log.push(if skipped > 0 {
                format!("{examples} examples ({skipped} skipped: too long or unusable)")
            } else {
                format!("{examples} examples")
            });
        }
        TrainMsg::Note(n) => run.log.push(n),
        TrainMsg::Step(e) => crate::train::push_event(&mut run.events, *e),
        TrainMsg::Val(v) => {
            run.log.push(crate::train::val::describe(&v));
            crate::train::push_val_event(&mut run.val, *v);
        }
        TrainMsg::Saved(p) => {
            run.log.push(format!("saved {}", p.display()));
            run.saved = Some(p);
        }
        TrainMsg::Finished(r) => {
            app.jobs.retain(|j| j.id != job);
            match r {
                Ok(out) => {
                    run.status = TrainStatus::Done;
                    run.log
                        .push(format!("done: the adapter is in {}", out.display()));
                    let name = run.name.clone();
                    app.info(format!("training done: L uses {name} as the checkpoint"));
                }
                Err(e) if run.stopping => {
                    run.status = TrainStatus::Cancelled(e);
                    app.info("training stopped; its checkpoint is saved (L uses it)");
                }
                Err(e) => {
                    run.status = TrainStatus::Failed(e.clone());
                    app.fail(format!("training: {e}"));
                }
            }
            // The new adapter (or checkpoint) is listed with the others.
            fx.push(Effect::ScanCheckpoints);
        }
    }
}

/// `L`: the adapter the pass wrote (after the end or a stop) becomes the
/// checkpoint in use; Simulate switches to it once it has loaded.
/// Load the pass's adapter — the newest, or with `best` the best validated step's (`best/`).
fn load_adapter(app: &mut App, fx: &mut Vec<Effect>, best: bool) {
    let Some(run) = &app.train.run else {
        app.info("no training pass yet: r starts one");
        return;
    };
    // A stop saves checkpoint-N and refreshes the adapter at the top of the output folder, so
    // after a stop as after the end, the folder itself is the newest adapter.
    let path = match &run.status {
        TrainStatus::Done | TrainStatus::Cancelled(_) => run.out.clone(),
        TrainStatus::Running => {
            app.info("the pass is still running (Esc stops it and saves a checkpoint)");
            return;
        }
        TrainStatus::Failed(_) => {
            app.info("this pass failed: its last saved checkpoint, if any, is in the Checkpoints list (m)");
            return;
        }
    };
    let mut name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = if best {
        let dir = path.join("best");
        if !dir.join("best.json").is_file() {
            app.info(if run.val.is_empty() {
                "this pass was not validated: give it validation scenarios on the form"
            } else {
                "no best step saved yet"
            });
            return;
        }
        name.push_str("/best");
        dir
    } else {
        path
    };
    app.checkpoint = name.clone();
    app.model.loading = Some((name.clone(), app.tick));
    app.info(format!("loading {name}: Simulate uses it once it is ready"));
    fx.push(Effect::LoadCheckpoint(
        path.display().to_string(),
        app.ckpts.quantize,
    ));
    fx.push(Effect::ScanCheckpoints);
    app.screen = Screen::Simulate;
}
