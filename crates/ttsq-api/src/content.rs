//! The optional content filter: configured regular expressions
//! (`limits.blocked_patterns`) a job's normalised text must not match. A
//! match is refused with 422 `content_rejected`; neither the text nor the
//! pattern that matched is echoed or logged.

use regex_lite::Regex;

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

    /// Whether `text` matches any pattern.
    pub fn blocks(&self, text: &str) -> bool {
        self.patterns.iter().any(|p| p.is_match(text))
    }
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
}
