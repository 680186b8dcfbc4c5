//! Splits a long text into chunks that one provider request takes.
//!
//! STUB (to be replaced): splits at whitespace only, greedily.

use ttsq_core::normalize_text;

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

/// Splits `text` into chunks of at most `max_chars` characters each, in
/// order, covering the whole normalised text.
pub fn split(text: &str, max_chars: usize) -> Vec<Chunk> {
    let normalized = normalize_text(text);
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut offset = 0;
    let mut current = String::new();
    let mut current_start = 0;
    let mut current_len = 0;
    for word in normalized.split(' ') {
        let len = word.chars().count();
        if current_len > 0 && current_len + 1 + len > max_chars {
            chunks.push(Chunk {
                text: std::mem::take(&mut current),
                offset: current_start,
            });
            current_len = 0;
        }
        if current_len == 0 {
            current_start = offset;
        } else {
            current.push(' ');
            current_len += 1;
        }
        current.push_str(word);
        current_len += len;
        offset += len + 1;
    }
    if current_len > 0 {
        chunks.push(Chunk {
            text: current,
            offset: current_start,
        });
    }
    chunks
}
