//! Checkpoints (`m`): choosing the checkpoint or endpoint simulations run on, and the
//! add-an-endpoint form (its fields are checked by `remote::checked_endpoint`).

use crate::tui::action::Effect;
use crate::tui::app::*;
use crate::tui::keys::{Cmd, Ctx};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// A command on the Checkpoints screen: move, load the selection, add or remove an endpoint.
pub(super) fn checkpoints_cmd(app: &mut App, cmd: Cmd, fx: &mut Vec<Effect>) {
    let n = app.ckpts.rows.len();
    match cmd {
        Cmd::Up => app.ckpts.selected = app.ckpts.selected.saturating_sub(1),
        Cmd::Down => app.ckpts.selected = (app.ckpts.selected + 1).min(n.saturating_sub(1)),
        Cmd::Top => app.ckpts.selected = 0,
        Cmd::Bottom => app.ckpts.selected = n.saturating_sub(1),
        Cmd::Rescan => fx.push(Effect::ScanCheckpoints),
        Cmd::Enter => {
            let Some(row) = app.ckpts.rows.get(app.ckpts.selected).cloned() else {
                return;
            };
            if let Some(e) = &row.error {
                app.fail(format!("{}: {e}", row.name));
                return;
            }
            if let Some(arch) = row.unsupported() {
                app.fail(format!(
                    "{} is a {arch} model (an embedding model for the judge), not a simulator: \
                     simulators are llama, qwen2 or qwen3",
                    row.name
                ));
                return;
            }
            if app
                .model
                .loading
                .as_ref()
                .is_some_and(|(n, _)| *n == row.name)
            {
                return;
            }
            app.checkpoint = row.name.clone();
            app.model.loading = Some((row.name.clone(), app.tick));
            match row.endpoint.clone() {
                Some(cfg) => {
                    app.info(format!("connecting to {}", row.label()));
                    fx.push(Effect::LoadEndpoint(cfg));
                }
                None => {
                    app.info(format!("loading {} in the background", row.name));
                    // A checkpoint given as a path loads from that path.
                    fx.push(Effect::LoadCheckpoint(row.path.clone(), app.ckpts.quantize));
                }
            }
        }
        Cmd::CycleQuantize => {
            use crate::model::quantize::Quantize;
            app.ckpts.quantize = match app.ckpts.quantize {
                None => Some(Quantize::None),
                Some(Quantize::None) => Some(Quantize::Q8_0),
                Some(Quantize::Q8_0) => Some(Quantize::Q4_0),
                Some(Quantize::Q4_0) => Some(Quantize::Q4K),
                Some(Quantize::Q4K) => None,
            };
            app.info(match app.ckpts.quantize {
                None => "dense checkpoints load as their default (humanlm.toml, else q8_0 above 1B parameters on the CPU)".to_string(),
                Some(q) => format!("dense checkpoints load as {q} from now on (Enter reloads; GGUF files keep their types)"),
            });
        }
        Cmd::AddEndpoint => app.ckpts.form = Some(EndpointForm::default()),
        Cmd::RemoveEndpoint => {
            let Some(row) = app.ckpts.rows.get(app.ckpts.selected).cloned() else {
                return;
            };
            if row.endpoint.is_none() {
                app.info("only endpoints are removed here (checkpoint folders stay on disk)");
                return;
            }
            app.ckpts.rows.retain(|r| r.name != row.name);
            app.ckpts.selected = app
                .ckpts
                .selected
                .min(app.ckpts.rows.len().saturating_sub(1));
            fx.push(Effect::SaveEndpoints(endpoints(app)));
            app.info(format!("removed {}", row.label()));
        }
        _ => {}
    }
}

/// The endpoints the Checkpoints screen lists, as `checkpoints/endpoints.toml` holds them.
fn endpoints(app: &App) -> Vec<crate::remote::EndpointConfig> {
    app.ckpts
        .rows
        .iter()
        .filter_map(|r| r.endpoint.clone())
        .collect()
}

/// Keys while the add-an-endpoint form is open: text goes into the focused field.
pub(super) fn endpoint_form_key(app: &mut App, key: KeyEvent, fx: &mut Vec<Effect>) {
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    let cmd = app.keys.lookup(&[Ctx::EndpointForm], &key);
    if cmd == Some(Cmd::Quit) {
        app.quit = true;
        return;
    }
    let Some(form) = app.ckpts.form.as_mut() else {
        return;
    };
    let n = form.fields.len();
    match cmd {
        Some(Cmd::Back) => app.ckpts.form = None,
        Some(Cmd::NextPane) => form.focus = (form.focus + 1) % n,
        Some(Cmd::PrevPane) => form.focus = (form.focus + n - 1) % n,
        Some(Cmd::Enter) if form.focus + 1 < n => form.focus += 1,
        Some(Cmd::Enter) => submit_endpoint(app, fx),
        Some(Cmd::ClearField) => form.fields[form.focus].clear(),
        Some(_) => {}
        // Not a binding: the key edits the focused field.
        None => match key.code {
            KeyCode::Backspace => {
                form.fields[form.focus].pop();
            }
            KeyCode::Char(c) if !ctrl => form.fields[form.focus].push(c),
            _ => {}
        },
    }
}

/// An endpoint from the form's fields (URL, model, key variable), or what is wrong with them
/// (naming the field).
pub fn endpoint_from_form(fields: &[String; 3]) -> Result<crate::remote::EndpointConfig, String> {
    crate::remote::checked_endpoint(&fields[0], &fields[1], &fields[2]).map_err(|e| e.to_string())
}

/// Enter on the form's last field: add the endpoint (or say what is wrong) and save the list.
fn submit_endpoint(app: &mut App, fx: &mut Vec<Effect>) {
    let Some(form) = app.ckpts.form.as_mut() else {
        return;
    };
    let cfg = match endpoint_from_form(&form.fields) {
        Ok(c) => c,
        Err(e) => {
            form.error = Some(e);
            return;
        }
    };
    app.ckpts.form = None;
    let row = CkptRow::for_endpoint(cfg);
    // The same URL and model again replaces the entry (a new key variable, say).
    match app.ckpts.rows.iter().position(|r| r.name == row.name) {
        Some(i) => app.ckpts.rows[i] = row.clone(),
        None => app.ckpts.rows.push(row.clone()),
    }
    app.ckpts.selected = app
        .ckpts
        .rows
        .iter()
        .position(|r| r.name == row.name)
        .unwrap_or(0);
    app.ckpts.select_next = Some(row.name.clone());
    app.info(format!(
        "added {} to checkpoints/endpoints.toml · Enter uses it",
        row.label()
    ));
    fx.push(Effect::SaveEndpoints(endpoints(app)));
}
