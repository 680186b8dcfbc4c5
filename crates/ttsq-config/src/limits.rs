//! `[limits]`: limits on submitted jobs.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{Checked, Invalid, at_least_one};

/// Limits on submitted jobs.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Most characters of text in one job served by one provider request:
    /// a high-priority job, and the most a normal job may hold before it is
    /// a long job, split into chunks (also bounded by the dialect's
    /// providers' own request limits).
    pub max_text_chars: usize,
    /// Most characters of text in one normal-priority job: a text longer
    /// than one request takes is a long job, split into chunks synthesized
    /// in parallel and joined. At least `max_text_chars`.
    pub max_long_text_chars: usize,
    /// Most bytes of metadata as JSON.
    pub max_metadata_bytes: usize,
    /// Regular expressions (regex-lite syntax) a job's normalised text must
    /// not match; a match is refused with 422 `content_rejected`.
    pub blocked_patterns: Vec<String>,
}

impl LimitSettings {
    /// Range checks serde cannot express, and patterns that do not compile.
    pub(crate) fn check(&self) -> Checked {
        at_least_one(
            "limits.max_text_chars",
            u64::try_from(self.max_text_chars).unwrap_or(u64::MAX),
        )?;
        if self.max_long_text_chars < self.max_text_chars {
            return Err(Invalid::new(
                "limits.max_long_text_chars",
                format!(
                    "must be at least limits.max_text_chars ({})",
                    self.max_text_chars
                ),
            ));
        }
        for (i, pattern) in self.blocked_patterns.iter().enumerate() {
            if let Err(err) = regex_lite::Regex::new(pattern) {
                return Err(Invalid::new(
                    format!("limits.blocked_patterns.{i}"),
                    format!("not a valid regular expression: {err}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Settings, tests::env};

    #[test]
    fn long_texts_default_to_200000_characters_and_are_never_shorter_than_short_ones() {
        let s = Settings::load(None, env(&[])).unwrap();
        assert_eq!(s.limits.max_long_text_chars, 200_000);
        let s = Settings::load(None, env(&[("TTSQ_LIMITS_MAX_LONG_TEXT_CHARS", "8000")])).unwrap();
        assert_eq!(s.limits.max_long_text_chars, 8_000);
        let err = Settings::load(
            None,
            env(&[
                ("TTSQ_LIMITS_MAX_TEXT_CHARS", "6000"),
                ("TTSQ_LIMITS_MAX_LONG_TEXT_CHARS", "5999"),
            ]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("TTSQ_LIMITS_MAX_LONG_TEXT_CHARS"),
            "{err}"
        );
    }

    #[test]
    fn bad_blocked_patterns_are_refused_by_name() {
        let err = Settings::load(
            None,
            env(&[("TTSQ_LIMITS_BLOCKED_PATTERNS", "ok,(unclosed")]),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("limits.blocked_patterns.1"),
            "{err}"
        );
        let s = Settings::load(
            None,
            env(&[("TTSQ_LIMITS_BLOCKED_PATTERNS", "(?i)bad words")]),
        )
        .unwrap();
        assert_eq!(s.limits.blocked_patterns, ["(?i)bad words"]);
    }
}
