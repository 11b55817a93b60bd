//! Text helpers shared by the update logic and the screens: word wrapping by display width,
//! what a card or the reply pane shows of a call's raw output, and the line diff the Prompts
//! screen shows of two prompt sets.

use super::app::{CallOut, DiffView, FileDiff, SampleOut, SetInfo, SimRun};
use crate::generate::StopReason;
use crate::prompts::RESPONSE;
use crate::sim::parse;
use crate::sim::{CallKind, Output, JOINT};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// Display width of a string (CJK characters count two columns).
pub fn width(s: &str) -> usize {
    UnicodeWidthStr::width(s)
}

/// Wrap `text` to `width` columns: paragraphs at newlines, words at spaces, and words wider than
/// the line (or text without spaces, such as Japanese) broken between characters.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut out = vec![];
    for para in text.split('\n') {
        let para = para.trim_end_matches('\r');
        let mut line = String::new();
        let mut line_w = 0;
        for word in para.split(' ') {
            let w = self::width(word);
            let sep = usize::from(!line.is_empty());
            if line_w + sep + w <= width {
                if sep == 1 {
                    line.push(' ');
                }
                line.push_str(word);
                line_w += sep + w;
                continue;
            }
            if !line.is_empty() {
                out.push(std::mem::take(&mut line));
                line_w = 0;
            }
            if w <= width {
                line.push_str(word);
                line_w = w;
                continue;
            }
            for c in word.chars() {
                let cw = c.width().unwrap_or(0);
                if line_w + cw > width && !line.is_empty() {
                    out.push(std::mem::take(&mut line));
                    line_w = 0;
                }
                line.push(c);
                line_w += cw;
            }
        }
        out.push(line);
    }
    out
}

/// `s` cut to `width` columns, with `…` when something was cut.
pub fn truncate(s: &str, width: usize) -> String {
    if self::width(s) <= width {
        return s.to_string();
    }
    let mut out = String::new();
    let mut w = 0;
    for c in s.chars() {
        let cw = c.width().unwrap_or(0);
        if w + cw + 1 > width {
            break;
        }
        out.push(c);
        w += cw;
    }
    out.push('…');
    out
}

/// The prefill (`<stance>` for sets that pre-fill the tag) of a call of the run.
fn prefill(run: &SimRun, call: &str) -> String {
    run.calls
        .iter()
        .find(|c| c.name == call)
        .map(|c| c.prefill.clone())
        .unwrap_or_default()
}

/// A state's content from its call's raw output, as the final parse would read it once closed.
pub fn state_from_raw(key: &str, prefill: &str, raw: &str) -> String {
    let closed = format!("{prefill}{raw}</{key}>");
    if let Some((_, v)) = parse::flexible(&closed).into_iter().find(|(t, _)| t == key) {
        return v;
    }
    let open = format!("<{key}>");
    let s = raw.trim();
    s.strip_prefix(open.as_str())
        .unwrap_or(s)
        .trim()
        .to_string()
}

/// A state's text in a sample: the parsed value once finished, else what has streamed so far
/// (its own call, or its tag inside the joint output). `None` when nothing was generated.
pub fn state_text(run: &SimRun, s: &SampleOut, key: &str) -> Option<String> {
    if let Some(v) = s.state(key) {
        return Some(v.to_string());
    }
    if let Some(c) = s.calls.get(key) {
        return Some(state_from_raw(key, &prefill(run, key), &c.text));
    }
    let joint = s.calls.get(JOINT)?;
    let open = format!("<{key}>");
    let lower = joint.text.to_ascii_lowercase();
    let start = lower.find(&open)? + open.len();
    let rest = &joint.text[start..];
    let end = rest.find("</").unwrap_or(rest.len());
    Some(rest[..end].trim().to_string())
}

/// The call whose output holds `key` (its own, or the joint call).
pub fn call_of<'a>(s: &'a SampleOut, key: &str) -> Option<&'a CallOut> {
    s.calls.get(key).or_else(|| s.calls.get(JOINT))
}

/// What the finished call that holds `key` produced (its own, or the joint call).
pub fn output_of<'a>(s: &'a SampleOut, key: &str) -> Option<&'a Output> {
    s.output(key).or_else(|| s.output(JOINT))
}

/// The reply of a sample: (think, reply). Final values once finished, else the streaming text
/// split at `</think>` and cleared of the `<response>` tag.
pub fn reply_text(run: &SimRun, s: &SampleOut) -> (Option<String>, String) {
    if let Some(r) = s.response() {
        return (s.think().map(str::to_string), r.to_string());
    }
    let thinking = run
        .calls
        .iter()
        .any(|c| c.kind() == CallKind::Response && c.thinking);
    if let Some(c) = s.calls.get(RESPONSE) {
        let raw = c.text.as_str();
        let (think, rest) = if thinking {
            match raw.find("</think>") {
                Some(i) => (
                    Some(raw[..i].replace("<think>", "").trim().to_string()),
                    &raw[i + "</think>".len()..],
                ),
                None => (Some(raw.replace("<think>", "").trim().to_string()), ""),
            }
        } else {
            (None, raw)
        };
        let rest = rest.trim();
        let rest = rest.strip_prefix("<response>").unwrap_or(rest);
        return (think, rest.trim().to_string());
    }
    if let Some(c) = s.calls.get(JOINT) {
        if let Some(i) = c.text.find("<response>") {
            return (None, c.text[i + "<response>".len()..].trim().to_string());
        }
    }
    (None, String::new())
}

/// Warnings for a finished call: why its output is not in the format, and whether it loops.
pub fn flags(c: Option<&Output>, text: &str) -> Vec<&'static str> {
    let mut out = vec![];
    match c.map(|o| (&o.stop_reason, o.valid)) {
        Some((StopReason::Length, _)) => out.push("⚠ hit token limit"),
        Some((StopReason::Eos, _)) => out.push("⚠ no closing tag"),
        Some((StopReason::Context, _)) => out.push("⚠ context full"),
        Some((StopReason::Cancelled, _)) => out.push("⚠ cancelled"),
        Some((_, false)) => out.push("⚠ format"),
        _ => {}
    }
    if repetitive(text) {
        out.push("⚠ repetition");
    }
    out
}

/// Whether a text loops: many words, few distinct word trigrams.
pub fn repetitive(text: &str) -> bool {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < 12 {
        return false;
    }
    let grams: Vec<String> = words.windows(3).map(|w| w.join(" ")).collect();
    let distinct: std::collections::HashSet<&String> = grams.iter().collect();
    (distinct.len() as f64) < 0.6 * grams.len() as f64
}

/// A score bar of `cells` cells for a similarity in [0, 1] (negative shows empty).
pub fn bar(score: f64, cells: usize) -> String {
    const EIGHTHS: [char; 8] = ['▏', '▎', '▍', '▌', '▋', '▊', '▉', '█'];
    let total = (score.clamp(0.0, 1.0) * (cells * 8) as f64).round() as usize;
    let mut s = String::new();
    for i in 0..cells {
        let fill = total.saturating_sub(i * 8).min(8);
        s.push(match fill {
            0 => ' ',
            f => EIGHTHS[f - 1],
        });
    }
    s
}

/// Seconds as `1.2 s`, `3m05s`.
pub fn duration(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1} s")
    } else {
        let s = secs.round() as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// A line diff of every file of two sets (by file name).
pub fn diff_sets(a: &SetInfo, b: &SetInfo) -> DiffView {
    let mut names: Vec<&str> = a.files.iter().map(|f| f.name.as_str()).collect();
    for f in &b.files {
        if !names.contains(&f.name.as_str()) {
            names.push(&f.name);
        }
    }
    let mut files = vec![];
    for name in names {
        let fa = a.files.iter().find(|f| f.name == name);
        let fb = b.files.iter().find(|f| f.name == name);
        let (ta, tb) = (
            fa.map_or("", |f| f.text.as_str()),
            fb.map_or("", |f| f.text.as_str()),
        );
        let status = match (fa, fb) {
            (Some(_), None) => "only in A",
            (None, Some(_)) => "only in B",
            _ if ta == tb => "same",
            _ => "changed",
        };
        let mut lines = vec![];
        if status != "same" {
            let d = similar::TextDiff::from_lines(ta, tb);
            for group in d.grouped_ops(2) {
                if !lines.is_empty() {
                    lines.push(('…', String::new()));
                }
                for op in group {
                    for change in d.iter_changes(&op) {
                        let tag = match change.tag() {
                            similar::ChangeTag::Delete => '-',
                            similar::ChangeTag::Insert => '+',
                            similar::ChangeTag::Equal => ' ',
                        };
                        lines.push((tag, change.value().trim_end_matches('\n').to_string()));
                    }
                }
            }
        }
        files.push(FileDiff {
            name: name.to_string(),
            status,
            lines,
        });
    }
    DiffView {
        a: a.name.clone(),
        b: b.name.clone(),
        files,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_words_and_breaks_long_ones() {
        assert_eq!(wrap("aaa bbb ccc", 7), vec!["aaa bbb", "ccc"]);
        assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        assert_eq!(wrap("a\n\nb", 5), vec!["a", "", "b"]);
        // Two columns per CJK character.
        assert_eq!(wrap("日本語です", 4), vec!["日本", "語で", "す"]);
    }

    #[test]
    fn state_text_from_prefilled_and_tagged_raw() {
        assert_eq!(state_from_raw("stance", "<stance>", " agrees "), "agrees");
        assert_eq!(state_from_raw("stance", "", "<stance>agrees"), "agrees");
        assert_eq!(
            state_from_raw("stance", "", "<stance>agrees</stance>"),
            "agrees"
        );
    }

    #[test]
    fn bars_and_repetition() {
        assert_eq!(bar(1.0, 4), "████");
        assert_eq!(bar(0.0, 4), "    ");
        assert_eq!(bar(0.5, 4), "██  ");
        assert!(repetitive(&"the same words again ".repeat(10)));
        assert!(!repetitive(
            "a perfectly ordinary reply that does not say anything twice at all"
        ));
    }
}
