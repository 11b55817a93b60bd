//! Train (`t`): a form for a short SFT or GRPO pass (LoRA), then the pass as it runs: loss,
//! reward and KL curves, a progress gauge with the ETA, the latest per-state rewards and a few
//! rollouts with their scores. Every number comes from the trainer's step events, the same
//! lines it appends to `<out>/events.jsonl`.

use super::{dim, pane, spinner, ACCENT, BAD, GOOD, WARN};
use crate::train::StepEvent;
use crate::tui::app::{App, TrainField, TrainMethod, TrainRun, TrainStatus};
use crate::tui::text;
use crate::tui::update::{train_base, train_output};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Chart, Dataset, Gauge, GraphType, Paragraph, Wrap};
use ratatui::Frame;

pub fn draw(f: &mut Frame, app: &App, body: Rect) {
    match &app.train.run {
        Some(run) if app.train.show_run => draw_run(f, app, body, run),
        _ => draw_form(f, app, body),
    }
}

fn draw_form(f: &mut Frame, app: &App, body: Rect) {
    let form = &app.train.form;
    let block = pane(" Train · a short LoRA pass on this machine ", true);
    let inner = block.inner(body);
    f.render_widget(block, body);
    let fields = form.fields();
    let focus = form.focus.min(fields.len() - 1);
    let judge_of = |name: &str| {
        app.eval
            .judges
            .as_ref()
            .and_then(|j| j.iter().find(|r| r.name == name))
    };
    let mut lines = vec![];
    for (i, field) in fields.iter().enumerate() {
        let focused = i == focus;
        let (value, placeholder) = match field {
            TrainField::Method => (
                format!(
                    "{}   {}",
                    form.method.name(),
                    match form.method {
                        TrainMethod::Sft => "the real reply as the target (loss on its tokens)",
                        TrainMethod::Grpo => "rollouts per state, rewarded by a judge",
                    }
                ),
                false,
            ),
            TrainField::Base => (train_base(app), form.base.is_empty()),
            TrainField::Scenarios => (form.scenarios.clone(), false),
            TrainField::Output => (
                format!(
                    "{}  → {}",
                    train_output(app),
                    app.paths.checkpoints.join(train_output(app)).display()
                ),
                form.output.trim().is_empty(),
            ),
            TrainField::Steps => (form.steps.clone(), false),
            TrainField::Lr if form.lr.trim().is_empty() => (
                match form.method {
                    TrainMethod::Sft => "default (1e-3)".to_string(),
                    TrainMethod::Grpo => "default (1e-4)".to_string(),
                },
                true,
            ),
            TrainField::Lr => (form.lr.clone(), false),
            TrainField::Rank => (form.rank.clone(), false),
            TrainField::Resume => (
                if form.resume {
                    "resume the pass already there".to_string()
                } else {
                    "refuse (choose another name)".to_string()
                },
                false,
            ),
            TrainField::N => (form.n.clone(), false),
            TrainField::Validation if form.validation.trim().is_empty() => (
                "none (a held-out scenario file or folder, validated as the pass runs)".into(),
                true,
            ),
            TrainField::Validation => (form.validation.clone(), false),
            TrainField::ValEvery => (
                format!(
                    "{} steps  and at step 0 and the end; the best is kept, B loads it",
                    form.val_every
                ),
                false,
            ),
            TrainField::Reward => {
                let detail = match judge_of(&form.reward) {
                    Some(j) => match &j.unavailable {
                        Some(_) => format!("{} · unavailable", j.kind),
                        None => format!("{} · {}", j.kind, j.detail),
                    },
                    None => "embedding (the default)".to_string(),
                };
                (format!("{}  {detail}", form.reward), false)
            }
        };
        let editing = focused && form.editing;
        let mut spans = vec![
            Span::styled(
                if focused { " ▸ " } else { "   " },
                Style::default().fg(ACCENT),
            ),
            Span::styled(
                format!("{:<21}", field.label()),
                if focused {
                    Style::default().fg(ACCENT).add_modifier(Modifier::BOLD)
                } else {
                    Style::default()
                },
            ),
        ];
        let style = if placeholder && !editing {
            dim()
        } else if focused {
            Style::default().add_modifier(Modifier::BOLD)
        } else {
            Style::default()
        };
        if editing {
            spans.push(Span::styled(form.text(*field).to_string(), style));
            spans.push(Span::styled("▌", Style::default().fg(ACCENT)));
        } else {
            let choice = focused && !field.is_text();
            let room = (inner.width as usize).saturating_sub(if choice { 31 } else { 25 });
            spans.push(Span::styled(text::truncate(&value, room), style));
            if choice {
                spans.push(Span::styled("  ←/→", dim()));
            }
        }
        lines.push(Line::from(spans));
    }
    lines.push(Line::raw(""));
    if let Some(e) = &form.error {
        lines.push(Line::styled(format!(" ✗ {e}"), Style::default().fg(BAD)));
    }
    if form.method == TrainMethod::Grpo {
        if let Some(why) = judge_of(&form.reward).and_then(|j| j.unavailable.as_ref()) {
            let line = format!(" ✗ reward judge {}: {why}", form.reward);
            // The refused start already says it.
            if form
                .error
                .as_ref()
                .is_none_or(|e| !line.contains(e.as_str()))
            {
                lines.push(Line::styled(line, Style::default().fg(BAD)));
            }
        }
    }
    lines.push(Line::styled(
        " r starts the pass in the background; Esc on its view stops it (a checkpoint is saved first); when it is done, L uses the adapter as the checkpoint. Each step is a line of events.jsonl in the output folder.",
        dim(),
    ));
    if let Some(run) = &app.train.run {
        lines.push(Line::raw(""));
        lines.push(Line::from(vec![
            Span::styled(" last pass ", dim()),
            Span::raw(format!("{} · ", run.name)),
            status_span(run),
            Span::styled(" · f shows it", dim()),
        ]));
    }
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), inner);
}

fn status_span(run: &TrainRun) -> Span<'static> {
    let step = run.events.last().map_or(0, |e| e.step);
    match &run.status {
        TrainStatus::Running if run.stopping => {
            Span::styled("stopping: saving a checkpoint…", Style::default().fg(WARN))
        }
        TrainStatus::Running => Span::styled(
            format!("running, step {step}/{}", run.steps),
            Style::default().fg(GOOD),
        ),
        TrainStatus::Done => Span::styled("✓ done", Style::default().fg(GOOD)),
        TrainStatus::Cancelled(_) => {
            Span::styled(format!("stopped at step {step}"), Style::default().fg(WARN))
        }
        TrainStatus::Failed(e) => Span::styled(format!("✗ {e}"), Style::default().fg(BAD)),
    }
}

fn draw_run(f: &mut Frame, app: &App, body: Rect, run: &TrainRun) {
    let step = run.events.last().map_or(0, |e| e.step);
    let mut title = format!(
        " Train · {} · base {} · LoRA r={} ",
        run.method.name(),
        run.base,
        run.rank
    );
    if let Some(j) = &run.judge {
        title.push_str(&format!("· judge {j} "));
    }
    let block = pane(
        Line::from(text::truncate(
            &title,
            body.width.saturating_sub(20) as usize,
        )),
        true,
    )
    .title(Line::from(format!(" step {step}/{} ", run.steps)).right_aligned());
    let inner = block.inner(body);
    f.render_widget(block, body);
    let grpo = run.method == TrainMethod::Grpo;
    let chart_h = (inner.height / 2).clamp(5, 16);
    let split = run.events.last().is_some_and(|e| e.update_s.is_some());
    let [charts, gauge, time_row, states, val_row, lower, status] = Layout::vertical([
        Constraint::Length(chart_h),
        Constraint::Length(1),
        Constraint::Length(u16::from(split)),
        Constraint::Length(u16::from(grpo)),
        Constraint::Length(u16::from(!run.val.is_empty())),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(inner);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(charts);
    let ev = &run.events;
    let series = |g: &dyn Fn(&StepEvent) -> Option<f64>| -> Vec<(f64, f64)> {
        ev.iter()
            .filter_map(|e| g(e).filter(|v| v.is_finite()).map(|v| (e.step as f64, v)))
            .collect()
    };
    // Validation passes on the same axes as what they check: the reply's score (a percentage)
    // beside the training reward (a fraction), the held-out loss beside the training loss.
    let val: Vec<(f64, f64)> = run
        .val
        .iter()
        .filter_map(|v| {
            let y = if grpo {
                v.metrics
                    .get(crate::prompts::RESPONSE)
                    .map(|e| e.mean / 100.0)
            } else {
                v.loss
            };
            y.map(|y| (v.step as f64, y))
        })
        .collect();
    let best_step = run.val.last().map(|v| v.best_step as f64);
    let best: Vec<(f64, f64)> = val
        .iter()
        .filter(|p| Some(p.0) == best_step)
        .copied()
        .collect();
    let from_zero = !run.val.is_empty();
    let (main, name, color, val_color, titles) = if grpo {
        (
            series(&|e| e.reward.as_ref().map(|r| r.mean)),
            "reward",
            GOOD,
            ACCENT,
            (
                " reward (mean over rollouts) ",
                " reward · held-out reward · best ",
            ),
        )
    } else {
        (
            series(&|e| Some(e.loss)),
            "loss",
            ACCENT,
            GOOD,
            (" loss ", " loss · held-out loss · best "),
        )
    };
    chart(
        f,
        left,
        if val.is_empty() { titles.0 } else { titles.1 },
        (run.steps, from_zero),
        &[
            (name, color, &main),
            ("val", val_color, &val),
            ("best", WARN, &best),
        ],
    );
    if grpo {
        let loss = series(&|e| Some(e.loss));
        let kl = series(&|e| e.kl);
        chart(
            f,
            right,
            " loss · KL ",
            (run.steps, from_zero),
            &[("loss", ACCENT, &loss), ("KL", WARN, &kl)],
        );
    } else {
        let grad = series(&|e| Some(e.grad_norm));
        chart(
            f,
            right,
            " grad norm (before clipping) ",
            (run.steps, from_zero),
            &[("grad", WARN, &grad)],
        );
    }

    // Progress: the step, speed and time left as the trainer measured them.
    let last = ev.last();
    let ratio = (step as f64 / run.steps.max(1) as f64).clamp(0.0, 1.0);
    let label = match last {
        Some(e) => format!(
            "{:.0}% · step {step}/{} · {:.0} tok/s · ETA {} · lr {:.1e} · loss {:.4}",
            ratio * 100.0,
            run.steps,
            e.tokens_per_s,
            text::duration(e.eta_s),
            e.lr,
            e.loss
        ),
        None if run.running() => format!("{} preparing: the base, the data…", spinner(app)),
        None => "no step finished".to_string(),
    };
    f.render_widget(
        Gauge::default()
            .ratio(ratio)
            .label(label)
            .gauge_style(Style::default().fg(ACCENT).bg(Color::DarkGray)),
        gauge,
    );
    // Where the last step's time went: sampling, the reward's calls, the gradient passes.
    if let Some(e) = last.filter(|_| split) {
        let mut spans = vec![Span::styled(" last step   ", dim())];
        for (what, secs) in [
            ("rollouts", e.rollout_s),
            ("judge", e.judge_s),
            ("update", e.update_s),
        ] {
            if let Some(t) = secs {
                spans.push(Span::styled(what, Style::default().fg(ACCENT)));
                spans.push(Span::raw(format!(" {}  ", text::duration(t))));
            }
        }
        spans.push(Span::styled(format!("{:.0} tok/s", e.tokens_per_s), dim()));
        f.render_widget(Paragraph::new(Line::from(spans)), time_row);
    }
    if grpo {
        let mut spans = vec![Span::styled(" reward by state  ", dim())];
        if let Some(e) = last {
            for (k, r) in &e.reward_by_state {
                spans.push(Span::styled(k.clone(), Style::default().fg(ACCENT)));
                spans.push(Span::raw(format!(" {:.2}±{:.2}  ", r.mean, r.std)));
            }
        }
        f.render_widget(Paragraph::new(Line::from(spans)), states);
    }
    if let Some(v) = run.val.last() {
        let mut spans = vec![Span::styled(" validation  ", dim())];
        spans.push(Span::raw(format!("step {}: ", v.step)));
        match (v.loss, v.metrics.get(crate::prompts::RESPONSE)) {
            (Some(l), _) => spans.push(Span::raw(format!("held-out loss {l:.4}  "))),
            (None, Some(e)) => spans.push(Span::raw(format!(
                "reply {:.1} ± {:.1}  ",
                e.mean,
                (e.ci95[1] - e.ci95[0]) / 2.0
            ))),
            (None, None) => {}
        }
        spans.push(Span::styled(
            format!("best step {}", v.best_step),
            Style::default().fg(WARN),
        ));
        spans.push(Span::styled(
            format!(" · {} scenarios · B loads the best", v.scenarios),
            dim(),
        ));
        f.render_widget(Paragraph::new(Line::from(spans)), val_row);
    }

    // GRPO: recent rollouts with their rewards, newest first; SFT: the run's log.
    let w = lower.width.saturating_sub(2) as usize;
    let mut lines = vec![];
    if grpo {
        for e in ev.iter().rev() {
            for r in &e.rollouts {
                let flat = r.text.split_whitespace().collect::<Vec<_>>().join(" ");
                let head = format!(" step {:<4} {:<14} ", e.step, r.state);
                lines.push(Line::from(vec![
                    Span::styled(head.clone(), dim()),
                    Span::styled(
                        format!("{:.2}  ", r.reward),
                        Style::default().fg(super::simulate::score_color(r.reward)),
                    ),
                    Span::raw(text::truncate(
                        &format!("\"{flat}\""),
                        w.saturating_sub(text::width(&head) + 6),
                    )),
                ]));
            }
        }
        if lines.is_empty() {
            lines.push(Line::styled(" rollouts appear after the first step", dim()));
        }
    }
    for l in run.log.iter().rev() {
        lines.push(Line::styled(format!(" {}", text::truncate(l, w)), dim()));
    }
    let title = if grpo {
        " recent rollouts · reward "
    } else {
        " log "
    };
    f.render_widget(Paragraph::new(lines).block(pane(title, false)), lower);

    let line = match &run.status {
        TrainStatus::Running if run.stopping => Line::styled(
            format!(
                " {} stopping: the trainer saves a checkpoint first…",
                spinner(app)
            ),
            Style::default().fg(WARN),
        ),
        TrainStatus::Running => Line::from(vec![
            Span::styled(
                format!(" {} training", spinner(app)),
                Style::default().fg(GOOD),
            ),
            Span::styled(format!(" → {} · Esc stops", run.out.display()), dim()),
        ]),
        TrainStatus::Done => Line::from(vec![
            Span::styled(" ✓ done", Style::default().fg(GOOD)),
            Span::raw(format!(" · {}", run.out.display())),
            Span::styled(" · L uses it", Style::default().fg(ACCENT)),
        ]),
        TrainStatus::Cancelled(_) => Line::from(vec![
            Span::styled(
                format!(" stopped at step {step}"),
                Style::default().fg(WARN),
            ),
            Span::raw(format!(" · saved in {}", run.out.display())),
            Span::styled(" · L uses it", Style::default().fg(ACCENT)),
        ]),
        TrainStatus::Failed(e) => Line::styled(format!(" ✗ {e}"), Style::default().fg(BAD)),
    };
    f.render_widget(Paragraph::new(line), status);
}

/// A named series of (step, value) points and its colour.
type Series<'a> = (&'static str, Color, &'a Vec<(f64, f64)>);

/// A line chart of a few series over the steps (from step 0 when `from_zero`: validation runs
/// before the first step); a note while there is nothing to draw.
fn chart(
    f: &mut Frame,
    area: Rect,
    title: &'static str,
    (steps, from_zero): (usize, bool),
    series: &[Series],
) {
    let block = pane(title, false);
    let points: Vec<f64> = series
        .iter()
        .flat_map(|(_, _, d)| d.iter().map(|p| p.1))
        .collect();
    if points.is_empty() {
        f.render_widget(
            Paragraph::new(Line::styled("after the first step", dim())).block(block),
            area,
        );
        return;
    }
    let lo = points.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = points.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1e-3) * 0.1
    };
    let (lo, hi) = (lo - pad, hi + pad);
    let datasets: Vec<Dataset> = series
        .iter()
        .filter(|(_, _, d)| !d.is_empty())
        .map(|(name, color, d)| {
            Dataset::default()
                .name(*name)
                .marker(Marker::Braille)
                // A line needs two points; the first step shows as a dot.
                .graph_type(if d.len() < 2 {
                    GraphType::Scatter
                } else {
                    GraphType::Line
                })
                .style(Style::default().fg(*color))
                .data(d)
        })
        .collect();
    let fmt = |v: f64| {
        if v.abs() >= 100.0 || v == 0.0 {
            format!("{v:.0}")
        } else if v.abs() >= 0.01 {
            format!("{v:.3}")
        } else {
            format!("{v:.1e}")
        }
    };
    let chart = Chart::new(datasets)
        .block(block)
        .x_axis(
            Axis::default()
                .bounds([f64::from(u8::from(!from_zero)), steps.max(2) as f64])
                .labels([
                    if from_zero { "0" } else { "1" }.to_string(),
                    steps.to_string(),
                ])
                .style(dim()),
        )
        .y_axis(
            Axis::default()
                .bounds([lo, hi])
                .labels([fmt(lo), fmt(hi)])
                .style(dim()),
        )
        .legend_position(if series.iter().filter(|s| !s.2.is_empty()).count() > 1 {
            Some(ratatui::widgets::LegendPosition::TopRight)
        } else {
            None
        });
    f.render_widget(chart, area);
}
