//! The byte-level automaton over a [`Grammar`]: a set of stacks of small frames, each stack one
//! way of reading the bytes so far (a union or an object key can be read more than one way until
//! later bytes tell them apart, as in llama.cpp's grammar stacks).
//!
//! Frames are `Copy` and a few words long, so a stack is cheap to duplicate: the vocabulary walk
//! in [`super::trie`] copies the stacks once per trie node instead of undoing steps.

use super::grammar::{Grammar, Node, NodeId, Object};

/// Nesting (frames on a stack) past which a union takes only its shallowest choices, an array
/// no more items than it must and an object no optional property that needs nesting, so that
/// recursive schemas end.
pub(crate) const MAX_DEPTH: usize = 16;
/// Whitespace between tokens is empty, or an optional newline and then at most this many spaces
/// or tabs (llama.cpp's JSON grammars bound it the same way), so a model cannot loop on it.
const MAX_SPACES: u8 = 20;
const NEWLINE_SEEN: u8 = 0x40;
/// Digits of a number's integer part, fraction and exponent; more would only let a model loop.
/// Two exponent digits keep every number finite as an f64 (serde_json refuses `1e999`).
const MAX_INT_DIGITS: u8 = 16;
const MAX_FRAC_DIGITS: u8 = 16;
const MAX_EXP_DIGITS: u8 = 2;

/// Tag of a completed value (as opposed to a declared key, tagged with its property index).
const TAG_VALUE: u32 = u32::MAX;
/// Tag of a completed additional-property key.
const TAG_ADDITIONAL: u32 = u32::MAX - 1;

/// One level of a stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// The document: prefix, value, suffix (`pos` into the prefix or suffix).
    Root { node: NodeId, phase: RootPhase, pos: u32, ws: u8 },
    /// Entries `lo..hi` of a literal set match the `pos` bytes read.
    Lits { set: u32, lo: u32, hi: u32, pos: u32 },
    /// Inside a string of `len` characters; `esc` is the escape state, `utf8` the UTF-8 state.
    Str { node: NodeId, len: u32, esc: u8, utf8: u8 },
    /// Inside an additional key of object `obj`; declared names `lo..hi` match its `pos` bytes.
    Key { obj: NodeId, lo: u32, hi: u32, pos: u32, utf8: u8 },
    /// Inside a number.
    Num { integer: bool, phase: NumPhase, digits: u8 },
    /// Inside an object after `next` declared properties; `value` is the schema of the value
    /// being read.
    Obj { node: NodeId, next: u32, value: NodeId, phase: ObjPhase, ws: u8 },
    /// Inside an array after `count` items.
    Arr { node: NodeId, count: u32, phase: ArrPhase, ws: u8 },
}

/// Where the document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RootPhase {
    Prefix,
    Before,
    InValue,
    After,
    Suffix,
    Done,
}

/// Where an object is: reading a key, a value, or the punctuation around them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ObjPhase {
    Open,
    InKey,
    KeyDone,
    Colon,
    InValue,
    AfterValue,
    Comma,
}

/// Where an array is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArrPhase {
    Open,
    InValue,
    AfterValue,
    Comma,
}

/// Which part of a number was read last (JSON's number grammar, RFC 8259 section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NumPhase {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

/// What a byte did to a stack.
enum Step {
    Dead,
    Ok,
    /// A value of this node starts with the byte (the caller forks on unions).
    StartValue(NodeId),
    /// An object key starts (the byte was its quote): a declared key or an additional one.
    StartKey,
}

/// What a byte did to the top frame.
enum Flow {
    Step(Step),
    /// The frame is complete and consumed the byte.
    Pop(u32),
    /// The frame was complete before the byte, which belongs to its parent.
    PopRefeed(u32),
}

/// Stacks stored end to end.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stacks {
    frames: Vec<Frame>,
    ends: Vec<u32>,
}

impl Stacks {
    /// The single stack at the start of a document of `g`.
    pub fn start(g: &Grammar) -> Self {
        let phase = if g.prefix.is_empty() { RootPhase::Before } else { RootPhase::Prefix };
        Self { frames: vec![Frame::Root { node: g.root, phase, pos: 0, ws: 0 }], ends: vec![1] }
    }

    /// Number of stacks.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Stack `i`, bottom first.
    pub fn get(&self, i: usize) -> &[Frame] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.frames[start..self.ends[i] as usize]
    }

    /// Makes this set a copy of `other`, reusing the buffers.
    pub fn assign(&mut self, other: &Stacks) {
        self.frames.clear();
        self.frames.extend_from_slice(&other.frames);
        self.ends.clear();
        self.ends.extend_from_slice(&other.ends);
    }

    /// Keeps the first `n` stacks.
    pub fn truncate(&mut self, n: usize) {
        self.ends.truncate(n);
        self.frames.truncate(self.ends.last().map_or(0, |&e| e as usize));
    }

    /// Appends `s` unless a stack from index `from` on equals it.
    fn push_unique(&mut self, from: usize, s: &[Frame]) {
        if (from..self.len()).any(|i| self.get(i) == s) {
            return;
        }
        self.frames.extend_from_slice(s);
        self.ends.push(self.frames.len() as u32);
    }
}

/// Reusable buffers for stepping.
#[derive(Clone, Debug, Default)]
pub(crate) struct Scratch {
    work: Vec<Frame>,
    fork: Vec<Frame>,
}

impl Scratch {
    /// Loads the stack the next [`advance`] starts from.
    pub fn load(&mut self, stack: &[Frame]) {
        self.work.clear();
        self.work.extend_from_slice(stack);
    }
}

/// Appends to `out` what the stack loaded into `s` becomes after byte `b` (nothing when `b`
/// cannot follow, several stacks where the reading forks), skipping stacks already in `out`
/// from index `from`.
pub(crate) fn advance(g: &Grammar, s: &mut Scratch, b: u8, out: &mut Stacks, from: usize) {
    match step(g, &mut s.work, b) {
        Step::Dead => {}
        Step::Ok => out.push_unique(from, &s.work),
        Step::StartValue(node) => {
            let alts = match g.node(node) {
                Node::Union(alts) => alts.as_slice(),
                _ => std::slice::from_ref(&node),
            };
            // Past the depth limit only the shallowest choices stay, which always exist.
            let shallowest = alts.iter().map(|&a| g.min_depth[a as usize]).min().unwrap_or(0);
            let deep = s.work.len() >= MAX_DEPTH;
            for &alt in alts {
                if deep && g.min_depth[alt as usize] > shallowest {
                    continue;
                }
                s.fork.clear();
                s.fork.extend_from_slice(&s.work);
                if start_value(g, &mut s.fork, alt, b) {
                    out.push_unique(from, &s.fork);
                }
            }
        }
        Step::StartKey => {
            let deep = s.work.len() >= MAX_DEPTH;
            let Some(&Frame::Obj { node, next, .. }) = s.work.last() else { return };
            let Node::Object(o) = g.node(node) else { return };
            if let Some(set) = key_set(o, next, deep) {
                s.fork.clear();
                s.fork.extend_from_slice(&s.work);
                s.fork.push(Frame::Lits { set, lo: 0, hi: g.lit_set(set).len(), pos: 0 });
                if matches!(step(g, &mut s.fork, b), Step::Ok) {
                    out.push_unique(from, &s.fork);
                }
            }
            if additional_key(g, o, next, deep) {
                s.work.push(Frame::Key { obj: node, lo: 0, hi: g.lit_set(o.names).len(), pos: 0, utf8: 0 });
                out.push_unique(from, &s.work);
            }
        }
    }
}

/// Advances every stack of `cur` by `b` into `next`.
pub(crate) fn advance_all(g: &Grammar, s: &mut Scratch, cur: &Stacks, b: u8, next: &mut Stacks) {
    next.truncate(0);
    for i in 0..cur.len() {
        s.load(cur.get(i));
        advance(g, s, b, next, 0);
    }
}

/// Whether the document can end after `stack` (a number or literal may still be open).
pub(crate) fn can_end(g: &Grammar, s: &mut Scratch, stack: &[Frame]) -> bool {
    s.load(stack);
    loop {
        let tag = match s.work.last() {
            Some(Frame::Root { phase, .. }) => return *phase == RootPhase::Done,
            Some(&Frame::Num { phase, .. }) if num_accepts(phase) => TAG_VALUE,
            Some(&Frame::Lits { set, lo, hi, pos }) => match g.lit_set(set).complete(lo, hi, pos) {
                Some(tag) => tag,
                None => return false,
            },
            _ => return false,
        };
        s.work.pop();
        child_done(g, &mut s.work, tag);
    }
}

/// Whether `stack` is a complete document that no byte can continue.
pub(crate) fn is_done(stack: &[Frame]) -> bool {
    matches!(stack, [Frame::Root { phase: RootPhase::Done, .. }])
}

/// Whether `bytes` are a complete document of node `node` (used to check enum values against
/// the rest of their schema).
pub(crate) fn accepts(g: &Grammar, node: NodeId, bytes: &[u8]) -> bool {
    let mut cur = Stacks { frames: vec![Frame::Root { node, phase: RootPhase::Before, pos: 0, ws: 0 }], ends: vec![1] };
    let (mut next, mut s) = (Stacks::default(), Scratch::default());
    for &b in bytes {
        advance_all(g, &mut s, &cur, b, &mut next);
        std::mem::swap(&mut cur, &mut next);
    }
    (0..cur.len()).any(|i| can_end(g, &mut s, cur.get(i)))
}

/// If `stack` is inside a plain string (no escape or partial key match pending), its UTF-8
/// state and how many more characters it may take.
pub(crate) fn in_plain_string(g: &Grammar, stack: &[Frame]) -> Option<(u8, u32)> {
    match *stack.last()? {
        Frame::Str { node, len, esc: 0, utf8 } => match g.node(node) {
            Node::String { max, .. } => Some((utf8, max - len)),
            _ => None,
        },
        Frame::Key { lo, hi, utf8, .. } if lo == hi => Some((utf8, u32::MAX)),
        _ => None,
    }
}

fn step(g: &Grammar, st: &mut Vec<Frame>, b: u8) -> Step {
    loop {
        let depth = st.len();
        let Some(top) = st.last_mut() else { return Step::Dead };
        let flow = match top {
            Frame::Root { .. } => Flow::Step(root_step(g, top, b)),
            Frame::Obj { .. } => obj_step(g, top, b, depth),
            Frame::Arr { .. } => arr_step(g, top, b, depth),
            Frame::Lits { .. } => lits_step(g, top, b),
            Frame::Num { .. } => num_step(top, b),
            Frame::Str { .. } => str_step(g, top, b),
            Frame::Key { .. } => key_step(g, top, b),
        };
        match flow {
            Flow::Step(s) => return s,
            Flow::Pop(tag) => {
                st.pop();
                child_done(g, st, tag);
                return Step::Ok;
            }
            Flow::PopRefeed(tag) => {
                st.pop();
                child_done(g, st, tag);
            }
        }
    }
}

/// Pushes the frame a value of `node` (not a union) starts with, given its first byte.
fn start_value(g: &Grammar, st: &mut Vec<Frame>, node: NodeId, b: u8) -> bool {
    let frame = match g.node(node) {
        &Node::Lits(set) => {
            st.push(Frame::Lits { set, lo: 0, hi: g.lit_set(set).len(), pos: 0 });
            return matches!(step(g, st, b), Step::Ok);
        }
        &Node::Number { integer } => match b {
            b'-' => Frame::Num { integer, phase: NumPhase::Minus, digits: 0 },
            b'0' => Frame::Num { integer, phase: NumPhase::Zero, digits: 1 },
            b'1'..=b'9' => Frame::Num { integer, phase: NumPhase::Int, digits: 1 },
            _ => return false,
        },
        Node::String { .. } if b == b'"' => Frame::Str { node, len: 0, esc: 0, utf8: 0 },
        Node::Object(_) if b == b'{' => Frame::Obj { node, next: 0, value: node, phase: ObjPhase::Open, ws: 0 },
        Node::Array(_) if b == b'[' => Frame::Arr { node, count: 0, phase: ArrPhase::Open, ws: 0 },
        _ => return false,
    };
    st.push(frame);
    true
}

/// Updates the parent after a child frame completed with `tag`.
fn child_done(g: &Grammar, st: &mut [Frame], tag: u32) {
    match st.last_mut() {
        Some(Frame::Root { phase, ws, .. }) => {
            *phase = if g.suffix.is_empty() { RootPhase::Done } else { RootPhase::After };
            *ws = 0;
        }
        Some(Frame::Obj { node, next, value, phase, ws }) => {
            if *phase == ObjPhase::InKey {
                let Node::Object(o) = g.node(*node) else { return };
                match tag {
                    TAG_ADDITIONAL => *value = o.additional.unwrap_or(*value),
                    i => {
                        *value = o.props[i as usize].node;
                        *next = i + 1;
                    }
                }
                *phase = ObjPhase::KeyDone;
            } else {
                *phase = ObjPhase::AfterValue;
            }
            *ws = 0;
        }
        Some(Frame::Arr { count, phase, ws, .. }) => {
            *count += 1;
            *phase = ArrPhase::AfterValue;
            *ws = 0;
        }
        _ => {}
    }
}

fn ws_step(ws: &mut u8, b: u8) -> Option<Step> {
    let ok = match b {
        b' ' | b'\t' => (*ws & !NEWLINE_SEEN) < MAX_SPACES,
        b'\n' => *ws == 0,
        b'\r' => false,
        _ => return None,
    };
    if !ok {
        return Some(Step::Dead);
    }
    *ws = if b == b'\n' { NEWLINE_SEEN } else { *ws + 1 };
    Some(Step::Ok)
}

fn root_step(g: &Grammar, top: &mut Frame, b: u8) -> Step {
    let Frame::Root { node, phase, pos, ws } = top else { return Step::Dead };
    match *phase {
        RootPhase::Prefix | RootPhase::Suffix => {
            let text = if *phase == RootPhase::Prefix { &g.prefix } else { &g.suffix };
            if text.get(*pos as usize) != Some(&b) {
                return Step::Dead;
            }
            *pos += 1;
            if *pos as usize == text.len() {
                *phase = if *phase == RootPhase::Prefix { RootPhase::Before } else { RootPhase::Done };
                *pos = 0;
            }
            Step::Ok
        }
        RootPhase::Before => ws_step(ws, b).unwrap_or_else(|| {
            *phase = RootPhase::InValue;
            Step::StartValue(*node)
        }),
        RootPhase::After => ws_step(ws, b).unwrap_or_else(|| {
            if g.suffix.first() != Some(&b) {
                return Step::Dead;
            }
            *pos = 1;
            *phase = if g.suffix.len() == 1 { RootPhase::Done } else { RootPhase::Suffix };
            Step::Ok
        }),
        _ => Step::Dead,
    }
}

/// The declared keys that may come after `next` properties.
fn key_set(o: &Object, next: u32, deep: bool) -> Option<u32> {
    let sets = if deep { &o.deep_key_sets } else { &o.key_sets };
    sets.get(next as usize).copied().flatten()
}

/// Whether an additional key may come after `next` declared properties: only once the required
/// ones are written (so a model cannot put them off forever with keys of its own), and past the
/// depth limit only one whose value needs no nesting.
fn additional_key(g: &Grammar, o: &Object, next: u32, deep: bool) -> bool {
    next >= o.required_end && o.additional.is_some_and(|n| !deep || g.min_depth[n as usize] == 0)
}

fn obj_step(g: &Grammar, top: &mut Frame, b: u8, depth: usize) -> Flow {
    let Frame::Obj { node, next, value, phase, ws } = top else { return Flow::Step(Step::Dead) };
    let Node::Object(o) = g.node(*node) else { return Flow::Step(Step::Dead) };
    if *phase != ObjPhase::InKey && *phase != ObjPhase::InValue {
        if let Some(s) = ws_step(ws, b) {
            return Flow::Step(s);
        }
    }
    let deep = depth >= MAX_DEPTH;
    let more_keys = key_set(o, *next, deep).is_some() || additional_key(g, o, *next, deep);
    let may_close = *next >= o.required_end;
    let (to, s) = match (*phase, b) {
        (ObjPhase::Open | ObjPhase::Comma, b'"') if more_keys => (ObjPhase::InKey, Step::StartKey),
        (ObjPhase::Open | ObjPhase::AfterValue, b'}') if may_close => return Flow::Pop(TAG_VALUE),
        (ObjPhase::AfterValue, b',') if more_keys => (ObjPhase::Comma, Step::Ok),
        (ObjPhase::KeyDone, b':') => (ObjPhase::Colon, Step::Ok),
        (ObjPhase::Colon, _) => (ObjPhase::InValue, Step::StartValue(*value)),
        _ => return Flow::Step(Step::Dead),
    };
    *phase = to;
    *ws = 0;
    Flow::Step(s)
}

fn arr_step(g: &Grammar, top: &mut Frame, b: u8, depth: usize) -> Flow {
    let Frame::Arr { node, count, phase, ws } = top else { return Flow::Step(Step::Dead) };
    let Node::Array(a) = g.node(*node) else { return Flow::Step(Step::Dead) };
    if *phase != ArrPhase::InValue {
        if let Some(s) = ws_step(ws, b) {
            return Flow::Step(s);
        }
    }
    // Past the depth limit an array takes only the items it must.
    let item = a.item(*count).filter(|_| *count < a.min || depth < MAX_DEPTH);
    let (to, s) = match (*phase, b) {
        (ArrPhase::Open | ArrPhase::AfterValue, b']') if *count >= a.min => return Flow::Pop(TAG_VALUE),
        (ArrPhase::AfterValue, b',') if item.is_some() => (ArrPhase::Comma, Step::Ok),
        (ArrPhase::Open | ArrPhase::Comma, _) => match item {
            Some(n) => (ArrPhase::InValue, Step::StartValue(n)),
            None => return Flow::Step(Step::Dead),
        },
        _ => return Flow::Step(Step::Dead),
    };
    *phase = to;
    *ws = 0;
    Flow::Step(s)
}

fn lits_step(g: &Grammar, top: &mut Frame, b: u8) -> Flow {
    let Frame::Lits { set, lo, hi, pos } = top else { return Flow::Step(Step::Dead) };
    let lits = g.lit_set(*set);
    let (nlo, nhi) = lits.narrow(*lo, *hi, *pos, b);
    if nlo < nhi {
        if let Some(tag) = lits.complete(nlo, nhi, *pos + 1).filter(|_| nhi - nlo == 1) {
            return Flow::Pop(tag);
        }
        (*lo, *hi, *pos) = (nlo, nhi, *pos + 1);
        return Flow::Step(Step::Ok);
    }
    // A complete literal that is a prefix of a longer one (`1` of `1` and `12`) ends here.
    match lits.complete(*lo, *hi, *pos) {
        Some(tag) => Flow::PopRefeed(tag),
        None => Flow::Step(Step::Dead),
    }
}

fn num_accepts(phase: NumPhase) -> bool {
    matches!(phase, NumPhase::Zero | NumPhase::Int | NumPhase::Frac | NumPhase::ExpDigits)
}

fn num_step(top: &mut Frame, b: u8) -> Flow {
    let Frame::Num { integer, phase, digits } = top else { return Flow::Step(Step::Dead) };
    let digit = b.is_ascii_digit();
    let (to, n) = match (*phase, b) {
        (NumPhase::Minus, b'0') => (NumPhase::Zero, 1),
        (NumPhase::Minus, b'1'..=b'9') => (NumPhase::Int, 1),
        (NumPhase::Int, _) if digit && *digits < MAX_INT_DIGITS => (NumPhase::Int, *digits + 1),
        (NumPhase::Zero | NumPhase::Int, b'.') if !*integer => (NumPhase::Dot, 0),
        (NumPhase::Zero | NumPhase::Int | NumPhase::Frac, b'e' | b'E') if !*integer => (NumPhase::Exp, 0),
        (NumPhase::Dot, _) if digit => (NumPhase::Frac, 1),
        (NumPhase::Frac, _) if digit && *digits < MAX_FRAC_DIGITS => (NumPhase::Frac, *digits + 1),
        (NumPhase::Exp, b'+' | b'-') => (NumPhase::ExpSign, 0),
        (NumPhase::Exp | NumPhase::ExpSign, _) if digit => (NumPhase::ExpDigits, 1),
        (NumPhase::ExpDigits, _) if digit && *digits < MAX_EXP_DIGITS => (NumPhase::ExpDigits, *digits + 1),
        _ if num_accepts(*phase) => return Flow::PopRefeed(TAG_VALUE),
        _ => return Flow::Step(Step::Dead),
    };
    (*phase, *digits) = (to, n);
    Flow::Step(Step::Ok)
}

/// The UTF-8 state after byte `b`: 0 between characters, else how many continuation bytes are
/// due, with the narrower ranges after E0, ED, F0 and F4 (no overlong forms, no surrogates).
pub(crate) fn utf8_step(state: u8, b: u8) -> Option<u8> {
    let cont = |lo: u8, hi: u8, to: u8| (lo..=hi).contains(&b).then_some(to);
    match state {
        0 => match b {
            0x00..=0x7f => Some(0),
            0xc2..=0xdf => Some(1),
            0xe0 => Some(4),
            0xe1..=0xec | 0xee..=0xef => Some(2),
            0xed => Some(5),
            0xf0 => Some(6),
            0xf1..=0xf3 => Some(3),
            0xf4 => Some(7),
            _ => None,
        },
        1 => cont(0x80, 0xbf, 0),
        2 => cont(0x80, 0xbf, 1),
        3 => cont(0x80, 0xbf, 2),
        4 => cont(0xa0, 0xbf, 1),
        5 => cont(0x80, 0x9f, 1),
        6 => cont(0x90, 0xbf, 2),
        7 => cont(0x80, 0x8f, 2),
        _ => None,
    }
}

/// Number of [`utf8_step`] states.
pub(crate) const UTF8_STATES: u8 = 8;

/// Whether byte `b` can stand for itself inside a JSON string.
pub(crate) fn plain_string_byte(b: u8) -> bool {
    b >= 0x20 && b != b'"' && b != b'\\'
}

fn str_step(g: &Grammar, top: &mut Frame, b: u8) -> Flow {
    let Frame::Str { node, len, esc, utf8 } = top else { return Flow::Step(Step::Dead) };
    let &Node::String { min, max } = g.node(*node) else { return Flow::Step(Step::Dead) };
    let hex = b.is_ascii_hexdigit();
    // Escape states: 1 after the backslash, 2..=6 inside `\uXXXX` (4: the first digit was D, so
    // the second must keep it out of the surrogates, which serde_json rejects unpaired).
    let to = match (*esc, b) {
        (0, _) if *utf8 != 0 => return str_more(utf8_step(*utf8, b).map(|u| *utf8 = u)),
        (0, b'"') if *len >= min => return Flow::Pop(TAG_VALUE),
        (0, b'\\') if *len < max => {
            *len += 1;
            1
        }
        (0, _) if plain_string_byte(b) && *len < max => {
            *len += 1;
            return str_more(utf8_step(0, b).map(|u| *utf8 = u));
        }
        (1, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => 0,
        (1, b'u') => 2,
        (2, b'd' | b'D') => 4,
        (2, _) if hex => 3,
        (3, _) if hex => 5,
        (4, b'0'..=b'7') => 5,
        (5, _) if hex => 6,
        (6, _) if hex => 0,
        _ => return Flow::Step(Step::Dead),
    };
    *esc = to;
    Flow::Step(Step::Ok)
}

fn str_more(ok: Option<()>) -> Flow {
    Flow::Step(if ok.is_some() { Step::Ok } else { Step::Dead })
}

/// An additional key: a string without escapes that must not spell a declared name.
fn key_step(g: &Grammar, top: &mut Frame, b: u8) -> Flow {
    let Frame::Key { obj, lo, hi, pos, utf8 } = top else { return Flow::Step(Step::Dead) };
    let Node::Object(o) = g.node(*obj) else { return Flow::Step(Step::Dead) };
    let names = g.lit_set(o.names);
    if b == b'"' && *utf8 == 0 {
        return match names.complete(*lo, *hi, *pos) {
            Some(_) => Flow::Step(Step::Dead),
            None => Flow::Pop(TAG_ADDITIONAL),
        };
    }
    if !plain_string_byte(b) {
        return Flow::Step(Step::Dead);
    }
    let Some(u) = utf8_step(*utf8, b) else { return Flow::Step(Step::Dead) };
    *utf8 = u;
    if *lo < *hi {
        (*lo, *hi) = names.narrow(*lo, *hi, *pos, b);
    }
    *pos += 1;
    Flow::Step(Step::Ok)
}
