//! Decoding a submitted job body never panics: it is a request or a list of
//! field errors, each naming a field.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Err(errors) = ttsq_core::job::decode_request(bytes) {
        assert!(!format!("{errors:?}").is_empty());
    }
});
