//! The queue message decoder against arbitrary input: it never panics, it
//! refuses what is not a current message, and every message round-trips.
//! (`fuzz/` holds a coverage-guided target for the same decoder.)

use proptest::prelude::*;
use ttsq_core::{JobMessage, MessageDecodeError};
use uuid::Uuid;

fn message() -> impl Strategy<Value = JobMessage> {
    (
        any::<u128>(),
        any::<u128>(),
        "[a-z]{2,3}(-[a-z0-9]{2,8}){0,2}",
        1u32..100,
        proptest::option::of("00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]"),
    )
        .prop_map(|(task, tenant, dialect, attempt, traceparent)| {
            let mut message =
                JobMessage::new(Uuid::from_u128(task), Uuid::from_u128(tenant), dialect);
            message.attempt = attempt;
            message.traceparent = traceparent;
            message
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes_never_panic_and_garbage_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(err) = JobMessage::decode(&bytes) {
            prop_assert!(matches!(err.code(), "malformed" | "unsupported_version"));
        }
    }

    #[test]
    fn every_message_round_trips(message in message()) {
        prop_assert_eq!(JobMessage::decode(&message.encode()).expect("decodes"), message);
    }

    #[test]
    fn another_version_is_refused_as_such(message in message(), version in 2u32..) {
        let mut json: serde_json::Value = serde_json::from_slice(&message.encode()).expect("JSON");
        json["v"] = version.into();
        let bytes = serde_json::to_vec(&json).expect("serialises");
        prop_assert!(matches!(
            JobMessage::decode(&bytes),
            Err(MessageDecodeError::UnsupportedVersion(v)) if v == version
        ));
    }

    #[test]
    fn a_truncated_message_is_refused(message in message(), cut in 1usize..40) {
        let bytes = message.encode();
        let cut = cut.min(bytes.len() - 1);
        prop_assert!(JobMessage::decode(&bytes[..bytes.len() - cut]).is_err());
    }
}
