//! The optional content filter: configured regular expressions
//! (`limits.blocked_patterns`) a job's normalised text must not match. A
//! match is refused with 422 `content_rejected`; neither the text nor the
//! pattern that matched is echoed or logged.
//!
//! Characters that render as nothing (a soft hyphen, a zero-width space, a
//! bidi control, a tag) and look-alike forms (fullwidth letters) would
//! otherwise let `forb\u{ad}idden` pass a `forbidden` pattern while a
//! synthesizer reads the word all the same. So a text is matched twice: as
//! it is, and in its [`folded`] form.

use regex_lite::Regex;
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Compiled blocked patterns; empty when none are configured.
#[derive(Debug, Default)]
pub struct ContentFilter {
    patterns: Vec<Regex>,
}

impl ContentFilter {
    /// Compiles `patterns`; empty strings (an unset list from the
    /// environment) are skipped, since they would match every text.
    pub fn new(patterns: &[String]) -> Result<Self, regex_lite::Error> {
        let patterns = patterns
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| Regex::new(p))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// Whether `text`, as it is or [`folded`], matches any pattern.
    pub fn blocks(&self, text: &str) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let folded = folded(text);
        self.patterns
            .iter()
            .any(|p| p.is_match(text) || p.is_match(&folded))
    }
}

/// `text` as it is read aloud: without the characters that render as
/// nothing, compatibility-folded (NFKC: fullwidth and other look-alike forms
/// become the plain letters), whitespace collapsed again.
fn folded(text: &str) -> String {
    let visible: String = text.chars().filter(|c| !renders_as_nothing(*c)).collect();
    let compatible: String = visible.nfkc().filter(|c| !renders_as_nothing(*c)).collect();
    compatible.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Format characters (`Cf`: soft hyphen, zero-width space, joiners, word
/// joiner, bidi controls, the byte order mark, tags) and the other default
/// ignorable code points that are not `Cf`: the combining grapheme joiner,
/// Hangul fillers, Khmer inherent vowels, Mongolian and other variation
/// selectors.
fn renders_as_nothing(c: char) -> bool {
    c.general_category() == GeneralCategory::Format
        || matches!(
            c,
            '\u{034F}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FFA0}'
                | '\u{E0100}'..='\u{E01EF}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_matching_texts_only_and_ignores_empty_patterns() {
        let filter =
            ContentFilter::new(&["(?i)forbidden\\s+word".to_owned(), String::new()]).unwrap();
        assert!(filter.blocks("a FORBIDDEN   word here"));
        assert!(!filter.blocks("an innocent sentence"));
        assert!(!ContentFilter::default().blocks("anything"));
    }

    #[test]
    fn invisible_and_look_alike_characters_do_not_hide_a_blocked_word() {
        let filter = ContentFilter::new(&["(?i)forbidden\\s+word".to_owned()]).unwrap();
        for disguised in [
            "a forb\u{ad}idden word",             // soft hyphen
            "a forb\u{200b}idden word",           // zero-width space
            "a for\u{200d}bid\u{200c}den word",   // zero-width joiner, non-joiner
            "a forb\u{2060}idden word",           // word joiner
            "a forb\u{feff}idden word",           // zero-width no-break space
            "a forb\u{202e}idd\u{202c}en word",   // bidi override and pop
            "a forb\u{2066}idden\u{2069} word",   // bidi isolate
            "a forb\u{200e}idden word",           // left-to-right mark
            "a forb\u{e0041}idden\u{e007f} word", // tag characters
            "a forb\u{fe0f}idden word",           // variation selector
            "a forb\u{34f}idden word",            // combining grapheme joiner
            "a \u{ff46}\u{ff4f}\u{ff52}\u{ff42}\u{ff49}\u{ff44}\u{ff44}\u{ff45}\u{ff4e} word", // fullwidth
            "a forbidden\u{200b} \u{200b}word", // an invisible run beside the space
        ] {
            assert!(
                filter.blocks(disguised),
                "{} passed the filter",
                disguised.escape_unicode()
            );
        }
        assert!(!filter.blocks("a forbid\u{ad}ding word"));
    }
}
