"""What the sync and the async client share: settings, how a request is
made, when it is retried, and how an answer is read. The two clients only
do the I/O."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import email.utils
import logging
import os
import random
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import httpx

from ._version import __version__
from .errors import (
    ApiConnectionError,
    ApiTimeoutError,
    TtsqError,
    UnexpectedResponseError,
    api_error,
)
from .models import (
    BatchItem,
    Dialect,
    Job,
    JobLike,
    Mark,
    Speech,
    Task,
    TaskStatus,
    Voice,
    job_json,
)
from .webhooks import verify_webhook

log = logging.getLogger("ttsq")
"""Where the SDK says what it retries (at DEBUG); never the key."""

ENV_URL = "TTSQ_URL"
"""The environment variable naming the API, as the ``ttsq`` command line reads it."""
ENV_API_KEY = "TTSQ_API_KEY"
"""The environment variable holding the API key, as the ``ttsq`` command line reads it."""
DEFAULT_URL = "http://127.0.0.1:8080"
"""The API a client talks to when none is named (``deploy/local/run.sh``'s)."""

MAX_BATCH_ITEMS = 1000
"""Jobs one ``POST /v1/tts/batches`` may carry."""

POLL_SLICE = 20.0
"""Longest single long-poll asked for; well under the server's cap (60 s by
default) and the client's read timeout."""

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
"""Per request; longer than any long-poll slice and than inline synthesis
of a long text."""

_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

Date = Union[_dt.date, str]


@dataclass(frozen=True)
class RetryPolicy:
    """How idempotent calls (``GET``, ``DELETE``, a ``POST`` with an
    ``Idempotency-Key``) are retried after a connection error, a ``429`` or
    a ``5xx``: up to ``max_retries`` times, pausing ``initial_backoff``
    seconds doubled at each retry (with jitter) up to ``max_backoff``. A
    server's ``Retry-After`` is honoured up to ``max_backoff``; a ``429``
    whose ``Retry-After`` is longer than that (a daily limit) is raised at
    once, since waiting a few seconds would not help."""

    max_retries: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0

    def backoff(self, attempt: int) -> float:
        """The pause before retry number ``attempt`` (from 0), when the
        server said nothing."""
        pause = min(self.initial_backoff * 2.0**attempt, self.max_backoff)
        return pause * random.uniform(0.5, 1.0)


NO_RETRIES = RetryPolicy(max_retries=0)
"""A policy that never retries."""


def retry_after(response: httpx.Response) -> Optional[float]:
    """Seconds from a ``Retry-After`` header: a number, or an HTTP date."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return max(0.0, (when - _dt.datetime.now(_dt.timezone.utc)).total_seconds())


@dataclass(frozen=True)
class Call:
    """One API call, before it is sent."""

    method: str
    path: str
    params: Optional[Dict[str, str]] = None
    body: Any = None
    accept: str = "application/json"
    idempotency_key: Optional[str] = None

    @property
    def idempotent(self) -> bool:
        """Whether sending it twice does what sending it once does."""
        return self.method in ("GET", "HEAD", "PUT", "DELETE") or self.idempotency_key is not None


def _is_transient(error: Exception) -> bool:
    return isinstance(
        error, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
    )


def _date(value: Optional[Date]) -> Optional[str]:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, _dt.date) else str(value)


def _params(**values: Any) -> Dict[str, str]:
    return {k: str(v) for k, v in values.items() if v is not None}


def new_idempotency_key() -> str:
    """A fresh key, so that a submission may be retried without a second task."""
    return f"ttsq-py-{uuid.uuid4()}"


class BaseClient:
    """Settings and request logic of :class:`ttsq.Client` and :class:`ttsq.AsyncClient`."""

    def __init__(
        self,
        api_key: Optional[str],
        base_url: Optional[str],
        retry: Optional[RetryPolicy],
        default_headers: Optional[Mapping[str, str]],
    ) -> None:
        url = (base_url or DEFAULT_URL).strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise TtsqError(f"the API URL must start with http:// or https://, not {url!r}")
        key = (api_key or "").strip()
        if not key:
            raise TtsqError(f"no API key: pass api_key= or set {ENV_API_KEY}")
        self.base_url = url
        """The API's base URL, without a trailing slash."""
        self.retry = retry or RetryPolicy()
        """How idempotent calls are retried."""
        self._headers = {
            "authorization": f"Bearer {key}",
            "user-agent": f"ttsq-python/{__version__} httpx/{httpx.__version__}",
            **(default_headers or {}),
        }

    verify_webhook = staticmethod(verify_webhook)
    """:func:`ttsq.verify_webhook`, for code that holds a client anyway."""

    def __repr__(self) -> str:
        # The key is a secret: never in logs or tracebacks.
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    @staticmethod
    def _env(api_key: Optional[str], base_url: Optional[str]) -> Tuple[Optional[str], str]:
        return (
            api_key or os.environ.get(ENV_API_KEY),
            base_url or os.environ.get(ENV_URL) or DEFAULT_URL,
        )

    def _request(self, http: Union[httpx.Client, httpx.AsyncClient], call: Call) -> httpx.Request:
        headers = dict(self._headers)
        headers["accept"] = call.accept
        if call.idempotency_key is not None:
            headers["idempotency-key"] = call.idempotency_key
        return http.build_request(
            call.method,
            self.base_url + call.path,
            params=call.params,
            json=call.body,
            headers=headers,
        )

    def _pause(
        self,
        call: Call,
        attempt: int,
        response: Optional[httpx.Response] = None,
        error: Optional[Exception] = None,
    ) -> Optional[float]:
        """Seconds to wait before sending ``call`` again, or ``None`` when
        its outcome is final."""
        pause = self._retry_pause(call, attempt, response, error)
        if pause is not None:
            why = repr(error) if response is None else f"HTTP {response.status_code}"
            log.debug(
                "retrying %s %s in %.2f s (retry %d): %s",
                call.method,
                call.path,
                pause,
                attempt + 1,
                why,
            )
        return pause

    def _retry_pause(
        self,
        call: Call,
        attempt: int,
        response: Optional[httpx.Response],
        error: Optional[Exception],
    ) -> Optional[float]:
        if not call.idempotent or attempt >= self.retry.max_retries:
            return None
        if error is not None:
            return self.retry.backoff(attempt) if _is_transient(error) else None
        if response is None or response.status_code not in _RETRY_STATUSES:
            return None
        if _problem(response).get("code") == "synthesis_failed":
            # The provider refused the text: the same answer every time.
            return None
        server_says = retry_after(response)
        if server_says is None:
            return self.retry.backoff(attempt)
        if response.status_code == 429 and server_says > self.retry.max_backoff:
            return None
        return min(server_says, self.retry.max_backoff)

    def _connection_error(self, error: Exception) -> TtsqError:
        if isinstance(error, httpx.TimeoutException):
            return ApiTimeoutError(f"the API at {self.base_url} did not answer in time: {error}")
        return ApiConnectionError(f"cannot reach the API at {self.base_url}: {error}")

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.status_code < 400:
            return response
        body = _problem(response)
        if not isinstance(body.get("status"), int):
            body = {
                "type": "about:blank",
                "title": response.reason_phrase,
                "status": response.status_code,
                "detail": response.text[:200].strip(),
            }
        raise api_error(response.status_code, body, retry_after(response))

    # --- calls ------------------------------------------------------------

    @staticmethod
    def _submit_call(job: JobLike, idempotency_key: Optional[str]) -> Call:
        return Call(
            "POST",
            "/v1/tts/jobs",
            body=job_json(job),
            idempotency_key=idempotency_key or new_idempotency_key(),
        )

    @staticmethod
    def _synthesize_call(job: JobLike, idempotency_key: Optional[str]) -> Call:
        body = job_json(job)
        body["priority"] = "high"
        return Call(
            "POST",
            "/v1/tts/jobs",
            body=body,
            accept="audio/*",
            idempotency_key=idempotency_key or new_idempotency_key(),
        )

    @staticmethod
    def _get_call(task_id: str, wait: Optional[float] = None) -> Call:
        params = _params(wait=f"{wait:g}" if wait is not None else None)
        return Call("GET", f"/v1/tts/jobs/{_id(task_id)}", params=params or None)

    @staticmethod
    def _audio_call(task_id: str) -> Call:
        return Call("GET", f"/v1/tts/jobs/{_id(task_id)}/audio", {"inline": "1"}, accept="*/*")

    @staticmethod
    def _list_call(status: Optional[str], limit: Optional[int], cursor: Optional[str]) -> Call:
        return Call(
            "GET", "/v1/tts/jobs", params=_params(status=status, limit=limit, cursor=cursor)
        )

    @staticmethod
    def _batch_call(
        jobs: Iterable[JobLike],
        concatenate: bool,
        callback_url: Optional[str],
        metadata: Any,
        idempotency_key: Optional[str],
    ) -> Call:
        items = [job_json(job) for job in jobs]
        if not 1 <= len(items) <= MAX_BATCH_ITEMS:
            raise ValueError(
                f"a batch holds 1 to {MAX_BATCH_ITEMS} jobs, not {len(items)}; "
                "run_batch() splits more"
            )
        body: Dict[str, Any] = {"items": items}
        if concatenate:
            body["concatenate"] = True
        if callback_url is not None:
            body["callback_url"] = callback_url
        if metadata is not None:
            body["metadata"] = metadata
        return Call(
            "POST",
            "/v1/tts/batches",
            body=body,
            idempotency_key=idempotency_key or new_idempotency_key(),
        )

    @staticmethod
    def _get_batch_call(batch_id: str, cursor: Optional[str], limit: Optional[int]) -> Call:
        return Call(
            "GET", f"/v1/tts/batches/{_id(batch_id)}", params=_params(cursor=cursor, limit=limit)
        )

    @staticmethod
    def _usage_call(from_: Optional[Date], to: Optional[Date]) -> Call:
        return Call("GET", "/v1/usage", params=_params(**{"from": _date(from_), "to": _date(to)}))


def _id(value: Any) -> str:
    text = str(value)
    if not text or "/" in text or "?" in text or "#" in text:
        raise ValueError(f"not an id: {text!r}")
    return text


def _problem(response: httpx.Response) -> Dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def json_body(response: httpx.Response) -> Any:
    """The JSON of a successful answer."""
    try:
        return response.json()
    except ValueError:
        raise UnexpectedResponseError(
            f"expected JSON from {response.request.method} {response.request.url.path}, "
            f"got {response.headers.get('content-type', 'nothing')} "
            f"(HTTP {response.status_code})"
        ) from None


def json_object(response: httpx.Response) -> Dict[str, Any]:
    """The JSON object of a successful answer."""
    body = json_body(response)
    if not isinstance(body, dict):
        raise UnexpectedResponseError(f"expected a JSON object, got {type(body).__name__}")
    return body


def speech(response: httpx.Response) -> Speech:
    """The audio of a ``200`` high-priority answer."""
    task_id = response.headers.get("x-task-id")
    if not task_id:
        raise UnexpectedResponseError("the audio came without an X-Task-Id")
    return Speech(
        response.content,
        task_id=task_id,
        content_type=response.headers.get("content-type", "application/octet-stream"),
        cache_hit=response.headers.get("x-cache") == "hit",
    )


def marks(response: httpx.Response) -> List[Mark]:
    """The speech marks of a ``GET …/marks`` answer."""
    body = json_body(response)
    if isinstance(body, dict):
        body = body.get("marks")
    if not isinstance(body, list):
        raise UnexpectedResponseError("the speech marks are not a JSON list")
    return [Mark.from_json(m) for m in body if isinstance(m, dict)]


def job(
    text: str,
    dialect: str,
    voice: Optional[str],
    format: Optional[str],
    speed: Optional[float],
    emotion: Optional[str],
    marks: Optional[Iterable[str]],
    metadata: Any,
    callback_url: Optional[str] = None,
    priority: Optional[str] = None,
) -> Job:
    """A :class:`Job` from keyword arguments."""
    return Job(
        text=text,
        dialect=dialect,
        voice=voice,
        format=format,
        speed=speed,
        emotion=emotion,
        marks=list(marks) if marks is not None else None,
        metadata=metadata,
        callback_url=callback_url,
        priority=priority,
    )


def not_finished(task: Task) -> TtsqError:
    """Why a task awaited for its audio has none."""
    if task.status == TaskStatus.SUCCEEDED:
        return UnexpectedResponseError(f"task {task.id} succeeded but has no audio")
    reason = f": {task.error.code}: {task.error.message}" if task.error else ""
    return TtsqError(f"task {task.id} is {task.status}{reason}")


def chunks(jobs: Sequence[JobLike]) -> List[Sequence[JobLike]]:
    """``jobs`` in batches of at most :data:`MAX_BATCH_ITEMS`."""
    if not jobs:
        raise ValueError("no jobs to run")
    return [jobs[i : i + MAX_BATCH_ITEMS] for i in range(0, len(jobs), MAX_BATCH_ITEMS)]


def reindexed(items: Iterable[BatchItem], offset: int) -> Iterator[BatchItem]:
    """A batch's items numbered among all the jobs of a :meth:`run_batch`."""
    for item in items:
        yield dataclasses.replace(item, index=item.index + offset)


def dialects(body: Mapping[str, Any]) -> List[Dialect]:
    """The catalog of a ``GET /v1/dialects`` answer."""
    listed = body.get("dialects")
    if not isinstance(listed, list):
        raise UnexpectedResponseError("the catalog has no `dialects` list")
    return [Dialect.from_json(d) for d in listed if isinstance(d, dict)]


def voices(catalog: Iterable[Dialect], dialect: Optional[str]) -> List[Voice]:
    """The voices of the catalog, of every dialect or of one."""
    return [
        Voice(id=voice, dialect=d.id, dialect_name=d.name, is_default=n == 0)
        for d in catalog
        if dialect is None or d.id == dialect
        for n, voice in enumerate(d.voices)
    ]
