//! Splitting special-token texts out of the input before BPE/SPM, as llama.cpp's
//! `tokenizer_st_partition` does.
//!
//! llama.cpp takes the control, user-defined and unknown tokens longest text first and, for each,
//! cuts every remaining plain-text fragment at that token's leftmost non-overlapping occurrences.
//! That is what happens here too, but only for the tokens that occur in the text at all: one
//! Aho-Corasick pass finds those first. Gemma 3 has ~6,400 special tokens, and scanning the text
//! once per token would dominate tokenization; collecting every (overlapping) occurrence instead
//! would take memory proportional to the input times the number of nested matches (runs of spaces
//! match dozens of Gemma's whitespace tokens at every position).

use std::ops::Range;

use aho_corasick::{AhoCorasick, MatchKind};

/// A piece of the partitioned input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// Plain text still to be tokenized: a byte range of the input.
    Text(Range<usize>),
    /// A special token found in the input.
    Token(u32),
}

/// One special token as the partitioner sees it.
pub(crate) struct SpecialToken {
    /// Token id.
    pub(crate) id: u32,
    /// Token text (non-empty).
    pub(crate) text: String,
    /// Matched only when the caller asks to parse special tokens (control and unknown tokens).
    pub(crate) needs_parse_special: bool,
    /// Swallow whitespace to the left of a match (llama.cpp's LSTRIP attribute).
    pub(crate) lstrip: bool,
    /// Swallow whitespace to the right of a match (RSTRIP).
    pub(crate) rstrip: bool,
}

/// The compiled partitioner.
pub(crate) struct SpecialMatcher {
    ac: Option<AhoCorasick>,
    /// Indexed by Aho-Corasick pattern id, in priority order (pattern id = priority).
    tokens: Vec<SpecialToken>,
}

impl SpecialMatcher {
    /// Builds the matcher; `tokens` in any order.
    pub(crate) fn new(mut tokens: Vec<SpecialToken>) -> Result<Self, String> {
        tokens.retain(|t| !t.text.is_empty());
        // llama.cpp sorts by text length, longest first (its sort is unstable; ties go by id here).
        tokens.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
        let ac = if tokens.is_empty() {
            None
        } else {
            let ac = AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .build(tokens.iter().map(|t| t.text.as_bytes()))
                .map_err(|e| format!("special-token matcher: {e}"))?;
            Some(ac)
        };
        Ok(Self { ac, tokens })
    }

    /// Partitions `text` into plain-text fragments and special tokens, in order.
    pub(crate) fn partition(&self, text: &str, parse_special: bool, out: &mut Vec<Fragment>) {
        out.clear();
        if text.is_empty() {
            return;
        }
        out.push(Fragment::Text(0..text.len()));
        let Some(ac) = &self.ac else { return };
        let mut present = vec![false; self.tokens.len()];
        for m in ac.find_overlapping_iter(text) {
            present[m.pattern().as_usize()] = true;
        }
        let mut next = Vec::new();
        for (tok, _) in self.tokens.iter().zip(&present).filter(|(_, &p)| p) {
            if !parse_special && tok.needs_parse_special {
                continue;
            }
            next.clear();
            for frag in out.drain(..) {
                match frag {
                    Fragment::Text(r) => split_fragment(text, r, tok, &mut next),
                    token => next.push(token),
                }
            }
            std::mem::swap(out, &mut next);
        }
    }
}

/// Cuts the text fragment `r` at the leftmost non-overlapping occurrences of `tok`.
fn split_fragment(text: &str, r: Range<usize>, tok: &SpecialToken, out: &mut Vec<Fragment>) {
    let bytes = text.as_bytes();
    let (mut base, end) = (r.start, r.end);
    // Fragment bounds and match bounds are char boundaries, so `get` always succeeds.
    while let Some(i) = text.get(base..end).and_then(|s| s.find(tok.text.as_str())) {
        let m = base + i;
        let mut left_end = m;
        if tok.lstrip {
            while left_end > base && is_c_space(bytes[left_end - 1]) {
                left_end -= 1;
            }
        }
        if left_end > base {
            out.push(Fragment::Text(base..left_end));
        }
        out.push(Fragment::Token(tok.id));
        base = m + tok.text.len();
        if tok.rstrip {
            while base < end && is_c_space(bytes[base]) {
                base += 1;
            }
        }
    }
    if base < end {
        out.push(Fragment::Text(base..end));
    }
}

/// C `isspace` in the "C" locale, which llama.cpp uses for lstrip/rstrip.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(id: u32, text: &str, control: bool) -> SpecialToken {
        SpecialToken { id, text: text.into(), needs_parse_special: control, lstrip: false, rstrip: false }
    }

    #[test]
    fn longest_first_and_user_defined_always() {
        let m = SpecialMatcher::new(vec![
            tok(1, "<a>", true),
            tok(2, "<a><b>", true),
            tok(3, "\n\n", false),
            tok(4, "\n", false),
        ])
        .expect("builds");
        let mut out = Vec::new();
        m.partition("x<a><b>\n\n\ny<a>", true, &mut out);
        assert_eq!(
            out,
            [
                Fragment::Text(0..1),
                Fragment::Token(2),
                Fragment::Token(3),
                Fragment::Token(4),
                Fragment::Text(10..11),
                Fragment::Token(1)
            ]
        );
        m.partition("x<a>\n", false, &mut out);
        assert_eq!(out, [Fragment::Text(0..4), Fragment::Token(4)]);
    }
}
