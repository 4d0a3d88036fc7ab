//! Incremental detokenization for streaming output.

use crate::Tokenizer;

/// Turns generated token ids into text as they arrive. A token may end in the middle of a UTF-8
/// character (byte tokens, byte-level BPE pieces of emoji and CJK); those bytes are held until
/// the character completes, so every returned string is whole characters. Bytes that can never
/// form a character are emitted as U+FFFD as soon as that is certain.
pub struct StreamDecoder {
    tok: Tokenizer,
    skip_special: bool,
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder for ids of `tok`; `skip_special` as in [`Tokenizer::decode`].
    pub fn new(tok: &Tokenizer, skip_special: bool) -> Self {
        Self { tok: tok.clone(), skip_special, pending: Vec::with_capacity(16) }
    }

    /// Adds one token; returns the text that became complete, if any.
    pub fn push(&mut self, id: u32) -> Option<String> {
        if self.skip_special && self.tok.is_special(id) {
            return None;
        }
        self.pending.extend_from_slice(self.tok.piece(id));
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `valid` bytes were just checked to be UTF-8.
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete character at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                        // Bytes no continuation can fix.
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// Flushes held bytes (an unfinished character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
