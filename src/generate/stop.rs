//! Stop strings over streamed text: text that might be the start of a stop string is held back
//! until it is known not to be, so a stop string never leaks into the stream.

pub struct StopMatcher {
    stops: Vec<String>,
    keep: bool,
    /// Bytes of the decoded text already released.
    emitted: usize,
    /// The latest full text.
    full: String,
}

impl StopMatcher {
    pub fn new(stops: &[String], keep: bool) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            keep,
            emitted: 0,
            full: String::new(),
        }
    }

    /// Feed the full decoded text so far; returns the newly releasable text and the stop string
    /// that ended it, if one did.
    pub fn push(&mut self, full: &str) -> (String, Option<String>) {
        self.full = full.to_string();
        // The earliest stop string wins; search from slightly before the released point, since a
        // stop string may straddle it.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.emitted.saturating_sub(longest).min(full.len());
        while !full.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| full[from..].find(s.as_str()).map(|p| (from + p, s)))
            .min_by_key(|(p, _)| *p);
        if let Some((pos, s)) = hit {
            let end = if self.keep { pos + s.len() } else { pos };
            let delta = if end > self.emitted {
                full[self.emitted..end].to_string()
            } else {
                String::new()
            };
            self.emitted = self.emitted.max(end);
            self.full.truncate(self.emitted);
            return (delta, Some(s.clone()));
        }
        let safe = self.safe_end(full);
        let delta = if safe > self.emitted {
            full[self.emitted..safe].to_string()
        } else {
            String::new()
        };
        self.emitted = self.emitted.max(safe);
        (delta, None)
    }

    /// Release whatever was held back (generation ended for another reason).
    pub fn finish(&mut self) -> String {
        let rest = if self.full.len() > self.emitted {
            self.full[self.emitted..].to_string()
        } else {
            String::new()
        };
        self.emitted = self.full.len();
        rest
    }

    /// The end of the text that can be released: not an incomplete UTF-8 sequence (decoded as
    /// U+FFFD) and not a suffix that could still grow into a stop string.
    fn safe_end(&self, full: &str) -> usize {
        let mut end = full.trim_end_matches('\u{FFFD}').len();
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if !s.is_char_boundary(k) {
                    continue;
                }
                if full[..end].ends_with(&s[..k]) {
                    end = end.min(full[..end].len() - k);
                    break;
                }
            }
        }
        while !full.is_char_boundary(end) {
            end -= 1;
        }
        end.max(self.emitted.min(full.len()))
    }
}
