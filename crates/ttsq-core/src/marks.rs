//! Speech marks: when each word, sentence and viseme of the audio is heard.
//!
//! A job asks for marks with `marks: ["word", "sentence", "viseme"]`. The
//! marks file is a JSON array stored beside the audio under the same content
//! hash (`audio/{hh}/{hash}.marks.json`); each mark is
//! `{type, start_ms, end_ms, value}` like Amazon Polly's, and word and
//! sentence marks also carry `start`/`end`: their character offsets
//! (Unicode scalar values, end exclusive) into the normalised text.
//!
//! # Visemes
//!
//! Phonemes map to the viseme names Amazon Polly uses, so lip-sync code
//! written for Polly reads ours unchanged. The table (espeak-ng phoneme
//! mnemonics → viseme), also in the README:
//!
//! | viseme | phonemes (IPA) | espeak-ng |
//! |---|---|---|
//! | `p` | p b m | `p b m` |
//! | `f` | f v | `f v` |
//! | `T` | θ ð | `T D` |
//! | `t` | t d n l | `t d n l` (and `t2 d2 n- l/` …) |
//! | `s` | s z | `s z` |
//! | `S` | ʃ ʒ tʃ dʒ | `S Z tS dZ` |
//! | `k` | k g ŋ h x | `k g N h x` |
//! | `r` | ɹ | `r r- R` |
//! | `i` | i ɪ j | `i i: I I# j` |
//! | `u` | u ʊ w | `u u: U w` |
//! | `@` | ə ɚ ɜ | `@ @L @5 3 3:` |
//! | `a` | æ aɪ aʊ ɑ | `a aI aU A A:` |
//! | `e` | eɪ | `eI e` |
//! | `E` | ɛ ʌ | `E V` |
//! | `o` | oʊ | `o oU o@` |
//! | `O` | ɔ ɒ ɔɪ | `O O: OI 0` |
//! | `sil` | pause | `_` `_:` `_!` … |
//!
//! Unknown mnemonics map by their first letter, else to `@` (a neutral,
//! half-open mouth).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// The kinds of marks a job may ask for.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MarkKind {
    /// Each word: its text and character offsets.
    Word,
    /// Each sentence: its text and character offsets.
    Sentence,
    /// Each mouth shape, by Polly's viseme names.
    Viseme,
}

impl MarkKind {
    /// Every kind, in the order they are listed.
    pub const ALL: [MarkKind; 3] = [Self::Word, Self::Sentence, Self::Viseme];

    /// The name clients send in `marks`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Word => "word",
            Self::Sentence => "sentence",
            Self::Viseme => "viseme",
        }
    }
}

impl fmt::Display for MarkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MarkKind {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or(())
    }
}

/// One mark: an element of a task's marks file
/// (`GET /v1/tts/jobs/{id}/marks`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Mark {
    /// What it marks.
    #[serde(rename = "type")]
    pub kind: MarkKind,
    /// When it starts, in ms from the start of the audio.
    pub start_ms: u32,
    /// When it ends, in ms; never after the end of the audio.
    pub end_ms: u32,
    /// The word or sentence text, or the viseme name.
    pub value: String,
    /// Offset of the first character in the normalised text (words, sentences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u32>,
    /// Offset after the last character (words, sentences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<u32>,
}

/// A word with its place in the text and its time, as a provider reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedWord {
    /// Character offset of its first character.
    pub start: u32,
    /// Character offset after its last character.
    pub end: u32,
    /// Start in ms.
    pub start_ms: u32,
    /// End in ms.
    pub end_ms: u32,
}

/// A phoneme by espeak mnemonic with its start, as espeak reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedPhoneme {
    /// espeak-ng mnemonic; pauses start with `_`.
    pub name: String,
    /// Start in ms.
    pub start_ms: u32,
}

/// The Polly viseme of an espeak-ng phoneme mnemonic (see the module docs).
pub fn viseme(phoneme: &str) -> &'static str {
    let p = phoneme.trim_end_matches(['\'', ',', '#', ';', '-', '/', '2', ':']);
    if phoneme.starts_with('_') || p.is_empty() {
        return "sil";
    }
    match p {
        "tS" | "dZ" | "S" | "Z" => "S",
        "T" | "D" => "T",
        "N" | "x" | "h" | "k" | "g" => "k",
        "eI" | "e" => "e",
        "o" | "oU" | "o@" => "o",
        "O" | "OI" | "0" => "O",
        "V" | "E" => "E",
        "aI" | "aU" | "a" | "A" | "A@" => "a",
        "I" | "i" | "j" | "I@" | "i@" => "i",
        "U" | "u" | "w" | "U@" => "u",
        "3" | "@" | "@L" | "@5" | "e@" => "@",
        _ => match p.chars().next() {
            Some('p' | 'b' | 'm') => "p",
            Some('f' | 'v') => "f",
            Some('t' | 'd' | 'n' | 'l') => "t",
            Some('s' | 'z') => "s",
            Some('r' | 'R') => "r",
            Some('k' | 'g' | 'h' | 'x' | 'N' | 'q') => "k",
            Some('i' | 'I' | 'j' | 'y') => "i",
            Some('u' | 'U' | 'w') => "u",
            Some('a' | 'A') => "a",
            Some('e') => "e",
            Some('E' | 'V') => "E",
            Some('o') => "o",
            Some('O' | '0') => "O",
            _ => "@",
        },
    }
}

/// Folds per-character timings (ElevenLabs' `alignment`) into words: a word
/// is a run of non-whitespace characters without the punctuation around it
/// (as espeak's words are), from its first character's start to its last
/// character's end. `characters` are the characters of the text in order
/// (one string each, as the vendor sends them).
pub fn words_from_characters(
    characters: &[String],
    starts_s: &[f64],
    ends_s: &[f64],
) -> Vec<TimedWord> {
    let ms = |s: f64| (s.max(0.0) * 1000.0).round() as u32;
    // (offset, width, start_ms, end_ms, is punctuation) per character.
    let mut token: Vec<(u32, u32, u32, u32, bool)> = Vec::new();
    let mut words = Vec::new();
    let mut flush = |token: &mut Vec<(u32, u32, u32, u32, bool)>| {
        let first = token.iter().position(|c| !c.4);
        let last = token.iter().rposition(|c| !c.4);
        if let (Some(first), Some(last)) = (first, last) {
            let (a, b) = (token[first], token[last]);
            words.push(TimedWord {
                start: a.0,
                end: b.0 + b.1,
                start_ms: a.2,
                end_ms: token[first..=last]
                    .iter()
                    .map(|c| c.3)
                    .max()
                    .unwrap_or(a.2)
                    .max(a.2),
            });
        }
        token.clear();
    };
    let mut offset = 0u32;
    for (i, character) in characters.iter().enumerate() {
        let width = u32::try_from(character.chars().count()).unwrap_or(1);
        if character.chars().all(char::is_whitespace) {
            flush(&mut token);
        } else {
            let punctuation = character
                .chars()
                .all(|c| c.is_ascii_punctuation() || (!c.is_alphanumeric() && !c.is_ascii()));
            token.push((
                offset,
                width,
                starts_s.get(i).copied().map_or(0, ms),
                ends_s.get(i).copied().map_or(0, ms),
                punctuation,
            ));
        }
        offset += width;
    }
    flush(&mut token);
    words
}

/// Builds the requested marks from a provider's timed words and phonemes.
///
/// - words: one mark per word, valued by its text;
/// - sentences: spans of the text ended by `.`, `!`, `?` (or their CJK
///   forms), timed from their first word's start to their last word's end;
/// - visemes: one per phoneme (runs of the same viseme merged), ended by the
///   next one; needs phonemes, so providers with only word timings give none.
///
/// Marks are ordered by start time (ties: sentence, word, viseme) and no
/// mark ends after `duration_ms`.
pub fn build(
    wanted: &[MarkKind],
    text: &str,
    words: &[TimedWord],
    phonemes: &[TimedPhoneme],
    duration_ms: u32,
) -> Vec<Mark> {
    let chars: Vec<char> = text.chars().collect();
    let slice = |start: u32, end: u32| -> String {
        chars
            .get(start as usize..(end as usize).min(chars.len()))
            .map(|c| c.iter().collect())
            .unwrap_or_default()
    };
    let clamp = |ms: u32| ms.min(duration_ms);
    let mut marks = Vec::new();
    if wanted.contains(&MarkKind::Sentence) {
        for (start, end) in sentence_spans(&chars) {
            let inside: Vec<&TimedWord> = words
                .iter()
                .filter(|w| w.start >= start && w.start < end)
                .collect();
            let (Some(first), Some(last)) = (inside.first(), inside.last()) else {
                continue;
            };
            marks.push(Mark {
                kind: MarkKind::Sentence,
                start_ms: clamp(first.start_ms),
                end_ms: clamp(last.end_ms.max(first.start_ms)),
                value: slice(start, end),
                start: Some(start),
                end: Some(end),
            });
        }
    }
    if wanted.contains(&MarkKind::Word) {
        // espeak reports an empty word at a clause's end: no word is heard.
        for word in words.iter().filter(|w| w.end > w.start) {
            marks.push(Mark {
                kind: MarkKind::Word,
                start_ms: clamp(word.start_ms),
                end_ms: clamp(word.end_ms.max(word.start_ms)),
                value: slice(word.start, word.end),
                start: Some(word.start),
                end: Some(word.end),
            });
        }
    }
    if wanted.contains(&MarkKind::Viseme) {
        let mut visemes: Vec<Mark> = Vec::new();
        for (i, phoneme) in phonemes.iter().enumerate() {
            let end_ms = phonemes
                .get(i + 1)
                .map_or(duration_ms, |next| next.start_ms);
            let value = viseme(&phoneme.name);
            match visemes.last_mut() {
                Some(last) if last.value == value => last.end_ms = clamp(end_ms),
                _ => visemes.push(Mark {
                    kind: MarkKind::Viseme,
                    start_ms: clamp(phoneme.start_ms),
                    end_ms: clamp(end_ms.max(phoneme.start_ms)),
                    value: value.to_owned(),
                    start: None,
                    end: None,
                }),
            }
        }
        marks.extend(visemes);
    }
    // Stable: within equal starts, sentences come before words before visemes.
    marks.sort_by_key(|m| m.start_ms);
    marks
}

/// Character spans `[start, end)` of the sentences of `chars`, trimmed of
/// surrounding spaces.
fn sentence_spans(chars: &[char]) -> Vec<(u32, u32)> {
    let mut spans = Vec::new();
    let mut start = 0usize;
    let n = chars.len();
    let mut i = 0usize;
    while i < n {
        let terminal = matches!(chars[i], '.' | '!' | '?' | '。' | '！' | '？');
        if terminal {
            // Include runs of terminal punctuation ("?!", "...").
            let mut end = i + 1;
            while end < n
                && matches!(
                    chars[end],
                    '.' | '!' | '?' | '。' | '！' | '？' | '"' | '\'' | ')' | '”'
                )
            {
                end += 1;
            }
            if end == n || chars[end].is_whitespace() || !chars[i].is_ascii() {
                spans.push((start, end));
                start = end;
                i = end;
                continue;
            }
        }
        i += 1;
    }
    if start < n {
        spans.push((start, n));
    }
    spans
        .into_iter()
        .filter_map(|(s, e)| {
            let s = (s..e).find(|&k| !chars[k].is_whitespace())?;
            let e = (s..e).rev().find(|&k| !chars[k].is_whitespace())? + 1;
            Some((u32::try_from(s).ok()?, u32::try_from(e).ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_fold_into_words_with_offsets_and_times() {
        let text = "Hi, there! -";
        let characters: Vec<String> = text.chars().map(String::from).collect();
        let starts: Vec<f64> = (0..12).map(|i| f64::from(i) * 0.1).collect();
        let ends: Vec<f64> = (1..13).map(|i| f64::from(i) * 0.1).collect();
        let words = words_from_characters(&characters, &starts, &ends);
        assert_eq!(
            words,
            [
                TimedWord {
                    start: 0,
                    end: 2,
                    start_ms: 0,
                    end_ms: 200
                },
                TimedWord {
                    start: 4,
                    end: 9,
                    start_ms: 400,
                    end_ms: 900
                },
            ]
        );
    }

    #[test]
    fn sentences_span_their_words_and_marks_sort_by_time() {
        let text = "One two. Three!";
        let words = [
            TimedWord {
                start: 0,
                end: 3,
                start_ms: 0,
                end_ms: 100,
            },
            TimedWord {
                start: 4,
                end: 7,
                start_ms: 100,
                end_ms: 200,
            },
            TimedWord {
                start: 9,
                end: 14,
                start_ms: 300,
                end_ms: 500,
            },
        ];
        let marks = build(
            &[MarkKind::Word, MarkKind::Sentence],
            text,
            &words,
            &[],
            450,
        );
        let summary: Vec<(MarkKind, &str, u32, u32)> = marks
            .iter()
            .map(|m| (m.kind, m.value.as_str(), m.start_ms, m.end_ms))
            .collect();
        assert_eq!(
            summary,
            [
                (MarkKind::Sentence, "One two.", 0, 200),
                (MarkKind::Word, "One", 0, 100),
                (MarkKind::Word, "two", 100, 200),
                (MarkKind::Sentence, "Three!", 300, 450),
                (MarkKind::Word, "Three", 300, 450),
            ]
        );
    }

    #[test]
    fn an_empty_word_is_no_word_mark() {
        let words = [
            TimedWord {
                start: 0,
                end: 4,
                start_ms: 0,
                end_ms: 100,
            },
            TimedWord {
                start: 2,
                end: 2,
                start_ms: 120,
                end_ms: 120,
            },
        ];
        let marks = build(&[MarkKind::Word], "Yes.", &words, &[], 200);
        let values: Vec<&str> = marks.iter().map(|m| m.value.as_str()).collect();
        assert_eq!(values, ["Yes."]);
    }

    #[test]
    fn phonemes_map_to_polly_visemes_and_runs_merge() {
        assert_eq!(viseme("p"), "p");
        assert_eq!(viseme("b"), "p");
        assert_eq!(viseme("tS"), "S");
        assert_eq!(viseme("D"), "T");
        assert_eq!(viseme("oU"), "o");
        assert_eq!(viseme("_:"), "sil");
        assert_eq!(viseme("l/"), "t");
        let phonemes: Vec<TimedPhoneme> = [("m", 0), ("b", 50), ("a", 100), ("_", 200)]
            .into_iter()
            .map(|(name, start_ms)| TimedPhoneme {
                name: name.into(),
                start_ms,
            })
            .collect();
        let marks = build(&[MarkKind::Viseme], "x", &[], &phonemes, 300);
        let values: Vec<(&str, u32, u32)> = marks
            .iter()
            .map(|m| (m.value.as_str(), m.start_ms, m.end_ms))
            .collect();
        assert_eq!(values, [("p", 0, 100), ("a", 100, 200), ("sil", 200, 300)]);
    }
}
