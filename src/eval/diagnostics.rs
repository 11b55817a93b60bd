//! Known failure modes of user simulators, measured on every run: replies that sound like an
//! AI assistant, replies that copy the thread, replies far longer or shorter than the person's,
//! and the same reply whatever the thread (low distinct-2 across scenarios).

use std::collections::HashSet;

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

pub fn word_count(s: &str) -> usize {
    words(s).len()
}

/// Phrases people rarely write in a thread and assistants write all the time.
const ASSISTANT_PHRASES: &[&str] = &[
    "as an ai",
    "as a language model",
    "i'm an ai",
    "i am an ai",
    "i'm here to help",
    "i am here to help",
    "i'd be happy to help",
    "i would be happy to help",
    "happy to help",
    "how can i help you",
    "how can i assist you",
    "i hope this helps",
    "hope this helps!",
    "feel free to ask",
    "feel free to reach out",
    "let me know if you have any",
    "let me know if there's anything",
    "great question",
    "certainly! here",
    "sure! here",
    "here are some tips",
    "it's important to note",
    "it is important to note",
    "i understand your concern",
    "i understand your frustration",
    "thank you for sharing",
    "in conclusion,",
];

/// Whether a reply reads like an AI assistant talking.
pub fn assistant_speak(reply: &str) -> bool {
    let r = reply.to_lowercase().replace('’', "'");
    ASSISTANT_PHRASES.iter().any(|p| r.contains(p))
}

/// Whether a reply is mostly copied from the thread: at least half of its word 5-grams occur in
/// the context (replies under five words count as copies only when the context holds them whole).
pub fn context_copy(reply: &str, context: &str) -> bool {
    let r = words(reply);
    let c = words(context);
    if r.is_empty() {
        return false;
    }
    if r.len() < 5 {
        return c.windows(r.len()).any(|w| w == r.as_slice());
    }
    let ctx: HashSet<&[String]> = c.windows(5).collect();
    let grams: Vec<&[String]> = r.windows(5).collect();
    let copied = grams.iter().filter(|g| ctx.contains(*g)).count();
    copied * 2 >= grams.len()
}

/// Distinct word bigrams over all bigrams of `replies` (1.0: no bigram repeats anywhere).
pub fn distinct_2<'a>(replies: impl IntoIterator<Item = &'a str>) -> f64 {
    let mut all = 0usize;
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for r in replies {
        let w = words(r);
        for p in w.windows(2) {
            all += 1;
            seen.insert((p[0].clone(), p[1].clone()));
        }
    }
    if all == 0 {
        return 0.0;
    }
    seen.len() as f64 / all as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assistant_speak_is_caught_and_people_are_not() {
        assert!(assistant_speak(
            "Great question! Here are some tips for your garden."
        ));
        assert!(assistant_speak(
            "I hope this helps! Let me know if you have any questions."
        ));
        assert!(!assistant_speak(
            "lol no. my landlord tried that too, small claims sorted it"
        ));
    }

    #[test]
    fn context_copy_needs_most_of_the_reply() {
        let ctx = "The council should trial a four-day week for all staff from next April.";
        assert!(context_copy(
            "the council should trial a four-day week for all staff",
            ctx
        ));
        assert!(!context_copy(
            "Four days? Our bins already get collected every other fortnight, mate.",
            ctx
        ));
        assert!(context_copy("four-day week", ctx));
        assert!(!context_copy("", ctx));
    }

    #[test]
    fn distinct_2_drops_when_replies_repeat() {
        let varied = distinct_2(["the cat sat", "a dog ran off"]);
        let same = distinct_2(["the cat sat", "the cat sat"]);
        assert_eq!(varied, 1.0);
        assert_eq!(same, 0.5);
    }
}
