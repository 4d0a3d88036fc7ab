//! Pre-tokenization for byte-level BPE: splitting text into words before merges, the way
//! llama.cpp's `unicode_regex_split` does it.
//!
//! llama.cpp applies a list of regexes in turn, each one splitting every piece left by the
//! previous one (text between matches stays a piece too). Two expressions, GPT-2's and Llama 3's,
//! run as hand-written splitters whose edge cases differ slightly from the regexes they stand for;
//! those are reproduced here as written in llama.cpp. Every other expression runs as a regex over
//! a "collapsed" copy of the text in which each non-ASCII codepoint becomes one placeholder per
//! category (letter, number, punctuation, mark, symbol, other) and non-ASCII whitespace becomes
//! `\x0B`, with `\p{..}` classes rewritten to match the placeholders. Using the same collapsed
//! representation keeps the results identical to llama.cpp's, not merely close.

use std::ops::Range;

use fancy_regex::Regex;

use crate::unicode::{category, is_whitespace, Cat, Flags};

/// The pre-tokenizer families exo implements, keyed by `tokenizer.ggml.pre`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PreType {
    /// llama.cpp's default regex set (also used when `tokenizer.ggml.pre` is absent).
    Default,
    /// Llama 3 and its relatives (`llama-bpe`, `llama3`, ...).
    Llama3,
    /// Qwen2 (`qwen2`, `deepseek-r1-qwen`, `megrez`, `stablelm2`, ...).
    Qwen2,
    /// StarCoder-style: digits split singly, then GPT-2 (`smollm`, `starcoder`, ...).
    Smollm,
    /// Plain GPT-2 (`gpt-2`, `phi-2`, `mpt`, `olmo`, ...).
    Gpt2,
}

/// Settings llama.cpp ties to a `tokenizer.ggml.pre` value.
pub(crate) struct PreInfo {
    /// Regex family.
    pub(crate) pre: PreType,
    /// Use a whole word as one token when the vocabulary has it, skipping merges.
    pub(crate) ignore_merges: bool,
    /// llama.cpp's default for `add_bos` with this pre-tokenizer (the GGUF key overrides it).
    pub(crate) add_bos: bool,
}

/// Maps a `tokenizer.ggml.pre` value to its settings; `None` for values exo does not implement.
pub(crate) fn pre_info(name: &str) -> Option<PreInfo> {
    let (pre, ignore_merges, add_bos) = match name {
        "default" => (PreType::Default, false, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
        | "jina-v5-nano" => (PreType::Llama3, true, true),
        "dbrx" | "smaug-bpe" => (PreType::Llama3, false, false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2" | "hunyuan" | "solar-open" => {
            (PreType::Qwen2, false, false)
        }
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            (PreType::Smollm, false, false)
        }
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum"
        | "modern-bert" | "exaone4" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" | "jina-v1-en"
        | "jina-v2-code" | "roberta-bpe" => (PreType::Gpt2, false, false),
        _ => return None,
    };
    Some(PreInfo { pre, ignore_merges, add_bos })
}

const GPT2_RE: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const QWEN2_RE: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// One splitting step.
enum Pass {
    /// llama.cpp's `unicode_regex_split_custom_gpt2`.
    Gpt2,
    /// llama.cpp's `unicode_regex_split_custom_llama3`.
    Llama3,
    /// A regex over the collapsed text (`collapsed`) or over the text with non-ASCII whitespace
    /// turned into `\x0B` (llama.cpp's `std::wregex` path for expressions without categories).
    Regex { re: Regex, collapsed: bool },
}

/// A compiled pre-tokenizer; built once per vocabulary.
pub(crate) struct PreTokenizer {
    passes: Vec<Pass>,
}

impl PreTokenizer {
    /// Compiles the passes llama.cpp uses for `pre`.
    pub(crate) fn new(pre: PreType) -> Result<Self, String> {
        let exprs: &[&str] = match pre {
            PreType::Default => &[r"[\p{P}\$\+<=>\^~\|]+", GPT2_RE, r"\p{N}+", "[0-9][0-9][0-9]"],
            PreType::Llama3 => &["<llama3>"],
            PreType::Qwen2 => &[QWEN2_RE],
            PreType::Smollm => &[r"\p{N}", GPT2_RE],
            PreType::Gpt2 => &[GPT2_RE],
        };
        let mut passes = Vec::with_capacity(exprs.len());
        for &e in exprs {
            passes.push(match e {
                GPT2_RE => Pass::Gpt2,
                "<llama3>" => Pass::Llama3,
                _ => {
                    let collapsed = has_category(e);
                    let src = if collapsed { collapse_pattern(e) } else { e.to_string() };
                    let re = Regex::new(&src).map_err(|err| format!("pre-tokenizer regex {e:?}: {err}"))?;
                    Pass::Regex { re, collapsed }
                }
            });
        }
        Ok(Self { passes })
    }

    /// Splits `text` into words, returned as byte ranges of `text` in order, covering it fully.
    pub(crate) fn split(&self, text: &str, out: &mut Vec<Range<usize>>) -> Result<(), String> {
        out.clear();
        if text.is_empty() {
            return Ok(());
        }
        let chars: Vec<char> = text.chars().collect();
        let flags: Vec<Flags> = chars.iter().map(|&c| Flags::of(c)).collect();
        // Pieces as codepoint ranges; the whole text to start with.
        let mut pieces: Vec<Range<usize>> = Vec::with_capacity(chars.len() / 2 + 1);
        pieces.push(0..chars.len());
        let mut next: Vec<Range<usize>> = Vec::new();
        let mut collapsed: Option<(String, Vec<usize>)> = None;
        let mut plain: Option<(String, Vec<usize>)> = None;
        for pass in &self.passes {
            next.clear();
            match pass {
                Pass::Gpt2 => pieces.iter().for_each(|p| split_gpt2(&chars, &flags, p.clone(), &mut next)),
                Pass::Llama3 => pieces.iter().for_each(|p| split_llama3(&chars, &flags, p.clone(), &mut next)),
                Pass::Regex { re, collapsed: use_collapsed } => {
                    let (subject, offs) = if *use_collapsed {
                        collapsed.get_or_insert_with(|| regex_subject(&chars, collapse_char))
                    } else {
                        plain.get_or_insert_with(|| regex_subject(&chars, plain_char))
                    };
                    for p in &pieces {
                        split_regex(re, subject, offs, p.clone(), &mut next)?;
                    }
                }
            }
            std::mem::swap(&mut pieces, &mut next);
        }
        // Codepoint ranges back to byte ranges of `text`.
        let mut byte_of = Vec::with_capacity(chars.len() + 1);
        byte_of.extend(text.char_indices().map(|(i, _)| i));
        byte_of.push(text.len());
        out.extend(pieces.into_iter().filter(|p| !p.is_empty()).map(|p| byte_of[p.start]..byte_of[p.end]));
        Ok(())
    }
}

/// Whether llama.cpp would run `expr` over the collapsed text.
fn has_category(expr: &str) -> bool {
    ["\\p{N}", "\\p{L}", "\\p{P}", "\\p{M}", "\\p{S}", "\\p{Lu}", "\\p{Ll}", "\\p{Lt}", "\\p{Lm}", "\\p{Lo}"]
        .iter()
        .any(|c| expr.contains(c))
}

/// The collapsed placeholder for a category, and the ASCII members of that category, written
/// as regex class contents.
fn category_class(cat: &str) -> Option<&'static str> {
    Some(match cat {
        "N" => r"\x{D1}0-9",
        "L" | "Lu" | "Ll" | "Lt" | "Lm" | "Lo" => r"\x{D2}A-Za-z",
        "P" => r"\x{D3}!-#%-*,-/:-;?-@\[-\]_\{\}",
        "M" => r"\x{D4}",
        "S" => r"\x{D5}\$\+<->\^`\|",
        _ => return None,
    })
}

/// Rewrites `\p{..}` in `expr` to match the collapsed text, as llama.cpp does: a class of its
/// own outside brackets, spliced into the enclosing class inside them.
fn collapse_pattern(expr: &str) -> String {
    let b = expr.as_bytes();
    let mut out = String::with_capacity(expr.len() * 2);
    let mut inside = false;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'[' && (i == 0 || b[i - 1] != b'\\') {
            out.push('[');
            inside = true;
            i += 1;
            continue;
        }
        if inside && b[i] == b']' && i > 0 && b[i - 1] != b'\\' {
            out.push(']');
            inside = false;
            i += 1;
            continue;
        }
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1] == b'p' && b[i + 2] == b'{' {
            if let Some(close) = expr[i + 3..].find('}').map(|c| c + i + 3) {
                if let Some(class) = category_class(&expr[i + 3..close]) {
                    if !inside {
                        out.push('[');
                    }
                    out.push_str(class);
                    if !inside {
                        out.push(']');
                    }
                    i = close + 1;
                    continue;
                }
            }
        }
        // The supported expressions are ASCII, so byte-wise copying is char-wise.
        let ch_len = expr[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&expr[i..i + ch_len]);
        i += ch_len;
    }
    out
}

/// One codepoint of the collapsed text.
fn collapse_char(c: char) -> char {
    if c.is_ascii() {
        return c;
    }
    if is_whitespace(c) {
        return '\x0B';
    }
    match category(c) {
        Cat::Number => '\u{D1}',
        Cat::Letter => '\u{D2}',
        Cat::Punct => '\u{D3}',
        Cat::Mark => '\u{D4}',
        Cat::Symbol => '\u{D5}',
        _ => '\u{D0}',
    }
}

/// One codepoint of the text for category-free expressions.
fn plain_char(c: char) -> char {
    if !c.is_ascii() && is_whitespace(c) {
        '\x0B'
    } else {
        c
    }
}

/// The regex subject (one char per codepoint of the text) and each codepoint's byte offset in it.
fn regex_subject(chars: &[char], map: fn(char) -> char) -> (String, Vec<usize>) {
    let mut s = String::with_capacity(chars.len() * 2);
    let mut offs = Vec::with_capacity(chars.len() + 1);
    for &c in chars {
        offs.push(s.len());
        s.push(map(c));
    }
    offs.push(s.len());
    (s, offs)
}

/// Splits codepoint range `piece` at the matches of `re`; text between matches is kept as pieces.
fn split_regex(
    re: &Regex,
    subject: &str,
    offs: &[usize],
    piece: Range<usize>,
    out: &mut Vec<Range<usize>>,
) -> Result<(), String> {
    let (b0, b1) = (offs[piece.start], offs[piece.end]);
    let sub = &subject[b0..b1];
    // Byte offset within `sub` → codepoint index; match bounds are always char boundaries.
    let cp = |b: usize| offs.partition_point(|&o| o < b0 + b);
    let mut last = piece.start;
    for m in re.find_iter(sub) {
        let m = m.map_err(|e| format!("pre-tokenizer regex failed: {e}"))?;
        let (s, e) = (cp(m.start()), cp(m.end()));
        if s > last {
            out.push(last..s);
        }
        if e > s {
            out.push(s..e);
        }
        last = last.max(e);
    }
    if last < piece.end {
        out.push(last..piece.end);
    }
    Ok(())
}

/// Helpers shared by the two hand-written splitters: positions outside the piece read as
/// "no codepoint", like llama.cpp's `OUT_OF_RANGE` / empty flags.
struct Cursor<'a> {
    chars: &'a [char],
    flags: &'a [Flags],
    end: usize,
    prev_end: usize,
    out: &'a mut Vec<Range<usize>>,
}

impl Cursor<'_> {
    fn cpt(&self, pos: usize) -> Option<char> {
        if pos < self.end {
            self.chars.get(pos).copied()
        } else {
            None
        }
    }

    fn flags(&self, pos: usize) -> Flags {
        if pos < self.end {
            self.flags.get(pos).copied().unwrap_or(Flags::NONE)
        } else {
            Flags::NONE
        }
    }

    /// Ends a word at `end`; returns its length.
    fn add(&mut self, end: usize) -> usize {
        let len = end.saturating_sub(self.prev_end);
        if len > 0 {
            self.out.push(self.prev_end..end);
        }
        self.prev_end = end;
        len
    }

    fn is_rn(c: Option<char>) -> bool {
        matches!(c, Some('\r' | '\n'))
    }

    /// Length of a contraction (`'s`, `'t`, `'re`, ...) starting at `pos`, 0 if none. `fold`
    /// lowercases (Llama 3's `(?i:...)`); only ASCII letters can take part, so ASCII folding is exact.
    fn contraction(&self, pos: usize, fold: bool) -> usize {
        let lower = |c: Option<char>| c.map(|c| if fold { c.to_ascii_lowercase() } else { c });
        if self.cpt(pos) != Some('\'') || pos + 1 >= self.end {
            return 0;
        }
        let n1 = lower(self.cpt(pos + 1));
        if matches!(n1, Some('s' | 't' | 'm' | 'd')) {
            return 2;
        }
        if pos + 2 < self.end {
            let n2 = lower(self.cpt(pos + 2));
            if matches!((n1, n2), (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))) {
                return 3;
            }
        }
        0
    }

    /// The last alternatives of both regexes: `\s+(?!\S)` (a run of `n_ws` whitespace leaves its
    /// last character to the word after it), then `\s+`, then any single character. Emits the
    /// piece and returns where the next one starts.
    fn whitespace_or_one(&mut self, pos: usize, n_ws: usize) -> usize {
        let end = if n_ws > 1 && self.cpt(pos + n_ws).is_some() {
            pos + n_ws - 1
        } else if n_ws > 0 {
            pos + n_ws
        } else {
            pos + 1
        };
        self.add(end);
        end
    }

    /// Counts whitespace from `pos`; also returns the end of the last `\r`/`\n` in the run (0 if none).
    fn whitespace_run(&self, pos: usize) -> (usize, usize) {
        let (mut n, mut last_rn) = (0, 0);
        while self.flags(pos + n).ws() {
            if Self::is_rn(self.cpt(pos + n)) {
                last_rn = pos + n + 1;
            }
            n += 1;
        }
        (n, last_rn)
    }
}

/// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn split_gpt2(chars: &[char], flags: &[Flags], piece: Range<usize>, out: &mut Vec<Range<usize>>) {
    let mut c = Cursor { chars, flags, end: piece.end, prev_end: piece.start, out };
    let mut pos = piece.start;
    while pos < piece.end {
        let cpt = c.cpt(pos);
        let fl = c.flags(pos);
        let n = c.contraction(pos, false);
        if n > 0 {
            pos += c.add(pos + n);
            continue;
        }
        let space = usize::from(cpt == Some(' '));
        let mut f2 = if space == 1 { c.flags(pos + 1) } else { fl };
        if f2.letter() || f2.number() {
            let want_letter = f2.letter();
            pos += space;
            while if want_letter { f2.letter() } else { f2.number() } {
                pos += 1;
                f2 = c.flags(pos);
            }
            c.add(pos);
            continue;
        }
        let other = |f: Flags| !(f.ws() || f.letter() || f.number()) && f.present();
        if other(f2) {
            pos += space;
            while other(f2) {
                pos += 1;
                f2 = c.flags(pos);
            }
            c.add(pos);
            continue;
        }
        let (n_ws, _) = c.whitespace_run(pos);
        pos = c.whitespace_or_one(pos, n_ws);
    }
}

/// Llama 3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
fn split_llama3(chars: &[char], flags: &[Flags], piece: Range<usize>, out: &mut Vec<Range<usize>>) {
    let mut c = Cursor { chars, flags, end: piece.end, prev_end: piece.start, out };
    let mut pos = piece.start;
    while pos < piece.end {
        let cpt = c.cpt(pos);
        let fl = c.flags(pos);
        let n = c.contraction(pos, true);
        if n > 0 {
            pos += c.add(pos + n);
            continue;
        }
        if !(Cursor::is_rn(cpt) || fl.number()) && (fl.letter() || c.flags(pos + 1).letter()) {
            pos += 1;
            while c.flags(pos).letter() {
                pos += 1;
            }
            c.add(pos);
            continue;
        }
        if fl.number() {
            let mut ini = pos;
            while c.flags(pos).number() {
                pos += 1;
                if pos - ini >= 3 {
                    c.add(pos);
                    ini = pos;
                }
            }
            c.add(pos);
            continue;
        }
        let space = usize::from(cpt == Some(' '));
        let mut f2 = if space == 1 { c.flags(pos + 1) } else { fl };
        let other = |f: Flags| !(f.ws() || f.letter() || f.number());
        // llama.cpp tests the current codepoint's flags here, not the next one's.
        if other(f2) && fl.present() {
            pos += space;
            while other(f2) && f2.present() {
                pos += 1;
                f2 = c.flags(pos);
            }
            while Cursor::is_rn(c.cpt(pos)) {
                pos += 1;
            }
            c.add(pos);
            continue;
        }
        let (n_ws, last_rn) = c.whitespace_run(pos);
        if last_rn > 0 {
            pos = last_rn;
            c.add(pos);
            continue;
        }
        pos = c.whitespace_or_one(pos, n_ws);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: PreType, text: &str) -> Vec<String> {
        let p = PreTokenizer::new(pre).expect("regexes compile");
        let mut out = Vec::new();
        p.split(text, &mut out).expect("split");
        out.into_iter().map(|r| text[r].to_string()).collect()
    }

    #[test]
    fn gpt2_words() {
        assert_eq!(words(PreType::Gpt2, "Hello world's  end 123"), ["Hello", " world", "'s", " ", " end", " 123"]);
        assert_eq!(words(PreType::Smollm, "a 123"), ["a", " ", "1", "2", "3"]);
    }

    #[test]
    fn qwen2_words() {
        assert_eq!(words(PreType::Qwen2, "Hi, 12 日本\n\n x"), ["Hi", ",", " ", "1", "2", " 日本", "\n\n", " x"]);
    }

    #[test]
    fn llama3_words() {
        assert_eq!(words(PreType::Llama3, "I'M 12345 ok!\n"), ["I", "'M", " ", "123", "45", " ok", "!\n"]);
    }

    #[test]
    fn collapse() {
        assert_eq!(collapse_pattern(r"[^\r\n\p{L}]?\p{N}"), r"[^\r\n\x{D2}A-Za-z]?[\x{D1}0-9]");
    }
}
