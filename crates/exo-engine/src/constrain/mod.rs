//! Constrained decoding: every token that cannot continue a valid document is masked before
//! sampling, so the output is always a JSON value of the requested shape.
//!
//! - [`JsonGrammar`]: what to generate, compiled once per request: any JSON object (OpenAI's
//!   `json_object`) or the values of a JSON Schema (`json_schema`; see [`JsonGrammar::from_schema`]
//!   for the keywords enforced), optionally between fixed texts (tool-call tags).
//! - [`TokenTrie`]: the vocabulary's byte strings as a trie, built once per tokenizer.
//! - [`Constraint`]: the two together, the value of [`crate::GenerateParams::constraint`].
//! - [`ConstraintState`]: one generation's position in the document: masks logits, advances
//!   past each sampled token.
//!
//! The automaton reads bytes, so a token may end inside a UTF-8 character, an escape or a
//! number, or span several parts of the document (`"},`). Properties are generated in schema
//! order; optional ones may be left out; additional ones (where the schema allows them) come
//! only once the required ones are written. Whitespace between tokens is bounded (a newline and up
//! to 20 spaces) and so are digits, so a model cannot loop on them; once the document is complete
//! and nothing may follow, generation ends.

mod disjoint;
mod grammar;
mod matcher;
mod schema;
mod trie;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use trie::TokenTrie;

use crate::EngineError;
use grammar::Grammar;
use matcher::{Scratch, Stacks};
use trie::Walk;

/// A JSON Schema that cannot be enforced: a keyword exo does not support, a malformed value or
/// a schema no finite document satisfies.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("json schema at {path}: {message}")]
pub struct SchemaError {
    /// JSON pointer of the schema at fault (`#` is the root, `#/properties/name` a property's).
    pub path: String,
    /// What is wrong, naming the keyword.
    pub message: String,
}

/// A compiled JSON grammar: one JSON value of a given shape, optionally between fixed texts.
#[derive(Clone, Debug)]
pub struct JsonGrammar {
    g: Grammar,
}

impl JsonGrammar {
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    pub fn any_object() -> Self {
        Self::from_schema(&serde_json::json!({"type": "object"})).expect("the object schema compiles")
    }

    /// The values of a JSON Schema (OpenAI's `json_schema`). Enforced: `type` (one or a list),
    /// `properties` (generated in schema order), `required`, `additionalProperties`, `enum`,
    /// `const`, `items`, `prefixItems`, `minItems`, `maxItems`, `anyOf`, `oneOf` (alternatives
    /// must be provably disjoint), `allOf` with one schema, `$ref` into the same document
    /// (`#/$defs/..`, `#/definitions/..`; recursion allowed), `minLength`, `maxLength`
    /// (characters), `nullable`. Annotations (`title`, `description`, `default`, ...) are
    /// ignored; any other keyword (`pattern`, `format`, `minimum`, ...) is an error naming it.
    pub fn from_schema(schema: &Value) -> Result<Self, SchemaError> {
        schema::compile(schema).map(|g| Self { g })
    }

    /// This grammar with `prefix` before the value and `suffix` after it (whitespace may
    /// separate them from the value), e.g. `<tool_call>` and `</tool_call>`.
    pub fn with_text_around(mut self, prefix: &str, suffix: &str) -> Self {
        self.g.prefix = prefix.as_bytes().into();
        self.g.suffix = suffix.as_bytes().into();
        self
    }

    /// Whether `text` is a complete document of this grammar.
    pub fn accepts(&self, text: &[u8]) -> bool {
        let (mut cur, mut next, mut s) = (Stacks::start(&self.g), Stacks::default(), Scratch::default());
        for &b in text {
            matcher::advance_all(&self.g, &mut s, &cur, b, &mut next);
            std::mem::swap(&mut cur, &mut next);
        }
        (0..cur.len()).any(|i| matcher::can_end(&self.g, &mut s, cur.get(i)))
    }
}

/// What a constrained generation must produce and the vocabulary to produce it with: the value
/// of [`crate::GenerateParams::constraint`].
#[derive(Clone, Debug)]
pub struct Constraint {
    grammar: JsonGrammar,
    trie: Arc<TokenTrie>,
}

impl Constraint {
    /// `grammar` over the vocabulary `trie` (which must be the generating model's).
    pub fn new(grammar: JsonGrammar, trie: Arc<TokenTrie>) -> Self {
        Self { grammar, trie }
    }

    /// The grammar.
    pub fn grammar(&self) -> &JsonGrammar {
        &self.grammar
    }
}

/// One generation's position in a constrained document. Cloning copies the position (to try a
/// token without committing to it).
#[derive(Clone)]
pub struct ConstraintState {
    c: Arc<Constraint>,
    cur: Stacks,
    next: Stacks,
    saved: Stacks,
    scratch: Scratch,
    walk: Walk,
    /// Bitset over token ids from the last [`ConstraintState::compute_mask`].
    allowed: Vec<u64>,
    masked: Vec<f32>,
    mask_time: Duration,
    masks: u32,
}

impl std::fmt::Debug for ConstraintState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConstraintState({} readings, {} masks)", self.cur.len(), self.masks)
    }
}

impl ConstraintState {
    /// The start of a document of `c`.
    pub fn new(c: Arc<Constraint>) -> Self {
        let words = c.trie.vocab_size().div_ceil(64);
        Self {
            cur: Stacks::start(&c.grammar.g),
            c,
            next: Stacks::default(),
            saved: Stacks::default(),
            scratch: Scratch::default(),
            walk: Walk::default(),
            allowed: vec![0; words],
            masked: Vec::new(),
            mask_time: Duration::ZERO,
            masks: 0,
        }
    }

    /// Finds the tokens that may come next; returns how many there are.
    pub fn compute_mask(&mut self) -> usize {
        let start = Instant::now();
        self.c.trie.fill_mask(&self.c.grammar.g, &self.cur, &mut self.walk, &mut self.allowed);
        self.mask_time += start.elapsed();
        self.masks += 1;
        self.allowed.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether token `id` was allowed by the last [`ConstraintState::compute_mask`].
    pub fn is_allowed(&self, id: u32) -> bool {
        self.allowed.get(id as usize / 64).is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// `logits` with every token that cannot come next set to minus infinity.
    pub fn mask_logits(&mut self, logits: &[f32]) -> Result<&[f32], EngineError> {
        if self.compute_mask() == 0 {
            return Err(EngineError::Constraint("no token of the vocabulary can continue the document".into()));
        }
        self.masked.clear();
        self.masked.extend_from_slice(logits);
        for (i, l) in self.masked.iter_mut().enumerate() {
            if self.allowed.get(i / 64).is_none_or(|w| w & (1 << (i % 64)) == 0) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(&self.masked)
    }

    /// Advances past token `id`; an error if the document cannot continue with it.
    pub fn accept(&mut self, id: u32) -> Result<(), EngineError> {
        if self.c.trie.eog_ids().contains(&id) {
            return if self.can_end() {
                Ok(())
            } else {
                Err(EngineError::Constraint(format!("end-of-generation token {id} before the document is complete")))
            };
        }
        let c = Arc::clone(&self.c);
        let ok = c.trie.token_bytes(id).is_some_and(|bytes| !bytes.is_empty() && self.accept_bytes(bytes));
        if ok {
            Ok(())
        } else {
            Err(EngineError::Constraint(format!("token {id} cannot continue the document")))
        }
    }

    /// Whether token `id` may come next, checked byte by byte without the trie (for checks of
    /// a single token; [`ConstraintState::compute_mask`] finds them all at once).
    pub fn can_accept(&mut self, id: u32) -> bool {
        if self.c.trie.eog_ids().contains(&id) {
            return self.can_end();
        }
        let c = Arc::clone(&self.c);
        let Some(bytes) = c.trie.token_bytes(id) else { return false };
        self.saved.assign(&self.cur);
        let mut alive = true;
        for &b in bytes {
            matcher::advance_all(&c.grammar.g, &mut self.scratch, &self.cur, b, &mut self.next);
            std::mem::swap(&mut self.cur, &mut self.next);
            alive = self.cur.len() > 0;
            if !alive {
                break;
            }
        }
        self.cur.assign(&self.saved);
        alive
    }

    /// Advances past `bytes`; returns false (and leaves the state as it was) if the document
    /// cannot continue with them.
    pub fn accept_bytes(&mut self, bytes: &[u8]) -> bool {
        self.saved.assign(&self.cur);
        for &b in bytes {
            matcher::advance_all(&self.c.grammar.g, &mut self.scratch, &self.cur, b, &mut self.next);
            std::mem::swap(&mut self.cur, &mut self.next);
            if self.cur.len() == 0 {
                self.cur.assign(&self.saved);
                return false;
            }
        }
        true
    }

    /// Whether the document is complete (end-of-generation is allowed).
    pub fn can_end(&mut self) -> bool {
        (0..self.cur.len()).any(|i| matcher::can_end(&self.c.grammar.g, &mut self.scratch, self.cur.get(i)))
    }

    /// Whether the document is complete and nothing may follow it, so generation should end.
    pub fn is_finished(&self) -> bool {
        self.cur.len() > 0 && (0..self.cur.len()).all(|i| matcher::is_done(self.cur.get(i)))
    }

    /// Masks computed so far and the time they took.
    pub fn mask_stats(&self) -> (u32, Duration) {
        (self.masks, self.mask_time)
    }
}

#[cfg(test)]
mod tests;
