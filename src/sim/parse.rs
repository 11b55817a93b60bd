//! Parsing a simulator's output into its tagged fields, as the HumanLM recipe's parsers do.
//!
//! - flexible: any `<tag>…</tag>` pairs, tag names case-insensitive, contents trimmed;
//! - strict: the required tags in order, separated only by spaces and newlines, nothing else
//!   (anything else makes the output invalid), contents kept exactly — the recipe's anchored
//!   regex, lazy contents included;
//! - strict-thinking: an output starting with the first tag as it is, else everything up to the
//!   first `</think>` dropped, then strict;
//! - response extraction: think blocks stripped, then `<response>…</response>`, else the text
//!   after `<response>`, else the text before `</response>`, else everything.

/// Every `<tag>content</tag>` pair, in order of appearance; tag names lowercased.
pub fn flexible(text: &str) -> Vec<(String, String)> {
    let lower = text.to_ascii_lowercase();
    let mut out = vec![];
    let mut at = 0;
    while let Some(open) = lower[at..].find('<').map(|i| at + i) {
        let Some(close) = lower[open..].find('>').map(|i| open + i) else {
            break;
        };
        let name = &lower[open + 1..close];
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            at = open + 1;
            continue;
        }
        let end_tag = format!("</{name}>");
        match lower[close + 1..].find(&end_tag).map(|i| close + 1 + i) {
            Some(end) => {
                out.push((name.to_string(), text[close + 1..end].trim().to_string()));
                at = end + end_tag.len();
            }
            None => at = close + 1,
        }
    }
    out
}

/// The contents of `tags`, if `text` is exactly those tags in order: the HumanLM recipe's
/// `parse_fields_strict`. The text is stripped of spaces and newlines at both ends; it must then
/// be `<tag>…</tag>` blocks in order with only spaces and newlines between them, tags matched
/// case-insensitively, each block's content kept exactly (not trimmed) and as short as the rest
/// allows (the recipe's lazy `(.*?)` in one anchored regex, which Rust's `regex` matches with
/// the same leftmost-first semantics, so a content may hold a later copy of its own tag).
pub fn strict(text: &str, tags: &[&str]) -> Option<Vec<String>> {
    let s = text.trim_matches([' ', '\n']);
    if s.is_empty() || tags.is_empty() {
        return None;
    }
    let blocks: Vec<String> = tags
        .iter()
        .map(|t| {
            let t = regex::escape(t);
            format!("<{t}>(.*?)</{t}>")
        })
        .collect();
    let pattern = format!("(?is)^{}$", blocks.join("[ \n]*"));
    let re = regex::Regex::new(&pattern).ok()?;
    let caps = re.captures(s)?;
    Some(
        (1..=tags.len())
            .map(|i| caps.get(i).map_or("", |m| m.as_str()).to_string())
            .collect(),
    )
}

/// Strict parsing of a thinking-on output: the recipe's `parse_fields_strict_thinking`. An
/// output that already starts with the first tag is read as it is; otherwise everything up to
/// the first `</think>` (or `<\think>`) is dropped and the rest must start with the first tag.
/// A `think` among the tags (a think-then-reply set) is read from the start.
pub fn strict_thinking(text: &str, tags: &[&str]) -> Option<Vec<String>> {
    let s = text.trim_matches([' ', '\n']);
    let first = tags.first()?;
    let starts = |s: &str| {
        s.get(..first.len() + 2)
            .is_some_and(|h| h.eq_ignore_ascii_case(&format!("<{first}>")))
    };
    if tags.contains(&"think") || starts(s) {
        return strict(s, tags);
    }
    let lower = s.to_ascii_lowercase();
    let end = ["</think>", "<\\think>"]
        .iter()
        .filter_map(|m| lower.find(m).map(|i| i + m.len()))
        .min()?;
    let rest = s[end..].trim_matches([' ', '\n']);
    if !starts(rest) {
        return None;
    }
    strict(rest, tags)
}

/// The inner monologue of a thinking-on output (the prompt already opened `<think>`).
pub fn think(text: &str) -> Option<String> {
    let end = text.find("</think>")?;
    let inner = &text[..end];
    let inner = inner
        .rfind("<think>")
        .map(|i| &inner[i + "<think>".len()..])
        .unwrap_or(inner);
    Some(inner.trim().to_string())
}

/// Remove `<think>…</think>` blocks, and an unopened leading block ending in `</think>`.
fn strip_think(text: &str) -> String {
    let mut s = text.to_string();
    if let Some(end) = s.find("</think>") {
        if s[..end].find("<think>").is_none() {
            s = s[end + "</think>".len()..].to_string();
        }
    }
    while let Some(start) = s.find("<think>") {
        match s[start..].find("</think>") {
            Some(len) => s.replace_range(start..start + len + "</think>".len(), ""),
            None => s.truncate(start),
        }
    }
    s
}

/// The reply text, by the method's fallback chain.
pub fn extract_response(text: &str) -> String {
    let s = strip_think(text);
    let (open, close) = ("<response>", "</response>");
    if let Some(a) = s.find(open) {
        let after = &s[a + open.len()..];
        return match after.find(close) {
            Some(b) => after[..b].trim().to_string(),
            None => after.trim().to_string(),
        };
    }
    if let Some(b) = s.find(close) {
        return s[..b].trim().to_string();
    }
    s.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TAGS: [&str; 7] = [
        "stance",
        "emotion",
        "belief",
        "value",
        "goal",
        "communication",
        "response",
    ];

    fn render(fields: &[String], seps: &[String]) -> String {
        TAGS.iter()
            .zip(fields)
            .zip(seps)
            .map(|((t, f), sep)| format!("{sep}<{t}>{f}</{t}>"))
            .collect()
    }

    /// Field text: anything without angle brackets (they would be tags).
    fn field() -> impl Strategy<Value = String> {
        "[^<>]{0,40}"
    }

    fn sep() -> impl Strategy<Value = String> {
        "[ \n]{0,3}"
    }

    proptest! {
        #[test]
        fn strict_reads_back_what_was_written(fields in proptest::collection::vec(field(), 7), seps in proptest::collection::vec(sep(), 7)) {
            let text = render(&fields, &seps);
            let got = strict(&text, &TAGS).expect("valid");
            // Strict keeps each content exactly; the flexible parse and the reply trim.
            prop_assert_eq!(&got, &fields);
            let want: Vec<String> = fields.iter().map(|f| f.trim().to_string()).collect();
            let flex: Vec<String> = flexible(&text).into_iter().map(|(_, c)| c).collect();
            prop_assert_eq!(flex, want.clone());
            prop_assert_eq!(extract_response(&text), want[6].clone());
        }

        #[test]
        fn strict_rejects_text_outside_tags(fields in proptest::collection::vec(field(), 7), junk in "[a-zA-Z]{1,10}", at in 0usize..8) {
            let seps: Vec<String> = (0..7).map(|i| if i == at { junk.clone() } else { String::new() }).collect();
            let mut text = render(&fields, &seps);
            if at == 7 {
                text.push_str(&junk);
            }
            prop_assert!(strict(&text, &TAGS).is_none());
        }

        #[test]
        fn strict_rejects_wrong_order(fields in proptest::collection::vec(field(), 7)) {
            let seps = vec![String::new(); 7];
            let text = render(&fields, &seps);
            let mut swapped = TAGS;
            swapped.swap(0, 1);
            prop_assert!(strict(&text, &swapped).is_none());
        }

        #[test]
        fn thinking_is_dropped(thought in field(), reply in field()) {
            let text = format!("{thought}</think>\n\n<response>{reply}</response>");
            prop_assert_eq!(strict_thinking(&text, &["response"]), Some(vec![reply.clone()]));
            prop_assert_eq!(think(&text), Some(thought.trim().to_string()));
            prop_assert_eq!(extract_response(&text), reply.trim().to_string());
        }
    }

    #[test]
    fn flexible_is_case_insensitive_and_skips_unclosed() {
        let got = flexible("x <Stance> yes </STANCE> <goal>unclosed <emotion>calm</emotion>");
        assert_eq!(
            got,
            vec![
                ("stance".into(), "yes".into()),
                ("emotion".into(), "calm".into())
            ]
        );
    }

    #[test]
    fn response_fallbacks() {
        assert_eq!(
            extract_response("<think>hmm</think><response> hi </response> tail"),
            "hi"
        );
        assert_eq!(
            extract_response("intro <response> open ended"),
            "open ended"
        );
        assert_eq!(extract_response("just text </response> more"), "just text");
        assert_eq!(extract_response("  plain  "), "plain");
        assert_eq!(extract_response("thought only</think> after"), "after");
    }

    /// Cases derived by hand from the recipe's `parse_fields_strict(_thinking)` regexes.
    #[test]
    fn strict_follows_the_recipes_regex() {
        let one = |t: &str| strict(t, &["response"]);
        assert_eq!(one("<response>a</response>"), Some(vec!["a".into()]));
        assert_eq!(
            one(" \n<Response> a \n</RESPONSE>\n "),
            Some(vec![" a \n".into()])
        );
        // The lazy content grows until the anchored end matches: a repeated tag is content.
        assert_eq!(
            one("<response>a</response><response>b</response>"),
            Some(vec!["a</response><response>b".into()])
        );
        assert_eq!(
            one("<response>a <response> b</response>"),
            Some(vec!["a <response> b".into()])
        );
        // Only spaces and newlines are stripped or allowed between blocks.
        assert!(one("\t<response>a</response>").is_none());
        assert!(one("<response>a</response>\r\n").is_none());
        assert!(strict(
            "<goal>g</goal>\t<response>r</response>",
            &["goal", "response"]
        )
        .is_none());
        assert_eq!(
            strict(
                "<goal>g</goal> \n <response>r</response>",
                &["goal", "response"]
            ),
            Some(vec!["g".into(), "r".into()])
        );
        assert!(one("").is_none() && one("x<response>a</response>").is_none());

        let think = |t: &str| strict_thinking(t, &["response"]);
        assert_eq!(
            think("<response>a</response>"),
            Some(vec!["a".into()]),
            "no think block"
        );
        assert_eq!(
            think("hmm</think>\n<response>a</response>"),
            Some(vec!["a".into()])
        );
        assert_eq!(
            think("hmm<\\think> <response>a</response>"),
            Some(vec!["a".into()])
        );
        assert_eq!(
            think("hmm</THINK><response>a</response>"),
            Some(vec!["a".into()])
        );
        assert!(think("hmm</think>\nso <response>a</response>").is_none());
        assert!(think("no end of thought <response>a</response>").is_none());
        // With `think` among the tags the output is read from its start.
        assert_eq!(
            strict_thinking(
                "<think>t</think>\n<response>r</response>",
                &["think", "response"]
            ),
            Some(vec!["t".into(), "r".into()])
        );
    }
}
