//! What a vendor module makes of a synthesis request: the order to answer
//! or why it is refused, and the readers of the JSON body it parses.

use serde_json::Value;

use crate::{audio::Encoding, refusal::Refusal};

/// A well-formed synthesis request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Order {
    /// Characters of text.
    pub characters: u64,
    /// Speaking rate factor; shortens or lengthens the audio.
    pub speed: f64,
    /// What to answer.
    pub encoding: Encoding,
}

/// What a vendor module made of a synthesis request body.
pub(crate) struct Parsed {
    /// Voice named, even when the request is otherwise refused.
    pub voice: Option<String>,
    /// Characters of text, 0 when there is none.
    pub characters: u64,
    /// The order, or why it is refused.
    pub order: Result<Order, Refusal>,
}

/// A float field of `body`, if present.
pub(crate) fn number(body: &Value, pointer: &str) -> Option<f64> {
    body.pointer(pointer).and_then(Value::as_f64)
}

/// A string field of `body`, if present.
pub(crate) fn string<'a>(body: &'a Value, pointer: &str) -> Option<&'a str> {
    body.pointer(pointer).and_then(Value::as_str)
}

/// Characters of `text` as the quota counts them.
pub(crate) fn characters(text: &str) -> u64 {
    text.chars().count() as u64
}
