"""verify_webhook against the Standard Webhooks specification, with the
reference library (``standardwebhooks``) as the other side where it is
installed."""

from __future__ import annotations

import base64
import json

import pytest

import ttsq

# The vector of the reference library's tests (standard-webhooks,
# libraries/python/tests/test_webhooks.py, test_sign_function), as the Rust
# SDK's tests use it.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
OTHER_SECRET = "whsec_c2VjcmV0LW9mLWFub3RoZXItdGVuYW50"

EVENT = json.dumps(
    {
        "id": "evt_1",
        "type": "task.completed",
        "created_at": "2026-12-07T10:00:00.123456789Z",
        "data": {"task_id": "0193a0b2-0000-7000-8000-000000000001", "status": "succeeded"},
    }
).encode()


def headers(signature: str = SIGNATURE, **changes: str) -> dict[str, str]:
    base = {"webhook-id": ID, "webhook-timestamp": str(TIMESTAMP), "webhook-signature": signature}
    base.update({k.replace("_", "-"): v for k, v in changes.items()})
    return base


def verify(
    body: bytes = BODY, hdrs: object = None, secret: object = SECRET, **kw: object
) -> object:
    return ttsq.verify_webhook(
        body, hdrs if hdrs is not None else headers(), secret, now=TIMESTAMP, **kw
    )  # type: ignore[arg-type]


def test_the_reference_vector_verifies_with_or_without_the_prefix() -> None:
    assert verify(BODY) is not None
    verify(secret="MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")


def test_header_names_are_matched_in_any_case_and_as_pairs() -> None:
    upper = {k.upper(): v for k, v in headers().items()}
    verify(hdrs=upper)
    verify(hdrs=list(headers().items()))


def test_a_changed_body_id_timestamp_or_secret_does_not_verify() -> None:
    cases = [
        dict(body=b'{"test": 2432232315}'),
        dict(hdrs=headers(webhook_id="msg_other")),
        dict(hdrs=headers(webhook_timestamp=str(TIMESTAMP + 1))),
        dict(secret=OTHER_SECRET),
    ]
    for case in cases:
        with pytest.raises(ttsq.WebhookVerificationError, match="no signature matches"):
            verify(**case)  # type: ignore[arg-type]


def test_any_one_matching_v1_entry_verifies_and_nothing_else_does() -> None:
    wrong = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
    verify(
        hdrs=headers(f"{wrong} v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= {SIGNATURE} {wrong}")
    )
    raw = SIGNATURE[len("v1,") :]
    for bad in [f"v1a,{raw}", raw, f"{wrong} v1,not-base64!", "v1,", ""]:
        with pytest.raises(ttsq.WebhookVerificationError):
            verify(hdrs=headers(bad))


def test_a_signature_without_base64_padding_verifies() -> None:
    verify(hdrs=headers(SIGNATURE.rstrip("=")))


def test_either_of_a_receivers_secrets_verifies_while_it_rotates() -> None:
    verify(secret=[OTHER_SECRET, SECRET])
    verify(secret=(SECRET, OTHER_SECRET))
    with pytest.raises(ttsq.WebhookVerificationError):
        verify(secret=[OTHER_SECRET])
    with pytest.raises(ttsq.WebhookVerificationError, match="no webhook secret"):
        verify(secret=[])


def test_both_entries_of_a_sender_in_its_grace_period_verify_each_secret() -> None:
    old = ttsq.sign_webhook(EVENT, SECRET, msg_id="evt_1", timestamp=TIMESTAMP)["webhook-signature"]
    new = ttsq.sign_webhook(EVENT, OTHER_SECRET, msg_id="evt_1", timestamp=TIMESTAMP)[
        "webhook-signature"
    ]
    sent = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(TIMESTAMP),
        "webhook-signature": f"{new} {old}",
    }
    for secret in (SECRET, OTHER_SECRET):
        event = ttsq.verify_webhook(EVENT, sent, secret, now=TIMESTAMP)
        assert event.id == "evt_1"


def test_a_timestamp_outside_the_tolerance_is_refused_either_way() -> None:
    for now in (TIMESTAMP - 300, TIMESTAMP + 300):
        ttsq.verify_webhook(BODY, headers(), SECRET, now=now)
    for now in (TIMESTAMP - 301, TIMESTAMP + 301):
        with pytest.raises(ttsq.WebhookVerificationError, match="tolerance"):
            ttsq.verify_webhook(BODY, headers(), SECRET, now=now)
    ttsq.verify_webhook(BODY, headers(), SECRET, now=TIMESTAMP + 3000, tolerance=3600)


def test_missing_headers_bad_timestamps_and_bad_secrets_are_named() -> None:
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        hdrs = headers()
        del hdrs[name]
        with pytest.raises(ttsq.WebhookVerificationError, match=f"the {name} header is missing"):
            verify(hdrs=hdrs)
    for stamp in ("soon", "1.5", "", "\uff11\uff16"):
        with pytest.raises(ttsq.WebhookVerificationError):
            verify(hdrs=headers(webhook_timestamp=stamp))
    for secret in ("", "whsec_", "whsec_not base64!"):
        with pytest.raises(ttsq.WebhookVerificationError, match="secret"):
            verify(secret=secret)


def test_the_event_is_parsed_with_its_task() -> None:
    signed = ttsq.sign_webhook(EVENT, SECRET, msg_id="evt_1", timestamp=TIMESTAMP)
    event = ttsq.verify_webhook(EVENT.decode(), signed, SECRET, now=TIMESTAMP)
    assert event.type == "task.completed"
    assert event.created_at is not None and event.created_at.microsecond == 123456
    task = event.task
    assert task is not None and task.status == ttsq.TaskStatus.SUCCEEDED
    assert event.batch is None


def test_a_verified_body_that_is_no_json_object_is_refused() -> None:
    for body in (b"not json", b"[1, 2]"):
        signed = ttsq.sign_webhook(body, SECRET, msg_id="m", timestamp=TIMESTAMP)
        with pytest.raises(ttsq.WebhookVerificationError, match="JSON"):
            ttsq.verify_webhook(body, signed, SECRET, now=TIMESTAMP)


# --- against the reference library -----------------------------------------


def test_the_reference_library_verifies_what_sign_webhook_signs() -> None:
    standardwebhooks = pytest.importorskip("standardwebhooks")
    signed = ttsq.sign_webhook(EVENT, SECRET, msg_id="evt_1")
    assert standardwebhooks.Webhook(SECRET).verify(EVENT, signed)["id"] == "evt_1"


def test_verify_webhook_accepts_what_the_reference_library_signs_and_refuses_its_forgeries() -> (
    None
):
    standardwebhooks = pytest.importorskip("standardwebhooks")
    import datetime as dt

    reference = standardwebhooks.Webhook(SECRET)
    when = dt.datetime.fromtimestamp(TIMESTAMP, tz=dt.timezone.utc)
    signature = reference.sign("evt_1", when, EVENT.decode())
    sent = {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(TIMESTAMP),
        "webhook-signature": signature,
    }
    assert ttsq.verify_webhook(EVENT, sent, SECRET, now=TIMESTAMP).id == "evt_1"
    # The library's own vector agrees.
    assert (
        reference.sign(ID, dt.datetime.fromtimestamp(TIMESTAMP, tz=dt.timezone.utc), BODY.decode())
        == SIGNATURE
    )
    forged = dict(
        sent,
        **{
            "webhook-signature": standardwebhooks.Webhook(OTHER_SECRET).sign(
                "evt_1", when, EVENT.decode()
            )
        },
    )
    with pytest.raises(ttsq.WebhookVerificationError):
        ttsq.verify_webhook(EVENT, forged, SECRET, now=TIMESTAMP)


def test_a_random_secret_round_trips_with_the_reference_library() -> None:
    standardwebhooks = pytest.importorskip("standardwebhooks")
    import os

    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    signed = ttsq.sign_webhook(EVENT, secret, msg_id="evt_2")
    standardwebhooks.Webhook(secret).verify(EVENT, signed)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(OTHER_SECRET).verify(EVENT, signed)
