//! Text that reads the same to every party and compares the same in every rule.
//!
//! A claim such as `category ∉ {gambling}` is only as strong as the comparison behind it:
//! `gam\u{AD}bling` (with an invisible soft hyphen), `gambling\u{FE0F}` or a value in
//! decomposed form must not slip past it, and an operator reading the audit trail must
//! see exactly what the rules saw. So every free-text value Writ accepts (claim values,
//! action attributes, purpose, context values, reasons) must already be in one canonical
//! form, checked once where it enters ([`check`]). Nothing is silently rewritten: what a
//! caller sent is what is stored, compared and shown (a case-insensitive set stores its
//! members folded, as it says on the wire).
//!
//! The canonical form:
//! - Unicode NFC;
//! - no character of the general categories Cc (control), Cf (format: bidi controls,
//!   soft hyphen, tag characters, …), Cs, Co, Cn (unassigned), Zl or Zp, none with the
//!   Default_Ignorable_Code_Point property (variation selectors, Hangul fillers, the
//!   combining grapheme joiner, …), no space but U+0020, and not the blank braille pattern
//!   U+2800 (a symbol drawn as a blank);
//! - no leading or trailing space, and no combining mark at the start.
//!
//! Exact comparisons then compare those bytes. Case-insensitive claim kinds compare
//! [`fold`]ed values: Unicode's compatibility caseless match (full case folding with
//! NFKD, so `GAMBLING`, `Gambling` and fullwidth `ｇａｍｂｌｉｎｇ` are one value). Letters
//! of different scripts that merely look alike (Latin `a`, Cyrillic `а`) stay different:
//! an allow-set refuses such a look-alike, a deny-set lets it through, which is why
//! allow-sets are the kind to use for what must never pass.

use icu_casemap::CaseMapper;
use icu_normalizer::{ComposingNormalizer, DecomposingNormalizer};
use icu_properties::props::{DefaultIgnorableCodePoint, GeneralCategory};
use icu_properties::{CodePointMapData, CodePointSetData};
use std::fmt;

/// Why a string is not in canonical form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Not in Unicode NFC.
    #[error("is not in Unicode NFC (normalise it before sending)")]
    NotNfc,
    /// Carries a character that is invisible, reorders text or is not a character.
    #[error("contains {what} U+{code:04X} at byte {at}")]
    Forbidden {
        /// The code point.
        code: u32,
        /// Its byte offset.
        at: usize,
        /// What kind of character it is.
        what: &'static str,
    },
    /// Starts or ends with a space.
    #[error("starts or ends with a space")]
    EdgeSpace,
    /// Starts with a combining mark (it would attach to whatever precedes it on screen).
    #[error("starts with a combining mark")]
    LeadingMark,
}

/// Why a character is refused, if it is.
fn forbidden(c: char) -> Option<&'static str> {
    let gc = CodePointMapData::<GeneralCategory>::new().get(c);
    let what = match gc {
        GeneralCategory::Control => "the control character",
        GeneralCategory::Format => "the invisible format character",
        GeneralCategory::Surrogate | GeneralCategory::Unassigned => "the unassigned code point",
        GeneralCategory::PrivateUse => "the private-use character",
        GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => {
            "the line or paragraph separator"
        }
        GeneralCategory::SpaceSeparator if c != ' ' => "the space character",
        _ if CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c) => {
            "the invisible character"
        }
        // A symbol (So) by category that every font draws as a blank.
        _ if c == '\u{2800}' => "the blank braille pattern",
        _ => return None,
    };
    Some(what)
}

fn is_mark(c: char) -> bool {
    matches!(
        CodePointMapData::<GeneralCategory>::new().get(c),
        GeneralCategory::NonspacingMark
            | GeneralCategory::SpacingMark
            | GeneralCategory::EnclosingMark
    )
}

/// Is `s` in canonical form? `Err` says why not.
pub fn check(s: &str) -> Result<(), TextError> {
    if let Some((at, c)) = s.char_indices().find(|(_, c)| forbidden(*c).is_some()) {
        return Err(TextError::Forbidden {
            code: u32::from(c),
            at,
            what: forbidden(c).unwrap_or("the character"),
        });
    }
    if s.starts_with(' ') || s.ends_with(' ') {
        return Err(TextError::EdgeSpace);
    }
    if s.chars().next().is_some_and(is_mark) {
        return Err(TextError::LeadingMark);
    }
    if !ComposingNormalizer::new_nfc().is_normalized(s) {
        return Err(TextError::NotNfc);
    }
    Ok(())
}

/// The value case-insensitive claims compare: Unicode's compatibility caseless match
/// (D145: `NFKD(toCasefold(NFKD(toCasefold(NFD(s)))))`), recomposed to NFC. A case-
/// insensitive set stores its members in this form, so the wire accepts only members whose
/// folded form is itself canonical (a lone spacing accent such as `¨` folds to a space and
/// a combining mark, and is refused there).
pub fn fold(s: &str) -> String {
    let fold = |s: &str| CaseMapper::new().fold_string(s).into_owned();
    let nfkd = |s: &str| DecomposingNormalizer::new_nfkd().normalize(s).into_owned();
    let nfd = DecomposingNormalizer::new_nfd().normalize(s).into_owned();
    let twice = nfkd(&fold(&nfkd(&fold(&nfd))));
    ComposingNormalizer::new_nfc()
        .normalize(&twice)
        .into_owned()
}

/// Most characters of a value echoed in a message.
pub const SHOWN_CHARS: usize = 48;

/// A value as messages and audit events show it: quoted, escaped, and cut to
/// [`SHOWN_CHARS`] characters, so no input can make a message large.
#[derive(Clone, Copy, Debug)]
pub struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cut: String = self.0.chars().take(SHOWN_CHARS).collect();
        if cut.len() < self.0.len() {
            write!(f, "{cut:?}…")
        } else {
            write!(f, "{cut:?}")
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut with `…`.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn canonical_text_is_accepted() {
        for ok in [
            "",
            "travel",
            "Zürich",
            "東京",
            "a b",
            "/trips/2026",
            "naïve café",
            "x̌y",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn what_the_review_found_is_refused() {
        // Each of these passed a raw-byte deny-set for "gambling" before.
        for bad in [
            "gam\u{AD}bling",    // soft hyphen (Cf)
            "gambling\u{FE0F}",  // variation selector
            "gambling\u{E0020}", // tag character
            "gam\u{200B}bling",  // zero-width space
            "gam\u{34F}bling",   // combining grapheme joiner
            "\u{3164}gambling",  // Hangul filler
            "gam\u{17B4}bling",  // Khmer inherent vowel
            "gambling\u{180E}",  // Mongolian vowel separator
            "\u{202E}gnilbmag",  // bidi override
            "gambling\u{A0}",    // no-break space
            "a\u{2028}b",        // line separator
            "a\u{0}b",
            "\u{E000}",        // private use
            "\u{10FFFF}",      // noncharacter
            "gambling ",       // trailing space
            " gambling",       // leading space
            "\u{301}gambling", // leading combining mark
            "e\u{301}",        // decomposed é: not NFC
        ] {
            assert!(check(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn folding_unifies_case_and_compatibility_forms() {
        let g = fold("gambling");
        for same in ["Gambling", "GAMBLING", "ｇａｍｂｌｉｎｇ", "GaMbLiNg"] {
            assert_eq!(fold(same), g, "{same:?}");
        }
        assert_eq!(fold("Straße"), fold("STRASSE"));
        assert_eq!(fold("ΣΊΣΥΦΟΣ"), fold("σίσυφος"));
        assert_ne!(
            fold("gambling"),
            fold("gаmbling"),
            "Cyrillic а stays distinct"
        );
        // The folded form is itself canonical.
        for s in ["Straße", "ｇａｍｂｌｉｎｇ", "Åström", "ﬁle"] {
            assert_eq!(check(&fold(s)), Ok(()), "{s:?}");
        }
    }

    #[test]
    fn shown_and_truncate_bound_what_they_print() {
        let long = "x".repeat(10_000);
        assert!(Shown(&long).to_string().len() < SHOWN_CHARS + 8);
        assert_eq!(Shown("ab").to_string(), "\"ab\"");
        let t = truncate("ééééé".to_string(), 6);
        assert!(t.len() <= 6 && t.ends_with('…'), "{t}");
        assert_eq!(truncate("abc".to_string(), 3), "abc");
    }
}
