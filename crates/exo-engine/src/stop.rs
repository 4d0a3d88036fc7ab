//! Stop strings over streamed text.
//!
//! Text is released to the caller only once it can no longer be the start of a stop string, so
//! a stop string split across tokens never leaks into the output (llama.cpp's server holds back
//! partial matches the same way).

/// Watches streamed text for any of a set of stop strings.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// What [`StopMatcher::push`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum StopScan {
    /// Text that is safe to emit (may be empty while a partial match is held back).
    Continue(String),
    /// A stop string matched: the text before it, and which string it was.
    Stop(String, String),
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), pending: String::new() }
    }

    /// Adds generated text and returns what can be emitted.
    pub fn push(&mut self, text: &str) -> StopScan {
        if self.stops.is_empty() {
            return StopScan::Continue(text.to_string());
        }
        self.pending.push_str(text);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = first {
            let stop = stop.clone();
            let before = self.pending[..at].to_string();
            self.pending.clear();
            return StopScan::Stop(before, stop);
        }
        let hold = self.partial_suffix();
        let emit_to = self.pending.len() - hold;
        let out = self.pending[..emit_to].to_string();
        self.pending.drain(..emit_to);
        StopScan::Continue(out)
    }

    /// Text held back at the end of generation (a partial match that never completed).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length in bytes of the longest suffix of `pending` that is a proper prefix of a stop
    /// string.
    fn partial_suffix(&self) -> usize {
        self.stops.iter().map(|s| partial_match(&self.pending, s)).max().unwrap_or(0)
    }
}

/// Length in bytes of the longest suffix of `text` that is a proper prefix of `pattern`, cut at
/// a char boundary: the text to hold back in case `pattern` is completed by what comes next.
pub(crate) fn partial_match(text: &str, pattern: &str) -> usize {
    let max = pattern.len().saturating_sub(1).min(text.len());
    (1..=max)
        .rev()
        .find(|&len| {
            let start = text.len() - len;
            text.is_char_boundary(start) && pattern.as_bytes().starts_with(&text.as_bytes()[start..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_partial_matches_across_pushes() {
        let mut m = StopMatcher::new(&["</end>".to_string()]);
        assert_eq!(m.push("hello </"), StopScan::Continue("hello ".into()));
        assert_eq!(m.push("en"), StopScan::Continue(String::new()));
        assert_eq!(m.push("d> tail"), StopScan::Stop(String::new(), "</end>".into()));
    }

    #[test]
    fn releases_a_false_start() {
        let mut m = StopMatcher::new(&["\n\n".to_string(), "User:".to_string()]);
        assert_eq!(m.push("a\n"), StopScan::Continue("a".into()));
        assert_eq!(m.push("b Us"), StopScan::Continue("\nb ".into()));
        assert_eq!(m.finish(), "Us");
    }

    #[test]
    fn earliest_stop_wins_and_unicode_is_safe() {
        let mut m = StopMatcher::new(&["é!".to_string(), "x".to_string()]);
        assert_eq!(m.push("caféé"), StopScan::Continue("café".into()));
        assert_eq!(m.push("! x"), StopScan::Stop(String::new(), "é!".into()));
    }
}
