//! Splits a long text into chunks that one provider request takes.
//!
//! A long job's text (issue 21) is synthesized as chunks, each an ordinary
//! content-hashed task. This crate decides where the chunks end. It owns no
//! I/O and knows nothing of providers: the caller passes the route's limit
//! (`DialectInfo::max_request_chars`).
//!
//! # Rules
//!
//! The text is normalised first ([`normalize_text`]: NFC, whitespace
//! collapsed to single spaces); every [`Chunk`] is a piece of that
//! normalised text with its offset in it, in characters, so the chunks,
//! joined at their offsets, give the normalised text back. Between two
//! chunks lies one space of the normalised text, or nothing (after a CJK
//! sentence, or inside a run longer than the limit). Every chunk has
//! between 1 and `max_chars` characters. Boundaries are sought in this
//! order, each level used only for a piece the level before left too long:
//!
//! 1. **Paragraphs**, separated by a blank line (two or more line breaks
//!    with only whitespace between). A paragraph that fits is one chunk.
//! 2. **Sentences**, packed greedily (consecutive sentences share a chunk
//!    while it fits; the last piece of a sentence split further may share
//!    one with the next sentence). A sentence ends after `.` `!` `?` `…` followed by a
//!    space or the end of the paragraph, closing quotes and brackets staying
//!    with it, and after CJK `。` `！` `？` `．` `｡`, which need no space.
//!    Not ends: known abbreviations (`Dr.`, `Mr.`, `vs.`, `e.g.`, …; `No.`
//!    and `Fig.` only before a number), initials (`J. R. R. Tolkien`,
//!    `U.S.`), numbers (`3.14`, `1.000.000`: no space follows the dot), an
//!    ellipsis followed by a lowercase word, `?` or `!` inside a quote
//!    followed by a lowercase word (`"Why?" she asked.`), and a Japanese
//!    quote followed by its particle (`「はい。」と言った。`).
//! 3. **Clauses** of a sentence too long alone, packed greedily: after
//!    `,` `;` `:` and a spaced `–` (each followed by a space), after `—`,
//!    and after CJK `、` `，` `；` `：`.
//! 4. **Words** (at spaces) of a clause too long alone, packed greedily.
//! 5. Last resort, for a single word or an unspaced CJK run longer than the
//!    limit: grapheme clusters, and only a cluster longer than the limit
//!    itself is cut between characters.
//!
//! So no chunk ends inside a word, or inside a CJK sentence, unless that
//! word or sentence alone is longer than the limit.
//!
//! # Why paragraphs are never packed together
//!
//! Packing short paragraphs into one chunk would make fewer requests, but
//! each chunk's audio is cached under the hash of its text: a chunk holding
//! paragraphs 3 and 4 changes when paragraph 3 is edited, and packing would
//! shift every later boundary too. With one paragraph per chunk (or several
//! chunks per long paragraph, decided by that paragraph alone), editing one
//! paragraph changes only that paragraph's chunks, so re-submitting an
//! edited chapter synthesizes only the edited paragraph, and equal
//! paragraphs of different texts share their audio.
//!
//! # Cost
//!
//! Linear in the text's length: each level scans only the pieces the level
//! before left too long, and characters are counted once per level, so
//! 200,000 characters split in milliseconds.

use std::ops::Range;

use ttsq_core::normalize_text;
use unicode_normalization::UnicodeNormalization as _;
use unicode_segmentation::UnicodeSegmentation as _;

/// One chunk of a long text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The chunk's text, normalised ([`normalize_text`]).
    pub text: String,
    /// Where it starts in `normalize_text(whole)`, in characters (Unicode
    /// scalar values): `normalize_text(whole).chars().skip(offset)` starts
    /// with `text`.
    pub offset: usize,
}

/// Splits `text` into chunks of at most `max_chars` characters each (a
/// limit below 1 counts as 1), in order, covering the whole normalised
/// text; see the crate documentation for where chunks end. An empty or
/// all-whitespace text has no chunks.
pub fn split(text: &str, max_chars: usize) -> Vec<Chunk> {
    let max = max_chars.max(1);
    let (normalized, paragraphs) = paragraphs(text);
    debug_assert_eq!(normalized, normalize_text(text));
    let mut ranges = Vec::new();
    for paragraph in paragraphs {
        if let Some((last, _)) = pack(&normalized, paragraph, Level::Paragraph, max, &mut ranges) {
            ranges.push(last);
        }
    }
    let mut chunks = Vec::with_capacity(ranges.len());
    let (mut byte, mut offset) = (0, 0);
    for range in ranges {
        offset += normalized[byte..range.start].chars().count();
        byte = range.start;
        chunks.push(Chunk {
            text: normalized[range].to_owned(),
            offset,
        });
    }
    chunks
}

/// The normalised text (exactly [`normalize_text`]'s) and the byte ranges
/// of its paragraphs in it, in order, each without surrounding spaces.
fn paragraphs(text: &str) -> (String, Vec<Range<usize>>) {
    let nfc: String = text.nfc().collect();
    let mut normalized = String::with_capacity(nfc.len());
    let mut paragraphs = Vec::new();
    let mut start = 0;
    // Line breaks in the whitespace run since the last word, if any.
    let mut line_breaks: Option<u32> = None;
    let mut chars = nfc.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            let breaks = match c {
                '\r' if chars.peek() == Some(&'\n') => 0,
                '\n' | '\r' | '\u{000B}' | '\u{000C}' | '\u{0085}' | '\u{2028}' => 1,
                '\u{2029}' => 2,
                _ => 0,
            };
            *line_breaks.get_or_insert(0) += breaks;
            continue;
        }
        if let Some(breaks) = line_breaks.take()
            && !normalized.is_empty()
        {
            if breaks >= 2 {
                paragraphs.push(start..normalized.len());
                start = normalized.len() + 1;
            }
            normalized.push(' ');
        }
        normalized.push(c);
    }
    if !normalized.is_empty() {
        paragraphs.push(start..normalized.len());
    }
    (normalized, paragraphs)
}

/// The boundaries tried, coarsest first.
#[derive(Debug, Clone, Copy)]
enum Level {
    Paragraph,
    Sentence,
    Clause,
    Word,
    Grapheme,
    Char,
}

impl Level {
    /// The level tried for a piece of this level that is too long.
    fn finer(self) -> Self {
        match self {
            Self::Paragraph => Self::Sentence,
            Self::Sentence => Self::Clause,
            Self::Clause => Self::Word,
            Self::Word => Self::Grapheme,
            Self::Grapheme | Self::Char => Self::Char,
        }
    }

    /// The pieces of `s` at this level: byte ranges in `s`, in order, none
    /// empty, none starting or ending with a space; what lies between two
    /// is one space or nothing.
    fn pieces(self, s: &str) -> Vec<Range<usize>> {
        match self {
            Self::Paragraph => std::iter::once(0..s.len()).collect(),
            Self::Sentence => sentences(s),
            Self::Clause => clauses(s),
            Self::Word => {
                let mut start = 0;
                s.split(' ')
                    .map(|word| {
                        let range = start..start + word.len();
                        start = range.end + 1;
                        range
                    })
                    .collect()
            }
            Self::Grapheme => s
                .grapheme_indices(true)
                .map(|(i, g)| i..i + g.len())
                .collect(),
            Self::Char => s.char_indices().map(|(i, c)| i..i + c.len_utf8()).collect(),
        }
    }
}

/// Appends to `out` the chunks of `span` (a byte range of `text`): its
/// pieces at `level`, packed greedily up to `max` characters. A piece
/// longer than `max` starts a chunk of its own and is split at the next
/// finer level; the last chunk of its split stays open for the pieces after
/// it (so a long sentence's last clause may share a chunk with the next
/// sentence). Returns the chunk still open: its byte range and characters.
fn pack(
    text: &str,
    span: Range<usize>,
    level: Level,
    max: usize,
    out: &mut Vec<Range<usize>>,
) -> Option<(Range<usize>, usize)> {
    let base = span.start;
    let mut current: Option<(Range<usize>, usize)> = None;
    for piece in level.pieces(&text[span]) {
        let piece = base + piece.start..base + piece.end;
        let chars = text[piece.clone()].chars().count();
        if chars > max {
            if let Some((range, _)) = current.take() {
                out.push(range);
            }
            current = pack(text, piece, level.finer(), max, out);
            continue;
        }
        if let Some((range, len)) = &mut current {
            let joined = *len + text[range.end..piece.start].chars().count() + chars;
            if joined <= max {
                range.end = piece.end;
                *len = joined;
                continue;
            }
            out.push(range.clone());
        }
        current = Some((piece, chars));
    }
    current
}

/// Abbreviations whose dot never ends a sentence (lowercase, without the
/// final dot).
const ABBREVIATIONS: &[&str] = &[
    "dr", "mr", "mrs", "ms", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "mt", "cf", "al",
    "approx", "gen", "col", "capt", "lt", "sgt", "rev", "hon",
];

/// Abbreviations whose dot ends no sentence when a number follows (`No. 5`,
/// `Fig. 3`), but may end one otherwise (`I said no.`).
const NUMBERED_ABBREVIATIONS: &[&str] = &["no", "fig", "vol", "ch", "sec", "pp"];

/// Marks that end a sentence when a space (or the end) follows.
fn ends_latin_sentence(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '…')
}

/// CJK marks that end a sentence with or without a following space.
fn ends_cjk_sentence(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '．' | '｡')
}

/// Closing quotes and brackets that stay with the sentence or clause they close.
fn closes(c: char) -> bool {
    matches!(
        c,
        '"' | '\''
            | '”'
            | '’'
            | '»'
            | '›'
            | ')'
            | ']'
            | '}'
            | '」'
            | '』'
            | '）'
            | '］'
            | '】'
            | '》'
            | '〉'
            | '〕'
            | '〗'
            | '＂'
            | '＇'
    )
}

/// Opening quotes and brackets before a word.
fn opens(c: char) -> bool {
    matches!(
        c,
        '"' | '\'' | '“' | '‘' | '«' | '‹' | '(' | '[' | '{' | '¿' | '¡' | '„'
    )
}

/// Whether `c` is a letter with case (Latin, Greek, Cyrillic, …): CJK
/// ideographs have none, so a lone one is not an initial.
fn is_cased_letter(c: char) -> bool {
    c.is_lowercase() || c.is_uppercase()
}

/// The sentences of `s` (a paragraph, normalised), as byte ranges.
fn sentences(s: &str) -> Vec<Range<usize>> {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let byte_at = |i: usize| chars.get(i).map_or(s.len(), |&(b, _)| b);
    let char_at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        if !ends_latin_sentence(c) && !ends_cjk_sentence(c) {
            i += 1;
            continue;
        }
        let run = i;
        let mut cjk = false;
        while let Some(c) = char_at(i).filter(|&c| ends_latin_sentence(c) || ends_cjk_sentence(c)) {
            cjk |= ends_cjk_sentence(c);
            i += 1;
        }
        let run_end = i;
        while char_at(i).is_some_and(closes) {
            i += 1;
        }
        let end = byte_at(i);
        let next = char_at(i);
        let is_end = if cjk {
            // A fullwidth dot between digits is a decimal point (`３．１４`);
            // a quote followed by the particle と is what was said, not
            // the sentence (「はい。」と言った。).
            let decimal = run_end - run == 1
                && chars[run].1 == '．'
                && run > 0
                && chars[run - 1].1.is_numeric()
                && next.is_some_and(char::is_numeric);
            let quoted = i > run_end && next == Some('と');
            !decimal && !quoted
        } else {
            match next {
                None => true,
                Some(' ') => {
                    let after = char_at(i + 1);
                    latin_sentence_ends(s, &chars, run..run_end, i > run_end, after)
                }
                Some(_) => false,
            }
        };
        if is_end && next.is_some() {
            pieces.push(start..end);
            start = if next == Some(' ') { end + 1 } else { end };
        }
    }
    if start < s.len() {
        pieces.push(start..s.len());
    }
    pieces
}

/// Whether the Latin sentence marks at `run` (char indices into `chars`,
/// the characters of `s`), followed by a space, end a sentence; `closed`
/// tells whether closing quotes or brackets follow the marks, `after` is
/// the character after the space.
fn latin_sentence_ends(
    s: &str,
    chars: &[(usize, char)],
    run: Range<usize>,
    closed: bool,
    after: Option<char>,
) -> bool {
    let lowercase_follows = after.is_some_and(char::is_lowercase);
    let marks = &chars[run.clone()];
    let ellipsis = (marks.len() > 1 && marks.iter().all(|&(_, c)| c == '.'))
        || marks.iter().any(|&(_, c)| c == '…');
    if ellipsis {
        return !lowercase_follows;
    }
    if marks.iter().any(|&(_, c)| c == '?' || c == '!') {
        return !(closed && lowercase_follows);
    }
    // A single dot: the word before it decides.
    let word_start = chars[..run.start]
        .iter()
        .rposition(|&(_, c)| c == ' ')
        .map_or(0, |i| chars[i].0 + 1);
    let word = s[word_start..chars[run.start].0]
        .trim_start_matches(opens)
        .to_lowercase();
    if word.is_empty() {
        return true;
    }
    if ABBREVIATIONS.contains(&word.as_str()) {
        return false;
    }
    if NUMBERED_ABBREVIATIONS.contains(&word.as_str()) && after.is_some_and(|c| c.is_ascii_digit())
    {
        return false;
    }
    let initials = word.split('.').all(|part| {
        let mut letters = part.chars();
        letters.next().is_some_and(is_cased_letter) && letters.next().is_none()
    });
    !initials
}

/// The clauses of `s` (one sentence, normalised), as byte ranges.
fn clauses(s: &str) -> Vec<Range<usize>> {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let char_at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        let needs_space = match c {
            ',' | ';' | ':' | '–' => true,
            '—' | '、' | '，' | '；' | '：' => false,
            _ => {
                i += 1;
                continue;
            }
        };
        i += 1;
        while char_at(i).is_some_and(closes) {
            i += 1;
        }
        let Some(next) = char_at(i) else { break };
        let end = chars[i].0;
        if next == ' ' {
            pieces.push(start..end);
            start = end + 1;
        } else if !needs_space {
            pieces.push(start..end);
            start = end;
        }
    }
    if start < s.len() {
        pieces.push(start..s.len());
    }
    pieces
}

#[cfg(test)]
mod tests;
