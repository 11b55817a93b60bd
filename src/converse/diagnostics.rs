//! What goes wrong with simulated users over a conversation, counted per turn: answering as the
//! assistant (a role flip), repeating earlier turns, empty or over-long turns, and ending before
//! the intent was addressed.

use super::{EndReason, Transcript, Turn};
use crate::eval::diagnostics::{assistant_speak, word_count};
use crate::scenario::{Conversation, Speaker};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Offers of help: what an assistant asks and a user seeking help does not.
const HELP_OFFERS: &[&str] = &[
    "how can i help",
    "how may i help",
    "how can i assist",
    "how may i assist",
    "what can i do for you",
    "what can i help you with",
    "is there anything else i can",
    "anything else i can help",
    "can i help you with anything",
];

/// A turn that overlaps its own earlier turns this much (share of its word 3-grams) repeats them.
pub const REPEAT_OVERLAP: f64 = 0.6;

/// A user turn longer than this many words, and than three times the user's longest turn in
/// the thread, is over-long.
pub const LONG_WORDS: usize = 200;

/// The user's turn reads as the assistant's: assistant phrasing, or an offer of help.
pub fn role_flip(text: &str) -> bool {
    let t = text.to_lowercase().replace('’', "'");
    assistant_speak(text) || HELP_OFFERS.iter().any(|p| t.contains(p))
}

fn trigrams(text: &str) -> HashSet<Vec<String>> {
    let w: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|s| !s.is_empty())
        .map(|s| s.to_lowercase())
        .collect();
    w.windows(3).map(|g| g.to_vec()).collect()
}

/// The share of `text`'s word 3-grams found in `earlier` (texts under three words count as a
/// repeat only when an earlier text is the same, case and spacing aside).
pub fn overlap(text: &str, earlier: &[&str]) -> f64 {
    let mine = trigrams(text);
    if mine.is_empty() {
        let norm = |s: &str| {
            s.split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase()
        };
        let n = norm(text);
        return if !n.is_empty() && earlier.iter().any(|e| norm(e) == n) {
            1.0
        } else {
            0.0
        };
    }
    let before: HashSet<Vec<String>> = earlier.iter().flat_map(|e| trigrams(e)).collect();
    mine.iter().filter(|g| before.contains(*g)).count() as f64 / mine.len() as f64
}

/// The flags of one conversation: indices (into the transcript's turns) of the user turns that
/// show each fault, and whether it ended early.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Diagnostics {
    /// Generated user turns, the denominator of the per-turn rates.
    pub user_turns: usize,
    pub role_flips: Vec<usize>,
    pub repeats: Vec<usize>,
    pub empty: Vec<usize>,
    pub over_long: Vec<usize>,
    /// The user ended the conversation before any assistant turn held one of the table's
    /// `addressed_when` texts (None: the table names none, or the user did not end it).
    pub early_end: Option<bool>,
}

/// The diagnostics of a transcript under its conversation table.
pub fn diagnose(t: &Transcript, table: &Conversation) -> Diagnostics {
    let mut d = Diagnostics::default();
    let own_thread_longest = t
        .turns
        .iter()
        .filter(|x| !x.generated && x.speaker == Speaker::User)
        .map(|x| word_count(&x.text))
        .max()
        .unwrap_or(0);
    let long = LONG_WORDS.max(3 * own_thread_longest);
    let mut earlier: Vec<&str> = vec![];
    for (i, turn) in t.turns.iter().enumerate() {
        if turn.speaker != Speaker::User {
            continue;
        }
        if turn.generated {
            d.user_turns += 1;
            let text = turn.text.trim();
            if text.is_empty() {
                // An empty turn that ends the conversation is only the marker: not a fault.
                if turn.marker.is_none() {
                    d.empty.push(i);
                }
            } else {
                if role_flip(text) {
                    d.role_flips.push(i);
                }
                if overlap(text, &earlier) >= REPEAT_OVERLAP {
                    d.repeats.push(i);
                }
                if word_count(text) > long {
                    d.over_long.push(i);
                }
            }
        }
        earlier.push(&turn.text);
    }
    if !table.addressed_when.is_empty() && t.end.reason == EndReason::UserEnded {
        let addressed = |x: &Turn| {
            let text = x.text.to_lowercase();
            table
                .addressed_when
                .iter()
                .any(|m| text.contains(&m.to_lowercase()))
        };
        d.early_end = Some(
            !t.turns
                .iter()
                .any(|x| x.speaker == Speaker::Assistant && addressed(x)),
        );
    }
    d
}

#[cfg(test)]
mod tests {
    use super::super::{End, Turn};
    use super::*;

    fn turn(speaker: Speaker, text: &str, generated: bool) -> Turn {
        Turn {
            generated,
            ..Turn::said(speaker, text)
        }
    }

    fn transcript(turns: Vec<Turn>, reason: EndReason) -> Transcript {
        Transcript {
            scenario: "x".into(),
            seed: 0,
            turns,
            end: End {
                reason,
                detail: None,
            },
        }
    }

    use Speaker::{Assistant as A, User as U};

    #[test]
    fn a_user_who_answers_as_the_assistant_is_a_role_flip() {
        let t = transcript(
            vec![
                turn(A, "Hi, how can I help you today?", false),
                turn(U, "My order never arrived.", true),
                turn(A, "Sorry to hear that. What is the order number?", true),
                turn(
                    U,
                    "Thank you for reaching out! I'd be happy to help you track your order.",
                    true,
                ),
                turn(A, "...", true),
                turn(U, "Is there anything else I can do for you today?", true),
            ],
            EndReason::MaxTurns,
        );
        let d = diagnose(&t, &Conversation::default());
        assert_eq!(d.user_turns, 3);
        assert_eq!(d.role_flips, vec![3, 5]);
        assert!(d.repeats.is_empty() && d.empty.is_empty() && d.over_long.is_empty());
        assert_eq!(d.early_end, None);
    }

    #[test]
    fn repeating_an_earlier_turn_is_caught_and_new_text_is_not() {
        let first = "I need to change my flight to Boston, I want to fly a day later.";
        let t = transcript(
            vec![
                turn(U, first, false),
                turn(A, "Which booking?", false),
                turn(U, "QX7M2L, Whitaker.", true),
                turn(A, "There is a fee.", true),
                // Its first turn again, lightly reworded.
                turn(
                    U,
                    "I need to change my flight to Boston. I want to fly a day later!",
                    true,
                ),
                turn(A, "Okay.", true),
                turn(U, "qx7m2l,   WHITAKER.", true),
                turn(A, "Okay.", true),
                turn(U, "", true),
            ],
            EndReason::MaxTurns,
        );
        let d = diagnose(&t, &Conversation::default());
        assert_eq!(d.user_turns, 4);
        assert_eq!(d.repeats, vec![4, 6]);
        assert_eq!(d.empty, vec![8]);
        assert!(d.role_flips.is_empty());
    }

    #[test]
    fn ending_before_the_intent_is_addressed_is_an_early_end() {
        let table = Conversation {
            addressed_when: vec!["Confirmation number".into()],
            ..Default::default()
        };
        let mut ended = turn(U, "", true);
        ended.marker = Some("<|endconversation|>".into());
        let early = transcript(
            vec![
                turn(U, "Move my flight please.", true),
                turn(A, "Sure, one moment.", true),
                ended.clone(),
            ],
            EndReason::UserEnded,
        );
        let d = diagnose(&early, &table);
        assert_eq!(d.early_end, Some(true));
        // A marker-only last turn is how the user ends, not an empty turn.
        assert!(d.empty.is_empty());
        let done = transcript(
            vec![
                turn(U, "Move my flight please.", true),
                turn(A, "Done. Your confirmation number is 88.", true),
                ended,
            ],
            EndReason::UserEnded,
        );
        assert_eq!(diagnose(&done, &table).early_end, Some(false));
        // The limit, not the user, ended it: no early end either way.
        let limit = transcript(done.turns.clone(), EndReason::MaxTurns);
        assert_eq!(diagnose(&limit, &table).early_end, None);
    }

    #[test]
    fn a_turn_far_longer_than_the_user_writes_is_over_long() {
        let long = "word ".repeat(LONG_WORDS + 1);
        let t = transcript(
            vec![turn(U, "short one", false), turn(U, &long, true)],
            EndReason::MaxTurns,
        );
        assert_eq!(diagnose(&t, &Conversation::default()).over_long, vec![1]);
        // A user whose own thread turns are long may write long.
        let own = "w ".repeat(100);
        let t = transcript(
            vec![turn(U, &own, false), turn(U, &long, true)],
            EndReason::MaxTurns,
        );
        assert!(diagnose(&t, &Conversation::default()).over_long.is_empty());
    }
}
