"""What a call can fail with.

Every exception is a :class:`TtsqError`. A refusal by the server is an
:class:`ApiError` keeping every field of its ``application/problem+json``
body, with a subclass per status a program commonly branches on; a server
that could not be reached is an :class:`ApiConnectionError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Type

__all__ = [
    "ApiConnectionError",
    "ApiError",
    "ApiTimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "FieldError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "TtsqError",
    "UnexpectedResponseError",
    "UnprocessableEntityError",
    "WaitTimeoutError",
    "WebhookVerificationError",
]


class TtsqError(Exception):
    """Base of every error the SDK raises."""


@dataclass(frozen=True)
class FieldError:
    """One invalid field of a refused request: ``field`` is its JSON path
    (``text``, ``items[3].dialect``…), empty for the body as a whole."""

    field: str
    reason: str


class ApiError(TtsqError):
    """The server refused the request; the attributes are its problem+json
    body (RFC 7807). Branch on ``type`` (``urn:ttsq:problem:…``) or ``code``,
    show ``detail`` and ``errors`` to people."""

    status: int
    type: str
    title: str
    detail: str
    errors: List[FieldError]
    code: Optional[str]
    task_id: Optional[str]
    retry_after: Optional[float]
    body: Dict[str, Any]
    """The whole problem document, members particular to one problem too
    (a limit's ``limit``, ``limit_value``, ``usage``…)."""

    def __init__(
        self,
        status: int,
        body: Mapping[str, Any],
        *,
        retry_after: Optional[float] = None,
    ) -> None:
        self.status = status
        self.body = dict(body)
        self.type = str(body.get("type") or "about:blank")
        self.title = str(body.get("title") or "")
        self.detail = str(body.get("detail") or "")
        raw_errors = body.get("errors")
        self.errors = [
            FieldError(str(e.get("field", "")), str(e.get("reason", "")))
            for e in (raw_errors if isinstance(raw_errors, list) else [])
            if isinstance(e, dict)
        ]
        code = body.get("code")
        self.code = code if isinstance(code, str) else None
        task_id = body.get("task_id")
        self.task_id = task_id if isinstance(task_id, str) else None
        self.retry_after = retry_after
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.status} {self.title}".rstrip()
        if self.detail:
            text += f": {self.detail}"
        return text

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(status={self.status}, type={self.type!r}, detail={self.detail!r})"

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), self.status, self.body, self.retry_after))


def _rebuild(
    cls: Type[ApiError], status: int, body: Dict[str, Any], retry_after: Optional[float]
) -> ApiError:
    return cls(status, body, retry_after=retry_after)


class BadRequestError(ApiError):
    """400: the request is invalid; ``errors`` names each field."""


class AuthenticationError(ApiError):
    """401: the API key is missing, unknown or revoked."""


class PermissionDeniedError(ApiError):
    """403: the key may not do this."""


class NotFoundError(ApiError):
    """404: no such task or batch for this tenant."""


class ConflictError(ApiError):
    """409: not in a state that allows this (cancelling a running task,
    the audio of a task not yet succeeded)."""


class UnprocessableEntityError(ApiError):
    """422: the job is valid but cannot be served as asked (content policy,
    marks the dialect cannot time)."""


class RateLimitError(ApiError):
    """429: over one of the tenant's limits; ``retry_after`` is the seconds
    until it resets (from ``Retry-After``)."""


class ServerError(ApiError):
    """5xx: the server failed, or inline synthesis did (``code``)."""


_BY_STATUS: Dict[int, Type[ApiError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def api_error(
    status: int, body: Mapping[str, Any], retry_after: Optional[float] = None
) -> ApiError:
    """The :class:`ApiError` subclass for ``status``."""
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    return cls(status, body, retry_after=retry_after)


class ApiConnectionError(TtsqError):
    """The API could not be reached, or the transfer broke (after the
    retries an idempotent call is allowed)."""


class ApiTimeoutError(ApiConnectionError):
    """The API did not answer within the client's timeout."""


class UnexpectedResponseError(TtsqError):
    """The server answered something this SDK does not understand (a proxy's
    page, a body that is no JSON)."""


class WaitTimeoutError(TtsqError):
    """A task (or batch) was not terminal within the time waited; it goes on
    and can be waited for again."""

    def __init__(self, id: str, timeout: float, last: Any = None) -> None:
        self.id = id
        self.timeout = timeout
        self.last = last
        """The task or batch as last read."""
        super().__init__(f"{id} did not finish within {timeout:g} s")


class WebhookVerificationError(TtsqError):
    """A webhook delivery is forged, tampered with, stale or malformed."""
