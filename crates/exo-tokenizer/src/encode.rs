//! Text → token ids for GGUF vocabularies: llama.cpp's `llama_vocab::impl::tokenize` with its
//! BPE (`llm_tokenizer_bpe_session`) and SentencePiece (`llm_tokenizer_spm_session`) sessions.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::ops::Range;

use crate::special::Fragment;
use crate::unicode::byte_to_char_table;
use crate::vocab::{Algo, Vocab};

/// One symbol of a word being merged: a byte range of the word, linked to its live neighbours.
#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    n: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Splits `word` into one symbol per UTF-8 character.
fn symbols(word: &str, syms: &mut Vec<Sym>) {
    syms.clear();
    let count = word.chars().count();
    for (i, (start, c)) in word.char_indices().enumerate() {
        syms.push(Sym { start, n: c.len_utf8(), prev: i.checked_sub(1), next: (i + 1 < count).then_some(i + 1) });
    }
}

/// Merges `right` into `left`, unlinking `right`.
fn merge(syms: &mut [Sym], left: usize, right: usize) {
    let r = syms[right];
    syms[left].n += r.n;
    syms[right].n = 0;
    syms[left].next = r.next;
    if let Some(nx) = r.next {
        syms[nx].prev = Some(left);
    }
}

impl Vocab {
    /// Tokenizes `text`; `add_special` adds BOS/EOS where the vocabulary asks for them.
    pub(crate) fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>, String> {
        let mut frags = Vec::new();
        self.special.partition(text, parse_special, &mut frags);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        match &self.algo {
            Algo::Spm { byte_tokens } => {
                let mut syms = Vec::new();
                let mut heap = BinaryHeap::new();
                // The first fragment, and any fragment after a special token, gets the space
                // prefix (when the vocabulary asks for one).
                let mut prev_special = true;
                for f in &frags {
                    match f {
                        Fragment::Token(id) => {
                            out.push(*id);
                            prev_special = true;
                        }
                        Fragment::Text(r) => {
                            let mut s = String::with_capacity(r.len() + 3);
                            if self.add_space_prefix && prev_special {
                                s.push(' ');
                            }
                            // Fragment bounds are char boundaries (special texts are whole
                            // UTF-8 strings); `get` keeps a broken invariant from panicking.
                            s.push_str(text.get(r.clone()).unwrap_or_default());
                            let s = s.replace(' ', "\u{2581}");
                            self.spm(&s, byte_tokens, &mut syms, &mut heap, &mut out);
                            prev_special = false;
                        }
                    }
                }
            }
            Algo::Bpe { ranks, pre, ignore_merges } => {
                let mut words: Vec<Range<usize>> = Vec::new();
                let mut word = String::new();
                let mut key = String::new();
                let mut syms = Vec::new();
                let mut heap = BinaryHeap::new();
                let map = byte_to_char_table();
                for f in &frags {
                    match f {
                        Fragment::Token(id) => out.push(*id),
                        Fragment::Text(r) => {
                            let frag = text.get(r.clone()).unwrap_or_default();
                            pre.split(frag, &mut words)?;
                            for w in &words {
                                word.clear();
                                word.extend(frag.as_bytes()[w.clone()].iter().map(|&b| map[b as usize]));
                                self.bpe(&word, ranks, *ignore_merges, &mut key, &mut syms, &mut heap, &mut out);
                            }
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// One pre-tokenized, byte-encoded word through BPE merges.
    #[allow(clippy::too_many_arguments)]
    fn bpe(
        &self,
        word: &str,
        ranks: &HashMap<Box<str>, u32>,
        ignore_merges: bool,
        key: &mut String,
        syms: &mut Vec<Sym>,
        heap: &mut BinaryHeap<Reverse<(u32, usize, usize, usize)>>,
        out: &mut Vec<u32>,
    ) {
        if ignore_merges {
            if let Some(&id) = self.to_id.get(word) {
                out.push(id);
                return;
            }
        }
        symbols(word, syms);
        heap.clear();
        // Queues the pair (left, right) if a merge exists for it; the heap pops the lowest rank,
        // then the leftmost pair.
        let push = |syms: &[Sym], heap: &mut BinaryHeap<_>, key: &mut String, l: Option<usize>, r: Option<usize>| {
            let (Some(l), Some(r)) = (l, r) else { return };
            let (a, b) = (syms[l], syms[r]);
            let left = &word[a.start..a.start + a.n];
            let right = &word[b.start..b.start + b.n];
            // llama.cpp keys merges by the text split at the first space; a left side with a space
            // could match the wrong merge (llama.cpp asserts it never happens).
            if left.contains(' ') {
                return;
            }
            key.clear();
            key.push_str(left);
            key.push(' ');
            key.push_str(right);
            if let Some(&rank) = ranks.get(key.as_str()) {
                heap.push(Reverse((rank, l, r, a.n + b.n)));
            }
        };
        for i in 1..syms.len() {
            push(syms, heap, key, Some(i - 1), Some(i));
        }
        while let Some(Reverse((_, l, r, size))) = heap.pop() {
            let (a, b) = (syms[l], syms[r]);
            // A stale pair: one side was merged away or grew since it was queued.
            if a.n == 0 || b.n == 0 || a.n + b.n != size || a.next != Some(r) {
                continue;
            }
            merge(syms, l, r);
            let prev = syms[l].prev;
            let next = syms[l].next;
            push(syms, heap, key, prev, Some(l));
            push(syms, heap, key, Some(l), next);
        }
        let mut buf = [0u8; 4];
        for s in syms.iter().filter(|s| s.n > 0) {
            let t = &word[s.start..s.start + s.n];
            match self.to_id.get(t) {
                Some(&id) => out.push(id),
                None => {
                    // llama.cpp looks up each raw byte of the encoded text as a one-byte token;
                    // only ASCII bytes can match, the rest are dropped.
                    for b in t.bytes().filter(u8::is_ascii) {
                        if let Some(&id) = self.to_id.get(char::from(b).encode_utf8(&mut buf) as &str) {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }

    /// One fragment (spaces already escaped to ▁) through SentencePiece bigram merging.
    fn spm(
        &self,
        text: &str,
        byte_tokens: &[Option<u32>; 256],
        syms: &mut Vec<Sym>,
        heap: &mut BinaryHeap<SpmBigram>,
        out: &mut Vec<u32>,
    ) {
        symbols(text, syms);
        heap.clear();
        let push = |syms: &[Sym], heap: &mut BinaryHeap<SpmBigram>, l: Option<usize>, r: Option<usize>| {
            let (Some(l), Some(r)) = (l, r) else { return };
            let (a, b) = (syms[l], syms[r]);
            let Some(piece) = text.get(a.start..a.start + a.n + b.n) else { return };
            if let Some(&id) = self.to_id.get(piece) {
                let score = self.scores.get(id as usize).copied().unwrap_or(0.0);
                heap.push(SpmBigram { score, left: l, right: r, size: a.n + b.n });
            }
        };
        for i in 1..syms.len() {
            push(syms, heap, Some(i - 1), Some(i));
        }
        while let Some(bg) = heap.pop() {
            let (a, b) = (syms[bg.left], syms[bg.right]);
            if a.n == 0 || b.n == 0 || a.n + b.n != bg.size {
                continue;
            }
            merge(syms, bg.left, bg.right);
            let prev = syms[bg.left].prev;
            let next = syms[bg.left].next;
            push(syms, heap, prev, Some(bg.left));
            push(syms, heap, Some(bg.left), next);
        }
        for s in syms.iter().filter(|s| s.n > 0) {
            let t = &text[s.start..s.start + s.n];
            match self.to_id.get(t) {
                Some(&id) => out.push(id),
                None => {
                    // Byte fallback. A vocabulary without a byte's token makes llama.cpp throw;
                    // the unknown token stands in here.
                    for b in t.bytes() {
                        out.extend(byte_tokens[b as usize].or(self.unk));
                    }
                }
            }
        }
    }
}

/// A candidate SentencePiece merge: highest score first, then leftmost.
pub(crate) struct SpmBigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for SpmBigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for SpmBigram {}

impl PartialOrd for SpmBigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SpmBigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}
