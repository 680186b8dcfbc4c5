"""Verifying a webhook delivery as the Standard Webhooks specification
(https://www.standardwebhooks.com, "Verifying signatures") has a receiver
do it, with nothing but the standard library.

- The signed content is ``{webhook-id}.{webhook-timestamp}.{body}``, the
  body exactly as received: verify before parsing, never a re-serialized
  body.
- ``webhook-signature`` is a space-separated list of ``v1,<base64>``
  entries (two while a rotated secret is in its grace period); any one
  that matches verifies. Each is compared in constant time.
- ``webhook-timestamp`` must be within the tolerance of now (5 minutes),
  past or future, so a captured delivery cannot be replayed later.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from .errors import WebhookVerificationError
from .models import WebhookEvent

__all__ = ["DEFAULT_TOLERANCE", "sign_webhook", "verify_webhook"]

DEFAULT_TOLERANCE = 5 * 60
"""Seconds ``webhook-timestamp`` may be from now by default."""

_PREFIX = "whsec_"


def _b64decode(encoded: str) -> bytes:
    """Standard base64, with or without its padding."""
    encoded = encoded.rstrip("=")
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)


def _key(secret: str) -> bytes:
    encoded = secret.strip()
    if encoded.startswith(_PREFIX):
        encoded = encoded[len(_PREFIX) :]
    try:
        key = _b64decode(encoded)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError(
            "the webhook secret is not whsec_ followed by base64"
        ) from None
    if not key:
        raise WebhookVerificationError("the webhook secret is empty")
    return key


def _header(headers: Any, name: str) -> str:
    value: Any = None
    if hasattr(headers, "get"):
        value = headers.get(name)
    if value is None:
        items: Iterable[Any] = headers.items() if hasattr(headers, "items") else headers
        for key, candidate in items:
            if str(key).lower() == name:
                value = candidate
                break
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str) or not value:
        raise WebhookVerificationError(f"the {name} header is missing")
    return value


def _signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    signed = b"%s.%s.%s" % (msg_id.encode(), timestamp.encode(), body)
    return hmac.new(key, signed, hashlib.sha256).digest()


def verify_webhook(
    payload: Union[bytes, str],
    headers: Union[Mapping[str, Any], Iterable[Any]],
    secret: Union[str, Sequence[str]],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: Optional[float] = None,
) -> WebhookEvent:
    """Verifies a delivery and returns its event; raises
    :class:`ttsq.WebhookVerificationError` when it is forged, tampered
    with, stale or malformed.

    ``payload`` is the raw request body. ``headers`` is any mapping of the
    request's headers (names in any case: a dict, Flask's or Starlette's
    headers) or a list of ``(name, value)`` pairs. ``secret`` is the
    tenant's secret as ``ttsq webhooks secret`` prints it (``whsec_…``), or
    several: while rotating on your side, pass the new and the old and
    either verifies. ``now`` (unix seconds) is for tests.
    """
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    secrets: List[str] = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise WebhookVerificationError("no webhook secret given")
    keys = [_key(s) for s in secrets]
    msg_id = _header(headers, "webhook-id")
    timestamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")

    if not timestamp.isascii() or not timestamp.lstrip("-").isdigit():
        raise WebhookVerificationError("the webhook-timestamp header is not unix seconds")
    sent = int(timestamp)
    current = time.time() if now is None else now
    if abs(sent - current) > tolerance:
        raise WebhookVerificationError(
            f"the webhook-timestamp is {sent - current:+.0f} s from now, more than the tolerance"
        )

    expected = [_signature(key, msg_id, timestamp, body) for key in keys]
    matched = False
    for entry in signatures.split(" "):
        version, _, encoded = entry.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            given = _b64decode(encoded)
        except (binascii.Error, ValueError):
            continue
        for signature in expected:
            # Every comparison runs, so the time taken says nothing of which matched.
            matched |= hmac.compare_digest(signature, given)
    if not matched:
        raise WebhookVerificationError("no signature matches")

    try:
        event = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    return WebhookEvent.from_json(event)


def sign_webhook(
    payload: Union[bytes, str],
    secret: str,
    *,
    msg_id: str,
    timestamp: Optional[int] = None,
) -> Dict[str, str]:
    """The ``webhook-*`` headers ttsq would send with ``payload``: for
    testing a receiver without a running ttsq."""
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = base64.b64encode(_signature(_key(secret), msg_id, ts, body)).decode()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": ts,
        "webhook-signature": f"v1,{signature}",
    }
