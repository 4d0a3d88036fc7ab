//! The vocabulary as a byte trie, built once per tokenizer and shared, and the walk that finds
//! every token the automaton can read next.
//!
//! Tokens sorted by their bytes are the trie in pre-order, so each node's tokens are one range of
//! [`TokenTrie::ids`] and its subtree one range of nodes. The walk feeds each node's byte to the
//! automaton's stacks and prunes a subtree as soon as no stack survives. Inside a string nearly
//! every token is allowed, and walking them all would cost milliseconds on a 152k vocabulary, so
//! each node records from which UTF-8 states every token below it is plain string text; there
//! the whole range is allowed without a walk.

use exo_tokenizer::Tokenizer;

use super::grammar::Grammar;
use super::matcher::{self, plain_string_byte, utf8_step, Scratch, Stacks, UTF8_STATES};

/// The byte trie of a vocabulary, for masking tokens during constrained decoding. Build it once
/// per tokenizer ([`TokenTrie::new`]) and share it behind an `Arc`.
pub struct TokenTrie {
    nodes: Vec<TrieNode>,
    ids: Vec<u32>,
    /// Token `id`'s bytes are `bytes[offsets[id]..offsets[id + 1]]` (empty if left out).
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    eog: Vec<u32>,
    vocab_size: usize,
}

impl std::fmt::Debug for TokenTrie {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenTrie({} tokens, {} nodes)", self.ids.len(), self.nodes.len())
    }
}

#[derive(Clone, Copy, Debug)]
struct TrieNode {
    byte: u8,
    /// Bit `u`: every token below continues a JSON string as plain text from UTF-8 state `u`.
    plain: u8,
    /// Most bytes below this node.
    depth_below: u32,
    /// Index past this node's subtree.
    end: u32,
    /// `ids[tok_lo..tok_mid]` end here, `ids[tok_mid..tok_hi]` below.
    tok_lo: u32,
    tok_mid: u32,
    tok_hi: u32,
}

/// Buffers the walk reuses from one token to the next.
#[derive(Clone, Debug, Default)]
pub(crate) struct Walk {
    arena: Stacks,
    scratch: Scratch,
}

impl TokenTrie {
    /// The trie of `tok`'s vocabulary. Control tokens (`<|im_start|>`, ...), end-of-generation
    /// tokens and tokens without bytes are left out: their texts are markup, not document
    /// bytes; end-of-generation is allowed separately, once a document is complete.
    pub fn new(tok: &Tokenizer) -> Self {
        let kept = |id: u32| !tok.is_special(id) && !tok.is_eog(id);
        let mut tokens: Vec<(Vec<u8>, u32)> =
            (0..tok.vocab_size() as u32).filter(|&id| kept(id)).map(|id| (tok.token_bytes(id), id)).collect();
        let (mut bytes, mut offsets) = (Vec::new(), vec![0]);
        for id in 0..tok.vocab_size() as u32 {
            if kept(id) {
                bytes.extend_from_slice(&tok.token_bytes(id));
            }
            offsets.push(bytes.len() as u32);
        }
        tokens.retain(|(b, _)| !b.is_empty());
        tokens.sort_unstable();
        let (eog, vocab_size) = (tok.eog_ids().to_vec(), tok.vocab_size());
        let mut trie = Self { nodes: Vec::new(), ids: Vec::new(), bytes, offsets, eog, vocab_size };
        trie.build(&tokens);
        trie
    }

    /// Number of tokens in the vocabulary (ids `0..vocab_size()`).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The bytes of token `id`, if it is in the trie.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let (lo, hi) = (*self.offsets.get(id as usize)?, *self.offsets.get(id as usize + 1)?);
        Some(&self.bytes[lo as usize..hi as usize]).filter(|b| !b.is_empty())
    }

    /// The end-of-generation tokens.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    fn build(&mut self, tokens: &[(Vec<u8>, u32)]) {
        let node = |byte, at| TrieNode { byte, plain: 0, depth_below: 0, end: 0, tok_lo: at, tok_mid: at, tok_hi: at };
        self.nodes.push(node(0, 0));
        let mut path = vec![0usize];
        let mut prev: &[u8] = &[];
        for (i, (bytes, id)) in tokens.iter().enumerate() {
            let i = i as u32;
            let common = prev.iter().zip(bytes).take_while(|(a, b)| a == b).count();
            while path.len() > common + 1 {
                self.close(path.pop().unwrap_or(0), i);
            }
            for &b in &bytes[common..] {
                path.push(self.nodes.len());
                self.nodes.push(node(b, i));
            }
            if let Some(&last) = path.last() {
                self.nodes[last].tok_mid = i + 1;
            }
            self.ids.push(*id);
            prev = bytes;
        }
        while let Some(n) = path.pop() {
            self.close(n, tokens.len() as u32);
        }
        for n in (0..self.nodes.len()).rev() {
            let (mut plain, mut depth) = ((1u16 << UTF8_STATES) - 1, 0);
            for c in self.children(n) {
                let child = self.nodes[c];
                depth = depth.max(child.depth_below + 1);
                for u in 0..UTF8_STATES {
                    let ok = plain_string_byte(child.byte)
                        && utf8_step(u, child.byte).is_some_and(|next| child.plain & (1 << next) != 0);
                    if !ok {
                        plain &= !(1 << u);
                    }
                }
            }
            self.nodes[n].plain = plain as u8;
            self.nodes[n].depth_below = depth;
        }
    }

    fn close(&mut self, n: usize, tok_end: u32) {
        self.nodes[n].end = self.nodes.len() as u32;
        self.nodes[n].tok_hi = tok_end;
    }

    fn children(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        let end = self.nodes[n].end as usize;
        std::iter::successors(Some(n + 1), move |&c| self.nodes.get(c).map(|x| x.end as usize)).take_while(move |&c| c < end)
    }

    /// Sets in `allowed` (a bitset over token ids, cleared first) every token whose bytes some
    /// stack of `cur` can read, and the end-of-generation tokens if the document can end.
    pub(crate) fn fill_mask(&self, g: &Grammar, cur: &Stacks, w: &mut Walk, allowed: &mut [u64]) {
        allowed.fill(0);
        w.arena.assign(cur);
        self.visit(g, 0, 0, cur.len(), w, allowed);
        if (0..cur.len()).any(|i| matcher::can_end(g, &mut w.scratch, cur.get(i))) {
            for &id in &self.eog {
                set_bit(allowed, id);
            }
        }
    }

    /// Visits the children of trie node `node`, whose bytes so far left stacks `lo..hi` of the
    /// arena alive.
    fn visit(&self, g: &Grammar, node: usize, lo: usize, hi: usize, w: &mut Walk, allowed: &mut [u64]) {
        let end = self.nodes[node].end as usize;
        let mut c = node + 1;
        while c < end {
            let n = self.nodes[c];
            let mark = w.arena.len();
            for i in lo..hi {
                w.scratch.load(w.arena.get(i));
                matcher::advance(g, &mut w.scratch, n.byte, &mut w.arena, mark);
            }
            if w.arena.len() > mark {
                self.allow(n.tok_lo, n.tok_mid, allowed);
                if n.tok_mid < n.tok_hi {
                    let plain = w.arena.len() == mark + 1
                        && matcher::in_plain_string(g, w.arena.get(mark))
                            .is_some_and(|(u, room)| n.plain & (1 << u) != 0 && room >= n.depth_below);
                    if plain {
                        self.allow(n.tok_mid, n.tok_hi, allowed);
                    } else {
                        self.visit(g, c, mark, w.arena.len(), w, allowed);
                    }
                }
            }
            w.arena.truncate(mark);
            c = n.end as usize;
        }
    }

    fn allow(&self, lo: u32, hi: u32, allowed: &mut [u64]) {
        for &id in &self.ids[lo as usize..hi as usize] {
            set_bit(allowed, id);
        }
    }
}

fn set_bit(bits: &mut [u64], id: u32) {
    if let Some(w) = bits.get_mut(id as usize / 64) {
        *w |= 1 << (id % 64);
    }
}
