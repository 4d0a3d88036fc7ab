//! Codepoint classes and the GPT-2 byte↔unicode mapping, as llama.cpp's `unicode.cpp` uses them.
//!
//! llama.cpp classifies each codepoint by its Unicode general category (one of number, letter,
//! separator, mark, punctuation, symbol, control, or undefined for unassigned codepoints) plus a
//! separate White_Space flag. The category data here comes from `regex-syntax`'s Unicode tables,
//! so no table is copied into this crate; it may be a newer Unicode version than llama.cpp's,
//! which only matters for codepoints assigned since.

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

/// A codepoint's general-category group, as llama.cpp's `unicode_cpt_flags` categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cat {
    /// Unassigned (Cn).
    Undefined,
    /// \p{N}.
    Number,
    /// \p{L}.
    Letter,
    /// \p{Z}.
    Separator,
    /// \p{M}.
    Mark,
    /// \p{P}.
    Punct,
    /// \p{S}.
    Symbol,
    /// \p{Cc}, \p{Cf}, \p{Co}, \p{Cs}.
    Control,
}

/// Flags of one codepoint; `Flags::NONE` stands for "outside the text" in the custom splitters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Flags(u8);

impl Flags {
    /// No flags: a position outside the current fragment (llama.cpp's empty `unicode_cpt_flags{}`).
    pub(crate) const NONE: Flags = Flags(0);
    const NUMBER: u8 = 1;
    const LETTER: u8 = 2;
    const WHITESPACE: u8 = 4;
    /// Set for every real codepoint so that `is_some` distinguishes it from `NONE`.
    const PRESENT: u8 = 8;

    /// The flags of `c`.
    pub(crate) fn of(c: char) -> Flags {
        let mut f = Self::PRESENT;
        match category(c) {
            Cat::Number => f |= Self::NUMBER,
            Cat::Letter => f |= Self::LETTER,
            _ => {}
        }
        if is_whitespace(c) {
            f |= Self::WHITESPACE;
        }
        Flags(f)
    }

    /// \p{N}.
    pub(crate) fn number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }

    /// \p{L}.
    pub(crate) fn letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }

    /// \s.
    pub(crate) fn ws(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }

    /// A real codepoint (llama.cpp's `flags.as_uint() != 0`).
    pub(crate) fn present(self) -> bool {
        self.0 & Self::PRESENT != 0
    }
}

/// llama.cpp's whitespace set: exactly the Unicode White_Space property.
pub(crate) fn is_whitespace(c: char) -> bool {
    matches!(
        c,
        '\u{9}'..='\u{D}'
            | ' '
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// Codepoints below this are looked up directly; the rest by binary search over ranges.
const DIRECT: usize = 0x3000;

struct CatTable {
    direct: Vec<Cat>,
    /// Sorted, non-overlapping (first, last, category) ranges; gaps are `Undefined`.
    ranges: Vec<(u32, u32, Cat)>,
}

fn table() -> &'static CatTable {
    static TABLE: OnceLock<CatTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let groups = [
            ("N", Cat::Number),
            ("L", Cat::Letter),
            ("Z", Cat::Separator),
            ("M", Cat::Mark),
            ("P", Cat::Punct),
            ("S", Cat::Symbol),
            ("Cc", Cat::Control),
            ("Cf", Cat::Control),
            ("Co", Cat::Control),
            ("Cs", Cat::Control),
        ];
        let mut ranges = Vec::new();
        for (name, cat) in groups {
            // The class names are constants known to regex-syntax; a failure would leave the
            // category empty (codepoints read as undefined) rather than abort.
            let Ok(hir) = regex_syntax::Parser::new().parse(&format!(r"\p{{{name}}}")) else { continue };
            if let HirKind::Class(Class::Unicode(cls)) = hir.kind() {
                ranges.extend(cls.ranges().iter().map(|r| (r.start() as u32, r.end() as u32, cat)));
            }
        }
        ranges.sort_unstable_by_key(|r| r.0);
        let mut direct = vec![Cat::Undefined; DIRECT];
        for &(a, b, cat) in &ranges {
            for cp in a..=b.min(DIRECT as u32 - 1) {
                direct[cp as usize] = cat;
            }
        }
        CatTable { direct, ranges }
    })
}

/// The general-category group of `c`.
pub(crate) fn category(c: char) -> Cat {
    let t = table();
    let cp = c as u32;
    if let Some(&cat) = t.direct.get(cp as usize) {
        return cat;
    }
    let i = t.ranges.partition_point(|r| r.0 <= cp);
    match i.checked_sub(1).and_then(|i| t.ranges.get(i)) {
        Some(&(_, last, cat)) if cp <= last => cat,
        _ => Cat::Undefined,
    }
}

/// GPT-2's byte→unicode table: printable Latin-1 bytes map to themselves, the other 68 bytes to
/// U+0100.. in byte order, so every byte gets a visible, non-whitespace character.
pub(crate) fn byte_to_char_table() -> &'static [char; 256] {
    static T: OnceLock<[char; 256]> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = ['\0'; 256];
        let mut n = 0u32;
        for b in 0..=255u32 {
            let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
            let cp = if printable {
                b
            } else {
                n += 1;
                255 + n
            };
            // All values are below U+0200, hence valid chars.
            t[b as usize] = char::from_u32(cp).unwrap_or('\u{FFFD}');
        }
        t
    })
}

/// Inverse of [`byte_to_char_table`]: the byte a byte-level character stands for.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    static T: OnceLock<[i16; 0x200]> = OnceLock::new();
    let t = T.get_or_init(|| {
        let mut t = [-1i16; 0x200];
        for (b, &c) in byte_to_char_table().iter().enumerate() {
            t[c as usize] = b as i16;
        }
        t
    });
    t.get(c as usize).and_then(|&b| u8::try_from(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories() {
        assert_eq!(category('a'), Cat::Letter);
        assert_eq!(category('7'), Cat::Number);
        assert_eq!(category('日'), Cat::Letter);
        assert_eq!(category('😀'), Cat::Symbol);
        assert_eq!(category('\u{301}'), Cat::Mark);
        assert_eq!(category('\u{200D}'), Cat::Control);
        assert_eq!(category('，'), Cat::Punct);
        assert_eq!(category('\u{378}'), Cat::Undefined);
        assert_eq!(category('\u{2028}'), Cat::Separator);
    }

    #[test]
    fn byte_map_round_trips() {
        assert_eq!(byte_to_char_table()[b' ' as usize], 'Ġ');
        assert_eq!(byte_to_char_table()[b'\n' as usize], 'Ċ');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char_table()[b as usize]), Some(b));
        }
    }
}
