//! End to end: the release binary, in a real terminal (tmux), on the default checkpoint.
//!
//! Opens the workbench at 100×30, filters the scenario list down to one scenario, simulates it
//! until the reply and the six state cards are filled, opens the help, quits, and checks that
//! the terminal was given back (the alternate screen left, the shell prompt there again); and,
//! in a second test, holds a two-turn conversation and forks it at the user's turn. Every
//! call's new tokens are capped with `HUMANLM_TUI_MAX_TOKENS` so this takes seconds, not minutes.
//!
//! Needs tmux (`apt-get install tmux`); runs on a private tmux socket that is removed afterwards.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SCENARIO: &str = "opinion-gym-etiquette-06";
/// The chat scenario with a `[conversation]` table, for the Converse part.
const CONVERSATION: &str = "chat-airline-change-04";

static SERVERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A tmux server of our own, killed when dropped (also when an assertion fails).
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(width: u16, height: u16) -> Tmux {
        match Command::new("tmux").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            _ => panic!(
                "tmux is not installed: the workbench end-to-end test drives the binary in tmux \
                 (install it: apt-get install tmux)"
            ),
        }
        let t = Tmux {
            // Per process and per server: `cargo test` runs both tests in one process.
            socket: format!(
                "humanlm-test-{}-{}",
                std::process::id(),
                SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
        };
        let out = t.run(&[
            "new-session",
            "-d",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            "-s",
            "wb",
            "sh",
        ]);
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn capture(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "wb"]).stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "wb"];
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success(), "send-keys {keys:?}");
    }

    fn type_text(&self, text: &str) {
        assert!(self
            .run(&["send-keys", "-t", "wb", "-l", "--", text])
            .status
            .success());
    }

    fn alternate_on(&self) -> String {
        String::from_utf8_lossy(
            &self
                .run(&["display", "-p", "-t", "wb", "#{alternate_on}"])
                .stdout,
        )
        .trim()
        .to_string()
    }

    /// Poll the screen until `done` holds on a settled screen; panics with the last screen after
    /// `timeout`. Settled means a second capture shortly after is the same: a capture can land
    /// while the workbench is halfway through writing a frame (the new popup's title drawn, the
    /// rows under it still the old frame's), and a check on that screen would fail by chance.
    fn wait(&self, what: &str, timeout: Duration, mut done: impl FnMut(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.capture();
            if done(&screen) {
                std::thread::sleep(Duration::from_millis(100));
                if self.capture() == screen {
                    return screen;
                }
                continue;
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {:?} waiting for {what}; the screen:\n{screen}",
                    timeout
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// The text right of a card's label, if the card is on screen.
fn card(screen: &str, dim: &str) -> Option<String> {
    let label = format!("│{dim} ");
    screen.lines().find_map(|l| {
        l.find(&label)
            .map(|i| l[i + label.len()..].trim_start().to_string())
    })
}

fn filled(screen: &str, dim: &str) -> bool {
    card(screen, dim).is_some_and(|c| {
        !c.is_empty()
            && !c.starts_with('│')
            && !c.starts_with("waiting")
            && !c.starts_with("(empty)")
    })
}

/// The workbench in a 100×30 tmux pane on the default checkpoint, once it has loaded.
fn open_workbench(root: &Path) -> (Tmux, String) {
    assert!(
        root.join("checkpoints/smollm2-135m-instruct").is_dir(),
        "the default checkpoint is missing: run scripts/fetch-checkpoints.sh"
    );
    let t = Tmux::start(100, 30);
    t.wait("the shell's prompt", Duration::from_secs(10), |s| {
        !s.trim().is_empty()
    });
    let command = format!(
        "cd '{}' && HUMANLM_TUI_MAX_TOKENS=16 '{}'; echo \"workbench exited with $?\"",
        root.display(),
        env!("CARGO_BIN_EXE_humanlm")
    );
    t.type_text(&command);
    t.keys(&["Enter"]);
    // The workbench opens on the scenarios and loads the default checkpoint in the background.
    let screen = t.wait("the checkpoint to load", Duration::from_secs(120), |s| {
        s.contains("smollm2-135m-instruct · cpu") && s.contains("opinion (")
    });
    (t, screen)
}

#[test]
fn workbench_end_to_end() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let title = humanlm::scenario::find(SCENARIO, &root.join("scenarios"))
        .expect("the test scenario ships in scenarios/")
        .scenario
        .title;
    let title_start: String = title.chars().take(18).collect();
    // The cards the workbench shows: the states of the set the default checkpoint uses.
    let ckpt =
        humanlm::model::Checkpoint::resolve("smollm2-135m-instruct", &root.join("checkpoints"))
            .expect("the default checkpoint resolves");
    let set_name = humanlm::prompts::set_for(None, ckpt.default_prompt_set().unwrap());
    let dimensions: Vec<String> =
        humanlm::prompts::PromptSet::load(&set_name, &root.join("prompts"))
            .expect("the default checkpoint's prompt set loads")
            .dimensions()
            .map(|d| d.key.clone())
            .collect();
    assert!(!dimensions.is_empty());

    let (t, screen) = open_workbench(root);
    assert_eq!(t.alternate_on(), "1", "full screen while running");
    assert!(screen.contains("Simulate"), "{screen}");
    assert!(screen.contains("Scenarios (/ filter)"), "{screen}");
    assert!(screen.contains("politics ("), "{screen}");

    // `/` and a filter leave one scenario.
    t.keys(&["/"]);
    t.type_text("gym-etiquette");
    let screen = t.wait("the filter", Duration::from_secs(10), |s| {
        s.contains("/gym-etiquette") && s.contains("opinion (1)")
    });
    assert!(!screen.contains("politics ("), "{screen}");
    assert!(screen.contains(&title_start), "{screen}");

    // Enter simulates it; the states and the reply stream in.
    t.keys(&["Enter"]);
    let mut saw_streaming = false;
    let screen = t.wait(
        "the reply and all six state cards",
        Duration::from_secs(240),
        |s| {
            // Either form of progress: a state call's decode can be shorter than a poll, so
            // a fast machine may show only prefills between the captures.
            saw_streaming |=
                s.contains("generating") && (s.contains("tok/s") || s.contains("prefilling"));
            s.contains("✓ done") && dimensions.iter().all(|d| filled(s, d))
        },
    );
    assert!(saw_streaming, "the status bar never showed the generation");
    for d in &dimensions {
        assert!(filled(&screen, d), "card {d} is empty:\n{screen}");
    }
    assert!(screen.contains(SCENARIO), "{screen}");
    assert!(
        screen.contains("valid format"),
        "no verdict on the format:\n{screen}"
    );
    assert!(!screen.contains("(empty reply)"), "{screen}");
    assert!(!screen.contains("the states come first"), "{screen}");
    // The reply pane holds text (its first line under the title is not a placeholder).
    let reply_line = screen
        .lines()
        .skip_while(|l| !l.contains("Reply"))
        .nth(1)
        .unwrap_or_default();
    let reply_text = reply_line
        .rsplit("││")
        .next()
        .unwrap_or_default()
        .trim_matches(['│', ' ']);
    assert!(!reply_text.is_empty(), "empty reply pane:\n{screen}");

    // Help lists the bindings.
    t.keys(&["?"]);
    let screen = t.wait("the help", Duration::from_secs(10), |s| {
        s.contains("Help · keys") && s.contains("prompt the model saw")
    });
    assert!(screen.contains("quit (Ctrl-C too)"), "{screen}");
    assert!(screen.contains("prompt the model saw"), "{screen}");
    // Each key waits for the screen to answer it: an Esc followed at once by a letter would
    // read as Alt+letter.
    t.keys(&["Escape"]);
    t.wait("the help to close", Duration::from_secs(10), |s| {
        !s.contains("Help · keys")
    });

    // Eval's r lists the shipped judges (read by a worker from prompts/judges/).
    t.keys(&["e"]);
    t.wait("the Eval screen", Duration::from_secs(20), |s| {
        s.contains("Runs ·")
    });
    t.keys(&["r"]);
    let screen = t.wait("the judge picker", Duration::from_secs(20), |s| {
        s.contains("Judge for an evaluation") && s.contains("rouge-l")
    });
    assert!(screen.contains("embedding"), "{screen}");
    t.keys(&["Escape"]);
    t.wait("the picker to close", Duration::from_secs(10), |s| {
        !s.contains("Judge for an evaluation")
    });

    // The Train screen's form, with the checkpoint in use as its base.
    t.keys(&["t"]);
    let screen = t.wait("the Train form", Duration::from_secs(20), |s| {
        s.contains("a short LoRA pass") && s.contains("smollm2-135m-instruct-sft-lora")
    });
    assert!(screen.contains("base checkpoint"), "{screen}");
    t.keys(&["Escape"]);
    t.wait("Simulate again", Duration::from_secs(10), |s| {
        !s.contains("a short LoRA pass")
    });
    t.keys(&["?"]);
    t.wait("the help again", Duration::from_secs(10), |s| {
        s.contains("Help · keys")
    });

    // q quits and gives the terminal back.
    t.keys(&["q"]);
    let screen = t.wait("the shell again", Duration::from_secs(10), |s| {
        s.contains("workbench exited with")
    });
    assert!(screen.contains("workbench exited with 0"), "{screen}");
    assert!(!screen.contains("Help · keys"), "{screen}");
    assert_eq!(t.alternate_on(), "0", "the alternate screen was left");
    // The shell takes input again (raw mode is off: the line is echoed and run).
    t.type_text("echo back-in-the-shell");
    t.keys(&["Enter"]);
    t.wait("the shell to answer", Duration::from_secs(10), |s| {
        s.lines().any(|l| l.trim() == "back-in-the-shell")
    });
}

/// Converse in a real terminal: a two-turn conversation on the chat scenario with a
/// `[conversation]` table, then a fork at the user's turn that goes on from there. The user
/// writes in response mode (one call per turn) so this takes seconds.
#[test]
fn a_conversation_and_a_fork_end_to_end() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (t, _) = open_workbench(root);
    t.keys(&["M"]);
    t.wait("response mode", Duration::from_secs(10), |s| {
        s.contains("· response ·")
    });
    t.keys(&["/"]);
    t.type_text(CONVERSATION);
    t.wait("the chat scenario", Duration::from_secs(10), |s| {
        s.contains(&format!("/{CONVERSATION}")) && s.contains("chat (1)")
    });
    t.keys(&["Tab"]);
    t.keys(&["C"]);
    t.wait("the Converse screen", Duration::from_secs(20), |s| {
        s.contains(&format!("Enter starts a conversation on {CONVERSATION}"))
    });
    // Down to one new turn, then up to two.
    t.type_text(&"-".repeat(30));
    t.wait("one new turn", Duration::from_secs(10), |s| {
        s.contains("max 1 new turns")
    });
    t.type_text("+");
    t.wait("two new turns", Duration::from_secs(10), |s| {
        s.contains("max 2 new turns")
    });
    t.keys(&["Enter"]);
    let mut saw_conversing = false;
    let screen = t.wait("the conversation to end", Duration::from_secs(240), |s| {
        saw_conversing |= s.contains("conversing");
        s.contains("conversation ended: max-turns") && s.contains("(2 new)")
    });
    assert!(
        saw_conversing,
        "the status bar never showed the conversation"
    );
    assert!(
        screen.contains("HUMAN") && screen.contains("assistant"),
        "{screen}"
    );
    assert!(screen.contains("1 from the scenario"), "{screen}");
    // Up to the user's new turn; F forks there and writes it again.
    t.keys(&["Up"]);
    t.keys(&["F"]);
    let screen = t.wait("the fork to end", Duration::from_secs(240), |s| {
        s.contains("2 fork at turn")
            && s.contains("Conversation 2/2")
            && s.contains("conversation ended: max-turns")
            && !s.contains("conversing")
    });
    assert!(
        screen.contains("└"),
        "the fork is drawn under its parent:\n{screen}"
    );

    t.keys(&["q"]);
    t.wait("the shell again", Duration::from_secs(10), |s| {
        s.contains("workbench exited with 0")
    });
}

#[test]
fn without_a_terminal_it_says_so() {
    let out = Command::new(env!("CARGO_BIN_EXE_humanlm"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .expect("run humanlm");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("needs a terminal"), "{err}");
    assert!(out.stdout.is_empty());
}
