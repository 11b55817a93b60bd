//! The simulator's-eye view (`v`): the prompts the model sees for the selected scenario, one
//! call at a time, rendered on a worker and refreshed when the prompt set changes.

use super::{extent, new_job, scroll_delta, shift};
use crate::tui::action::{Effect, SimRequest};
use crate::tui::app::*;
use crate::tui::keys::Cmd;

/// Open the view on the selected scenario, asking for its prompts unless those on screen are
/// still the ones the model would see.
pub(super) fn open_prompt_view(app: &mut App, fx: &mut Vec<Effect>) {
    let entry = app.selected_scenario().cloned().or_else(|| {
        app.sim
            .as_ref()
            .and_then(|r| app.scenario_by_id(&r.scenario).cloned())
    });
    let Some(entry) = entry else {
        app.info("select a scenario first");
        return;
    };
    app.screen = Screen::PromptView;
    let same = app.prompt_view.plan.as_ref().is_some_and(|p| {
        p.scenario == entry.scenario.id
            && p.set == app.set
            && p.mode == app.mode
            && Some(&p.set_hash) == app.set_info(&app.set).and_then(|s| s.hash.as_ref())
    });
    if same {
        return;
    }
    if app.model.loaded.is_none() && app.model.loading.is_none() {
        app.prompt_view.error = Some("no checkpoint is loaded: press m to choose one".into());
        return;
    }
    let job = new_job(app, JobKind::Plan);
    // The call streaming in Simulate is the one worth seeing first; after an edit of the set,
    // the call that was on screen.
    let current = app.sim.as_ref().and_then(|r| {
        r.current
            .as_ref()
            .and_then(|c| r.calls.iter().position(|x| &x.name == c))
    });
    let kept = app
        .prompt_view
        .plan
        .as_ref()
        .filter(|p| p.scenario == entry.scenario.id)
        .map(|_| app.prompt_view.call);
    // The old prompts of the same scenario stay on screen until the new ones are rendered.
    let old = kept.and(app.prompt_view.plan.take());
    app.prompt_view = PromptViewState {
        job: Some(job.id),
        plan: old,
        error: None,
        call: current.or(kept).unwrap_or(0),
        scroll: if kept.is_some() {
            app.prompt_view.scroll
        } else {
            0
        },
        ids: app.prompt_view.ids,
    };
    fx.push(Effect::Plan(SimRequest {
        job: job.id,
        scenario: entry.scenario,
        set: app.set.clone(),
        mode: app.mode,
        sampling: app.sampling.clone(),
        cancel: job.cancel,
    }));
}

/// A command in the view: the next or previous call, ids or text, scrolling.
pub(super) fn prompt_view_cmd(app: &mut App, cmd: Cmd) {
    let n = app
        .prompt_view
        .plan
        .as_ref()
        .map_or(1, |p| p.plan.calls.len())
        .max(1);
    let page = extent(app, "prompt").1.max(2) - 1;
    let pv = &mut app.prompt_view;
    match cmd {
        Cmd::NextPane | Cmd::Right => {
            pv.call = (pv.call + 1) % n;
            pv.scroll = 0;
        }
        Cmd::PrevPane | Cmd::Left => {
            pv.call = (pv.call + n - 1) % n;
            pv.scroll = 0;
        }
        Cmd::ShowIds => {
            pv.ids = !pv.ids;
            pv.scroll = 0;
        }
        Cmd::Up | Cmd::Down | Cmd::PageUp | Cmd::PageDown | Cmd::Top | Cmd::Bottom => {
            let delta = scroll_delta(cmd, page);
            let pos = app.prompt_view.scroll;
            app.prompt_view.scroll = shift(app, "prompt", pos, delta);
        }
        _ => {}
    }
}
