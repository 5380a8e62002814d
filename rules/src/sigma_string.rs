//! Sigma string values as the specification defines them: wildcards (`*`, `?`) and their escapes,
//! `%placeholders%` (with `expand`), and the modifiers that turn one value into others before it
//! is matched (`windash`, `base64`, `base64offset`, `utf16le`, `utf16be`, `utf16`, `wide`).
//!
//! A value is a sequence of pieces: literal bytes (bytes, not text, because `utf16le` makes text
//! into bytes that only `base64` turns back into text), wildcards and placeholders. The matcher
//! asks for the final text of each piece once every modifier has been applied.

use std::fmt;

use base64::Engine as _;

/// One part of a Sigma value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Literal(Vec<u8>),
    /// `*`: any run of characters, also none.
    AnyRun,
    /// `?`: exactly one character.
    AnyOne,
    /// `%name%` in a value with `expand`.
    Placeholder(String),
}

/// A Sigma value: literal text with wildcards and placeholders.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SigmaString {
    pieces: Vec<Piece>,
}

/// Why a value-transforming modifier cannot transform a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TransformError {
    /// Base64 of a value with wildcards has no fixed text to search for.
    Wildcards { modifier: &'static str },
    /// `base64offset` of a value this short leaves nothing that is stable in every offset.
    TooShort,
    /// The placeholder is not defined (`placeholders:` in policy.yaml).
    UnknownPlaceholder(String),
    /// The value stays bytes that are not text (`utf16be` without a `base64` after it).
    NotText { modifier: &'static str },
    /// The value would become more alternatives than [`MAX_ALTERNATIVES`].
    TooManyAlternatives { modifier: &'static str },
}

/// One value may become at most this many alternatives (through `windash`, `base64offset` and
/// `expand`); a field's list of values at most this many in all. The limit keeps a rule's
/// compiled size bounded: `windash` on a value with n dashes makes 5^n values.
pub(crate) const MAX_ALTERNATIVES: usize = 4096;

impl fmt::Display for TransformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Wildcards { modifier } => {
                write!(f, "`{modifier}` cannot encode a value with wildcards (`*`, `?`)")
            }
            Self::TooShort => f.write_str(
                "the value is too short for `base64offset`: some offset leaves no stable text to search for",
            ),
            Self::UnknownPlaceholder(name) => write!(f, "placeholder `%{name}%` is not defined"),
            Self::NotText { modifier } => write!(f, "after `{modifier}` the value is bytes, not text"),
            Self::TooManyAlternatives { modifier } => write!(
                f,
                "`{modifier}` makes more than {MAX_ALTERNATIVES} values of this field, the limit per field"
            ),
        }
    }
}

/// The characters `windash` makes interchangeable: `-`, `/`, en dash, em dash, horizontal bar.
const DASHES: [char; 5] = ['-', '/', '\u{2013}', '\u{2014}', '\u{2015}'];

/// The UTF-16 encodings of `utf16le` (and `wide`), `utf16be` and `utf16` (little-endian with a
/// byte order mark).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Utf16 {
    LittleEndian,
    BigEndian,
    WithByteOrderMark,
}

impl SigmaString {
    /// Reads a rule value: `\*`, `\?` and `\\` stand for the character, other backslashes are
    /// literal; with `placeholders`, `%name%` is a placeholder and `\%` a plain `%`.
    pub fn parse(text: &str, placeholders: bool) -> Self {
        let mut value = Self::default();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.peek() {
                    Some(&next @ ('*' | '?' | '\\')) => {
                        literal.push(next);
                        chars.next();
                    }
                    Some('%') if placeholders => {
                        literal.push('%');
                        chars.next();
                    }
                    _ => literal.push('\\'),
                },
                '*' | '?' => {
                    value.push_literal(std::mem::take(&mut literal).as_bytes());
                    value.pieces.push(if c == '*' { Piece::AnyRun } else { Piece::AnyOne });
                }
                '%' if placeholders => {
                    let rest: String = chars.clone().take_while(|&c| c != '%').collect();
                    let closed = chars.clone().nth(rest.chars().count()) == Some('%');
                    if closed && !rest.is_empty() && rest.chars().all(|c| c.is_alphanumeric() || c == '_') {
                        value.push_literal(std::mem::take(&mut literal).as_bytes());
                        value.pieces.push(Piece::Placeholder(rest.clone()));
                        for _ in 0..=rest.chars().count() {
                            chars.next();
                        }
                    } else {
                        literal.push('%');
                    }
                }
                _ => literal.push(c),
            }
        }
        value.push_literal(literal.as_bytes());
        value
    }

    fn push_literal(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(Piece::Literal(last)) = self.pieces.last_mut() {
            last.extend_from_slice(bytes);
        } else {
            self.pieces.push(Piece::Literal(bytes.to_vec()));
        }
    }

    fn push(&mut self, piece: Piece) {
        match piece {
            Piece::Literal(bytes) => self.push_literal(&bytes),
            other => self.pieces.push(other),
        }
    }

    #[cfg(test)]
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    pub fn has_wildcards(&self) -> bool {
        self.pieces.iter().any(|piece| matches!(piece, Piece::AnyRun | Piece::AnyOne))
    }

    /// The value with `*` added before (`contains`, `endswith`) and after (`contains`, `startswith`).
    pub fn surrounded(&self, before: bool, after: bool) -> Self {
        let mut value = Self::default();
        if before && self.pieces.first() != Some(&Piece::AnyRun) {
            value.pieces.push(Piece::AnyRun);
        }
        for piece in &self.pieces {
            value.push(piece.clone());
        }
        if after && value.pieces.last() != Some(&Piece::AnyRun) {
            value.pieces.push(Piece::AnyRun);
        }
        value
    }

    /// The literal text of a value without wildcards; None if it has wildcards.
    pub fn plain_text(&self) -> Option<String> {
        let mut text = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(bytes) => text.push_str(&String::from_utf8_lossy(bytes)),
                _ => return None,
            }
        }
        Some(text)
    }

    /// Whether every literal piece is text (UTF-8), as matching needs it to be.
    pub fn is_text(&self) -> bool {
        self.pieces.iter().all(|piece| match piece {
            Piece::Literal(bytes) => std::str::from_utf8(bytes).is_ok(),
            _ => true,
        })
    }

    /// Each placeholder replaced by each of its values (every combination).
    pub fn expand<'v>(
        &self,
        lookup: &dyn Fn(&str) -> Option<&'v [SigmaString]>,
    ) -> Result<Vec<SigmaString>, TransformError> {
        let mut results = vec![SigmaString::default()];
        for piece in &self.pieces {
            if let Piece::Placeholder(name) = piece {
                let values = lookup(name).ok_or_else(|| TransformError::UnknownPlaceholder(name.clone()))?;
                if results.len() * values.len().max(1) > MAX_ALTERNATIVES {
                    return Err(TransformError::TooManyAlternatives { modifier: "expand" });
                }
                results = results
                    .iter()
                    .flat_map(|prefix| {
                        values.iter().map(move |value| {
                            let mut joined = prefix.clone();
                            value.pieces.iter().for_each(|piece| joined.push(piece.clone()));
                            joined
                        })
                    })
                    .collect();
            } else {
                for result in &mut results {
                    result.push(piece.clone());
                }
            }
        }
        Ok(results)
    }

    /// `windash`: every dash that starts a command-line flag (after a non-word character or at
    /// the start, before a word character) in each of its five spellings, in every combination.
    pub fn windash(&self) -> Result<Vec<SigmaString>, TransformError> {
        // The value as a list of characters and wildcards, to see each dash's neighbours.
        enum Item {
            Char(char),
            Other(Piece),
        }
        let mut items = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(bytes) => match std::str::from_utf8(bytes) {
                    Ok(text) => items.extend(text.chars().map(Item::Char)),
                    Err(_) => return Err(TransformError::NotText { modifier: "windash" }),
                },
                other => items.push(Item::Other(other.clone())),
            }
        }
        let is_word = |item: Option<&Item>| matches!(item, Some(Item::Char(c)) if c.is_alphanumeric() || *c == '_');
        let flag_dashes: Vec<usize> = (0..items.len())
            .filter(|&i| {
                matches!(items[i], Item::Char(c) if DASHES.contains(&c))
                    && !is_word(i.checked_sub(1).and_then(|j| items.get(j)))
                    && is_word(items.get(i + 1))
            })
            .collect();
        let count = u32::try_from(flag_dashes.len()).unwrap_or(u32::MAX);
        let combinations = DASHES.len().checked_pow(count).filter(|&n| n <= MAX_ALTERNATIVES);
        let Some(combinations) = combinations else {
            return Err(TransformError::TooManyAlternatives { modifier: "windash" });
        };
        let mut results = Vec::with_capacity(combinations);
        for mut combination in 0..combinations {
            let mut value = SigmaString::default();
            let mut literal = String::new();
            for (index, item) in items.iter().enumerate() {
                match item {
                    Item::Char(c) if flag_dashes.contains(&index) => {
                        literal.push(DASHES[combination % DASHES.len()]);
                        combination /= DASHES.len();
                        let _ = c;
                    }
                    Item::Char(c) => literal.push(*c),
                    Item::Other(piece) => {
                        value.push_literal(std::mem::take(&mut literal).as_bytes());
                        value.push(piece.clone());
                    }
                }
            }
            value.push_literal(literal.as_bytes());
            results.push(value);
        }
        Ok(results)
    }

    fn bytes(&self, modifier: &'static str) -> Result<Vec<u8>, TransformError> {
        let mut bytes = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(literal) => bytes.extend_from_slice(literal),
                Piece::AnyRun | Piece::AnyOne | Piece::Placeholder(_) => {
                    return Err(TransformError::Wildcards { modifier })
                }
            }
        }
        Ok(bytes)
    }

    /// `base64`: the value's bytes, Base64-encoded (standard alphabet, padded).
    pub fn base64(&self) -> Result<SigmaString, TransformError> {
        let bytes = self.bytes("base64")?;
        let mut value = SigmaString::default();
        value.push_literal(base64::engine::general_purpose::STANDARD.encode(bytes).as_bytes());
        Ok(value)
    }

    /// `base64offset`: the three texts the value's bytes encode to wherever they sit in a longer
    /// Base64 text (shifted by zero, one or two bytes), without the characters that depend on the
    /// bytes around them.
    pub fn base64offset(&self) -> Result<Vec<SigmaString>, TransformError> {
        const START: [usize; 3] = [0, 2, 3];
        const END_TRIM: [usize; 3] = [0, 3, 2];
        let bytes = self.bytes("base64offset")?;
        let mut results = Vec::with_capacity(3);
        for shift in 0..3 {
            let mut shifted = vec![b' '; shift];
            shifted.extend_from_slice(&bytes);
            let encoded = base64::engine::general_purpose::STANDARD.encode(&shifted);
            let end = encoded.len().saturating_sub(END_TRIM[(bytes.len() + shift) % 3]);
            let stable = encoded.get(START[shift]..end).unwrap_or_default();
            if stable.is_empty() {
                return Err(TransformError::TooShort);
            }
            let mut value = SigmaString::default();
            value.push_literal(stable.as_bytes());
            results.push(value);
        }
        Ok(results)
    }

    /// `utf16le`, `utf16be`, `utf16`: the text's UTF-16 bytes; wildcards stay wildcards.
    pub fn utf16(&self, encoding: Utf16, modifier: &'static str) -> Result<SigmaString, TransformError> {
        let mut value = SigmaString::default();
        if encoding == Utf16::WithByteOrderMark {
            value.push_literal(&[0xFF, 0xFE]);
        }
        for piece in &self.pieces {
            match piece {
                Piece::Literal(bytes) => {
                    let text = std::str::from_utf8(bytes).map_err(|_| TransformError::NotText { modifier })?;
                    let encoded: Vec<u8> = text
                        .encode_utf16()
                        .flat_map(|unit| match encoding {
                            Utf16::BigEndian => unit.to_be_bytes(),
                            Utf16::LittleEndian | Utf16::WithByteOrderMark => unit.to_le_bytes(),
                        })
                        .collect();
                    value.push_literal(&encoded);
                }
                other => value.push(other.clone()),
            }
        }
        Ok(value)
    }

    /// An anchored regex for the value (`*` any run, `?` one character); the caller has checked
    /// [`Self::is_text`].
    pub fn regex_pattern(&self, cased: bool) -> String {
        let mut pattern = String::from(if cased { "(?s)^" } else { "(?si)^" });
        for piece in &self.pieces {
            match piece {
                Piece::Literal(bytes) => pattern.push_str(&regex::escape(&String::from_utf8_lossy(bytes))),
                Piece::AnyRun => pattern.push_str(".*"),
                Piece::AnyOne => pattern.push('.'),
                Piece::Placeholder(name) => pattern.push_str(&regex::escape(&format!("%{name}%"))),
            }
        }
        pattern.push('$');
        pattern
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &SigmaString) -> String {
        value.plain_text().unwrap()
    }

    #[test]
    fn escapes_follow_the_specification() {
        // Examples of the Sigma specification's "Escape Character" section.
        assert_eq!(SigmaString::parse(r"C:\Windows\cmd.exe", false).plain_text().unwrap(), r"C:\Windows\cmd.exe");
        assert_eq!(SigmaString::parse(r"C:\\Windows", false).plain_text().unwrap(), r"C:\Windows");
        assert_eq!(SigmaString::parse(r"a\*b", false).plain_text().unwrap(), "a*b");
        assert_eq!(SigmaString::parse(r"a\?b", false).plain_text().unwrap(), "a?b");
        assert_eq!(
            SigmaString::parse(r"a\\*", false).pieces(),
            &[Piece::Literal(br"a\".to_vec()), Piece::AnyRun]
        );
        assert_eq!(SigmaString::parse(r"a\\\*", false).plain_text().unwrap(), r"a\*");
        assert_eq!(SigmaString::parse(r"a\\\\", false).plain_text().unwrap(), r"a\\");
        assert_eq!(SigmaString::parse(r"a\\\\b", false).plain_text().unwrap(), r"a\\b");
    }

    #[test]
    fn placeholders_only_with_expand_and_escaped_percent_is_plain() {
        assert_eq!(SigmaString::parse("%Servers%", false).plain_text().unwrap(), "%Servers%");
        assert_eq!(SigmaString::parse("%Servers%", true).pieces(), &[Piece::Placeholder("Servers".into())]);
        assert_eq!(
            SigmaString::parse(r"\%plain%name%", true).pieces(),
            &[Piece::Literal(b"%plain".to_vec()), Piece::Placeholder("name".into())]
        );
        assert_eq!(SigmaString::parse("100% sure", true).plain_text().unwrap(), "100% sure");
    }

    #[test]
    fn expand_makes_every_combination_and_names_unknown_placeholders() {
        let servers = [SigmaString::parse("srv-*", false), SigmaString::parse("db1", false)];
        let lookup = |name: &str| (name == "Servers").then_some(&servers[..]);
        let expanded = SigmaString::parse(r"\\%Servers%\c$", true).expand(&lookup).unwrap();
        assert_eq!(expanded.len(), 2);
        assert_eq!(expanded[0].regex_pattern(false), r"(?si)^\\srv\-.*\\c\$$");
        assert_eq!(text(&expanded[1]), r"\db1\c$");
        assert_eq!(
            SigmaString::parse("%Nope%", true).expand(&lookup).unwrap_err(),
            TransformError::UnknownPlaceholder("Nope".into())
        );
    }

    #[test]
    fn windash_varies_flag_dashes_only() {
        let variants: Vec<String> =
            SigmaString::parse(" -encodedcommand", false).windash().unwrap().iter().map(text).collect();
        assert_eq!(variants, [" -encodedcommand", " /encodedcommand", " \u{2013}encodedcommand", " \u{2014}encodedcommand", " \u{2015}encodedcommand"]);
        // The dash inside a word and before a space stays as written.
        assert_eq!(SigmaString::parse("net-tool - x", false).windash().unwrap().len(), 1);
        assert_eq!(SigmaString::parse("-a -b", false).windash().unwrap().len(), 25);
        assert!(matches!(
            SigmaString::parse(&" -a".repeat(6), false).windash(),
            Err(TransformError::TooManyAlternatives { modifier: "windash" })
        ));
    }

    #[test]
    fn base64_and_offsets_match_the_reference_encodings() {
        assert_eq!(text(&SigmaString::parse("sh -i", false).base64().unwrap()), "c2ggLWk=");
        // The specification's example value, in its three alignments (as pySigma computes them).
        let offsets: Vec<String> =
            SigmaString::parse("/bin/bash", false).base64offset().unwrap().iter().map(text).collect();
        assert_eq!(offsets, ["L2Jpbi9iYXNo", "9iaW4vYmFza", "vYmluL2Jhc2"]);
        assert_eq!(
            SigmaString::parse("a*", false).base64().unwrap_err(),
            TransformError::Wildcards { modifier: "base64" }
        );
        assert_eq!(SigmaString::parse("a", false).base64offset().unwrap_err(), TransformError::TooShort);
    }

    #[test]
    fn utf16_encodings() {
        let cmd = SigmaString::parse("cmd", false);
        assert_eq!(cmd.utf16(Utf16::LittleEndian, "utf16le").unwrap().pieces(), &[Piece::Literal(b"c\0m\0d\0".to_vec())]);
        assert_eq!(cmd.utf16(Utf16::BigEndian, "utf16be").unwrap().pieces(), &[Piece::Literal(b"\0c\0m\0d".to_vec())]);
        assert_eq!(
            cmd.utf16(Utf16::WithByteOrderMark, "utf16").unwrap().pieces(),
            &[Piece::Literal(b"\xFF\xFEc\0m\0d\0".to_vec())]
        );
        let encoded = cmd.utf16(Utf16::LittleEndian, "wide").unwrap().base64().unwrap();
        assert_eq!(text(&encoded), "YwBtAGQA");
        assert!(!cmd.utf16(Utf16::WithByteOrderMark, "utf16").unwrap().is_text());
    }
}
