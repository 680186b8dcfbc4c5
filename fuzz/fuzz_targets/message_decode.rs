//! The queue message decoder never panics, and whatever it accepts encodes
//! back to a message that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ttsq_core::JobMessage;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(message) = JobMessage::decode(bytes) {
        let again = JobMessage::decode(&message.encode()).expect("a decoded message re-encodes");
        assert_eq!(again, message);
    }
});
