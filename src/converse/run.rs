//! Conversation runs: every scenario of a folder, K conversations each, written like an eval
//! run (`runs/converse-…/`: `run.json`, one transcript per conversation as JSONL under
//! `transcripts/`, `summary.json`) and resumed by the same command.
//!
//! A transcript file is written whole when its conversation ends (see [`crate::files`]): its
//! first line names the conversation, one line per turn follows, the last line is the end with
//! its diagnostics. On resume a transcript that ended `cancelled` or `error` runs again (the
//! earlier file is kept under `transcripts/interrupted/`); any other is read back as it is, and
//! a file that does not read is an error naming it and the line, never overwritten.

use super::diagnostics::{diagnose, Diagnostics};
use super::{End, EndReason, Transcript, Turn};
use crate::eval::stats::{bootstrap, Estimate};
use crate::scenario::{Conversation, Scenario};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// One line of a transcript file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Line {
    /// The first line: which conversation this is.
    Conversation {
        scenario: String,
        /// Which of the scenario's K conversations (0-based).
        conversation: usize,
        seed: u64,
        /// Turns taken from the scenario's thread before the first generated one.
        thread_turns: usize,
    },
    Turn(Turn),
    /// The last line.
    End {
        #[serde(flatten)]
        end: End,
        diagnostics: Diagnostics,
    },
}

/// The file name of conversation `k` of `scenario`.
pub fn transcript_name(scenario: &str, k: usize) -> String {
    format!("{scenario}-{k}.jsonl")
}

/// A transcript as the lines of its file.
pub fn to_jsonl(t: &Transcript, k: usize, table: &Conversation) -> String {
    let thread_turns = t.turns.iter().take_while(|x| !x.generated).count();
    let mut lines = vec![Line::Conversation {
        scenario: t.scenario.clone(),
        conversation: k,
        seed: t.seed,
        thread_turns,
    }];
    lines.extend(t.turns.iter().cloned().map(Line::Turn));
    lines.push(Line::End {
        end: t.end.clone(),
        diagnostics: diagnose(t, table),
    });
    let mut out = String::new();
    for l in lines {
        out.push_str(&serde_json::to_string(&l).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// A transcript file read back, with its diagnostics as written.
pub fn read_transcript(path: &Path) -> Result<(Transcript, usize, Diagnostics), String> {
    let at = |line: usize, msg: &str| format!("{}:{line}: {msg}", path.display());
    let file =
        std::fs::File::open(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut head: Option<(String, usize, u64)> = None;
    let mut turns = vec![];
    let mut end: Option<(End, Diagnostics)> = None;
    let mut last = 0;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        last = n;
        let line = line.map_err(|e| at(n, &format!("cannot read: {e}")))?;
        if end.is_some() {
            return Err(at(n, "a line after the conversation's end line"));
        }
        let parsed: Line = serde_json::from_str(&line).map_err(|e| {
            at(
                n,
                &format!("not a transcript line ({e}); the file is cut or damaged — move it away to run the conversation again"),
            )
        })?;
        match (parsed, &head) {
            (
                Line::Conversation {
                    scenario,
                    conversation,
                    seed,
                    ..
                },
                None,
            ) => head = Some((scenario, conversation, seed)),
            (Line::Conversation { .. }, Some(_)) => {
                return Err(at(n, "a second conversation line"))
            }
            (_, None) => return Err(at(n, "the first line must name the conversation")),
            (Line::Turn(t), Some(_)) => turns.push(t),
            (
                Line::End {
                    end: e,
                    diagnostics,
                },
                Some(_),
            ) => end = Some((e, diagnostics)),
        }
    }
    let Some((scenario, k, seed)) = head else {
        return Err(at(1, "the file is empty"));
    };
    let Some((end, diagnostics)) = end else {
        return Err(at(
            last,
            "the file ends before the conversation's end line: it is cut — move it away to run the conversation again",
        ));
    };
    Ok((
        Transcript {
            scenario,
            seed,
            turns,
            end,
        },
        k,
        diagnostics,
    ))
}

/// One conversation of a run, as the summary lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationSummary {
    pub scenario: String,
    pub conversation: usize,
    pub seed: u64,
    pub new_turns: usize,
    pub end: End,
    pub diagnostics: Diagnostics,
}

/// The run's figures: per conversation, and over all with 95% intervals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub conversations: Vec<ConversationSummary>,
    /// New turns per conversation.
    pub turns: Estimate,
    /// How many conversations ended for each reason.
    pub end_reasons: BTreeMap<String, usize>,
    /// Per conversation, the share of its user turns that show each fault (role_flip, repeat,
    /// empty, over_long), averaged over conversations; and the share of conversations the user
    /// ended before the intent was addressed (over those whose table names a check).
    pub rates: BTreeMap<String, Estimate>,
}

/// The summary of a run's conversations.
pub fn summarise(conversations: Vec<ConversationSummary>, seed: u64) -> Summary {
    let turns: Vec<f64> = conversations.iter().map(|c| c.new_turns as f64).collect();
    let mut end_reasons: BTreeMap<String, usize> = EndReason::ALL
        .iter()
        .map(|r| (r.name().to_string(), 0))
        .collect();
    for c in &conversations {
        *end_reasons.entry(c.end.reason.name().into()).or_default() += 1;
    }
    let mut rates = BTreeMap::new();
    let per_turn = |f: fn(&Diagnostics) -> usize| -> Vec<f64> {
        conversations
            .iter()
            .filter(|c| c.diagnostics.user_turns > 0)
            .map(|c| f(&c.diagnostics) as f64 / c.diagnostics.user_turns as f64)
            .collect()
    };
    for (name, f) in [
        (
            "role_flip",
            (|d: &Diagnostics| d.role_flips.len()) as fn(&Diagnostics) -> usize,
        ),
        ("repeat", |d| d.repeats.len()),
        ("empty", |d| d.empty.len()),
        ("over_long", |d| d.over_long.len()),
    ] {
        rates.insert(name.to_string(), bootstrap(&per_turn(f), seed));
    }
    let early: Vec<f64> = conversations
        .iter()
        .filter_map(|c| c.diagnostics.early_end)
        .map(|e| if e { 1.0 } else { 0.0 })
        .collect();
    rates.insert("early_end".into(), bootstrap(&early, seed));
    Summary {
        turns: bootstrap(&turns, seed),
        conversations,
        end_reasons,
        rates,
    }
}

/// Where a run's files go.
pub struct RunDir {
    pub dir: PathBuf,
}

impl RunDir {
    pub fn transcripts(&self) -> PathBuf {
        self.dir.join("transcripts")
    }

    pub fn transcript(&self, scenario: &str, k: usize) -> PathBuf {
        self.transcripts().join(transcript_name(scenario, k))
    }

    /// The finished conversation `k` of `scenario`, if its file holds one that need not run
    /// again; an interrupted one is moved aside.
    pub fn finished(
        &self,
        scenario: &str,
        k: usize,
    ) -> Result<Option<ConversationSummary>, String> {
        let path = self.transcript(scenario, k);
        if !path.exists() {
            return Ok(None);
        }
        let (t, _, diagnostics) = read_transcript(&path)?;
        if matches!(t.end.reason, EndReason::Cancelled | EndReason::Error) {
            let aside = self.transcripts().join("interrupted");
            std::fs::create_dir_all(&aside)
                .and_then(|_| std::fs::rename(&path, aside.join(transcript_name(scenario, k))))
                .map_err(|e| format!("{}: cannot move aside: {e}", path.display()))?;
            return Ok(None);
        }
        Ok(Some(ConversationSummary {
            scenario: t.scenario.clone(),
            conversation: k,
            seed: t.seed,
            new_turns: t.new_turns().count(),
            end: t.end,
            diagnostics,
        }))
    }

    /// Write a finished conversation's transcript (whole or not at all).
    pub fn save(
        &self,
        scenario: &Scenario,
        k: usize,
        t: &Transcript,
    ) -> Result<ConversationSummary, crate::files::WriteError> {
        let table = scenario.conversation.clone().unwrap_or_default();
        crate::files::write(&self.transcript(&scenario.id, k), to_jsonl(t, k, &table))?;
        Ok(ConversationSummary {
            scenario: scenario.id.clone(),
            conversation: k,
            seed: t.seed,
            new_turns: t.new_turns().count(),
            end: t.end.clone(),
            diagnostics: diagnose(t, &table),
        })
    }
}

/// What a run reports as it goes.
pub enum Progress<'a> {
    /// Conversation `k` of `scenario` was finished by an earlier run and is read back.
    Kept {
        scenario: &'a str,
        k: usize,
    },
    Started {
        scenario: &'a str,
        k: usize,
        seed: u64,
    },
    Event(super::Event<'a>),
    Finished(&'a ConversationSummary),
}

/// The run folder for `identity` (what decides the run's results: checkpoints, set, sampling,
/// scenarios): `out`, else `runs/converse-LABEL-HASH` under `runs`, the hash taken from the
/// identity so the same command finds the same folder and resumes it. A folder whose run.json
/// names another run is refused.
pub fn open(
    runs: &Path,
    label: &str,
    identity: &serde_json::Value,
    out: Option<&Path>,
) -> Result<RunDir, String> {
    let id = crate::eval::sha_hex(identity.to_string().as_bytes(), 4);
    let dir = match out {
        Some(o) => o.to_path_buf(),
        None => runs.join(format!("converse-{label}-{id}")),
    };
    let run_json = dir.join("run.json");
    if run_json.exists() {
        let text = std::fs::read_to_string(&run_json)
            .map_err(|e| format!("{}: cannot read: {e}", run_json.display()))?;
        let old: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not JSON ({e})", run_json.display()))?;
        if old.get("identity") != Some(identity) {
            return Err(format!(
                "{}: the folder holds another run (its checkpoints, prompt set, sampling or \
                 scenarios differ); name a new --out",
                run_json.display()
            ));
        }
    } else {
        let info = serde_json::json!({
            "program": {"name": "humanlm", "version": env!("CARGO_PKG_VERSION")},
            "kind": "converse",
            "id": id,
            "created": crate::eval::now_rfc3339(),
            "identity": identity,
        });
        crate::files::write(
            &run_json,
            serde_json::to_string_pretty(&info).unwrap_or_default(),
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(RunDir { dir })
}

/// Run `n` conversations of every scenario (conversation k seeded `seed + k`), keeping those
/// an earlier run finished; writes each transcript as it ends and `summary.json` at the end
/// (also when cancelled: the summary then covers what finished).
pub fn execute(
    dir: &RunDir,
    setup: &super::Setup,
    scenarios: &[Scenario],
    n: usize,
    seed: u64,
    cancel: Option<&std::sync::atomic::AtomicBool>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Summary, String> {
    let mut done = vec![];
    'all: for sc in scenarios {
        for k in 0..n.max(1) {
            if let Some(c) = dir.finished(&sc.id, k)? {
                progress(Progress::Kept {
                    scenario: &sc.id,
                    k,
                });
                done.push(c);
                continue;
            }
            if super::cancelled(cancel) {
                break 'all;
            }
            let conv_seed = seed.wrapping_add(k as u64);
            progress(Progress::Started {
                scenario: &sc.id,
                k,
                seed: conv_seed,
            });
            let t = super::converse(setup, sc, conv_seed, cancel, &mut |e| {
                progress(Progress::Event(e))
            });
            let c = dir.save(sc, k, &t).map_err(|e| e.to_string())?;
            progress(Progress::Finished(&c));
            done.push(c);
        }
    }
    let summary = summarise(done, seed);
    crate::files::write(
        &dir.dir.join("summary.json"),
        serde_json::to_string_pretty(&summary).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Speaker;

    fn sample() -> Transcript {
        let turn = |speaker, text: &str, generated| Turn {
            speaker,
            text: text.into(),
            generated,
            states: [("stance".to_string(), "annoyed".to_string())].into(),
            think: None,
            marker: None,
            stop_reason: Some(crate::generate::StopReason::Stop),
            seed: 3,
            tokens: 4,
            prompt_tokens: 100,
            cached_tokens: 64,
            ms: 12,
            edited: false,
        };
        Transcript {
            scenario: "chat-x".into(),
            seed: 9,
            turns: vec![
                turn(Speaker::Assistant, "Hello, how can I help?", false),
                turn(Speaker::User, "My order is late.", true),
                turn(Speaker::Assistant, "Sorry! Order number?", true),
            ],
            end: End {
                reason: EndReason::MaxTurns,
                detail: Some("2 new turns".into()),
            },
        }
    }

    #[test]
    fn a_transcript_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let t = sample();
        let text = to_jsonl(&t, 2, &Conversation::default());
        assert_eq!(text.lines().count(), 5);
        assert!(text.starts_with(r#"{"type":"conversation","scenario":"chat-x","conversation":2"#));
        std::fs::write(&path, &text).unwrap();
        let (back, k, d) = read_transcript(&path).unwrap();
        assert_eq!((back, k), (t, 2));
        assert_eq!(d.user_turns, 1);
    }

    #[test]
    fn a_cut_transcript_is_named_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let text = to_jsonl(&sample(), 0, &Conversation::default());
        // Cut in the middle of the third line, and cut after a whole line.
        let cut = &text[..text.match_indices('\n').nth(1).unwrap().0 + 20];
        std::fs::write(&path, cut).unwrap();
        let e = read_transcript(&path).unwrap_err();
        assert!(e.contains("t.jsonl:3: not a transcript line"), "{e}");
        let whole_lines: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, whole_lines).unwrap();
        let e = read_transcript(&path).unwrap_err();
        assert!(
            e.contains("t.jsonl:3: the file ends before the conversation's end line"),
            "{e}"
        );
    }

    #[test]
    fn the_summary_counts_end_reasons_and_rates() {
        let c = |reason, user_turns, flips: Vec<usize>, early| ConversationSummary {
            scenario: "s".into(),
            conversation: 0,
            seed: 0,
            new_turns: user_turns * 2,
            end: End {
                reason,
                detail: None,
            },
            diagnostics: Diagnostics {
                user_turns,
                role_flips: flips,
                early_end: early,
                ..Default::default()
            },
        };
        let s = summarise(
            vec![
                c(EndReason::UserEnded, 2, vec![1], Some(true)),
                c(EndReason::MaxTurns, 4, vec![], None),
            ],
            0,
        );
        assert_eq!(s.end_reasons["user-ended"], 1);
        assert_eq!(s.end_reasons["max-turns"], 1);
        assert_eq!(s.end_reasons["context"], 0);
        assert_eq!(s.turns.mean, 6.0);
        assert_eq!(s.rates["role_flip"].mean, 0.25);
        assert_eq!(s.rates["early_end"].mean, 1.0);
        assert_eq!(s.rates["early_end"].n, 1);
    }
}
