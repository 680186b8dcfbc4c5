"""Typed shapes of the API's requests and answers.

Every model reads the server's JSON leniently: fields it does not know are
kept in ``raw`` and otherwise ignored, so a newer server never breaks an
older SDK. Statuses the SDK does not know come back as plain strings.
"""

from __future__ import annotations

import datetime as _dt
import enum
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

__all__ = [
    "Batch",
    "BatchItem",
    "BatchResult",
    "BatchSubmission",
    "Dialect",
    "Job",
    "Mark",
    "Speech",
    "StatusCounts",
    "Task",
    "TaskError",
    "TaskPage",
    "TaskStatus",
    "Usage",
    "UsageDay",
    "Voice",
    "WebhookEvent",
]

JSON = Dict[str, Any]


class TaskStatus(str, enum.Enum):
    """Where a task is in its life. Compares equal to its API name."""

    QUEUED = "queued"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether the task will never change again."""
        return self in _TERMINAL

    def __str__(self) -> str:
        return self.value


_TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELLED})


def _status(value: Any) -> Union[TaskStatus, str]:
    try:
        return TaskStatus(value)
    except ValueError:
        return str(value)


def _is_terminal(status: Union[TaskStatus, str]) -> bool:
    return isinstance(status, TaskStatus) and status.is_terminal


def _datetime(value: Any) -> Optional[_dt.datetime]:
    if not isinstance(value, str):
        return None
    # Python before 3.11 reads neither `Z` nor more than 6 fraction digits.
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    if "." in text:
        head, _, rest = text.partition(".")
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = head + "." + rest[:digits][:6].ljust(6, "0") + rest[digits:]
    try:
        return _dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def _date(value: Any) -> Optional[_dt.date]:
    if not isinstance(value, str):
        return None
    try:
        return _dt.date.fromisoformat(value)
    except ValueError:
        return None


def _int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def _strs(value: Any) -> List[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


@dataclass(frozen=True)
class Job:
    """One synthesis job, for :meth:`ttsq.Client.submit` and batches.

    ``format`` is any format the dialect offers (``mp3``, the default,
    ``wav``, ``pcm``, ``opus``, ``flac``…; see :meth:`ttsq.Client.list_dialects`).
    ``custom_id`` is for batch items only, ``callback_url`` and ``priority``
    for single jobs only.
    """

    text: str
    dialect: str
    voice: Optional[str] = None
    format: Optional[str] = None
    speed: Optional[float] = None
    emotion: Optional[str] = None
    marks: Optional[Sequence[str]] = None
    metadata: Any = None
    custom_id: Optional[str] = None
    callback_url: Optional[str] = None
    priority: Optional[str] = None

    def to_json(self) -> JSON:
        """The job as the API's JSON, without the fields left unset."""
        body: JSON = {"text": self.text, "dialect": self.dialect}
        for name in (
            "voice",
            "format",
            "speed",
            "emotion",
            "metadata",
            "custom_id",
            "callback_url",
            "priority",
        ):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.marks is not None:
            body["marks"] = list(self.marks)
        return body


JobLike = Union[Job, Mapping[str, Any]]
"""A :class:`Job`, or the same fields as a mapping (``{"text": …, "dialect": …}``)."""


def job_json(job: JobLike) -> JSON:
    """The API's JSON of a job given either way."""
    if isinstance(job, Job):
        return job.to_json()
    return {k: (list(v) if k == "marks" and v is not None else v) for k, v in job.items()}


@dataclass(frozen=True)
class TaskError:
    """Why a task failed or was cancelled."""

    code: str
    message: str

    @classmethod
    def from_json(cls, data: Any) -> Optional[TaskError]:
        if not isinstance(data, dict):
            return None
        return cls(code=str(data.get("code", "")), message=str(data.get("message", "")))


@dataclass(frozen=True)
class Task:
    """A task: one job and what became of it.

    A submission's ``202`` answer carries only ``id``, ``status`` and
    ``status_url``; the other fields are then ``None`` until the task is
    read again (:meth:`ttsq.Client.get`, :meth:`ttsq.Client.wait`).

    A long job (a text longer than one provider request, which the server
    splits into chunks synthesized in parallel) carries ``chunks_total`` and
    ``chunks_done``, its progress; both are ``None`` for every other task.
    """

    id: str
    status: Union[TaskStatus, str]
    status_url: Optional[str] = None
    priority: Optional[str] = None
    dialect: Optional[str] = None
    voice: Optional[str] = None
    format: Optional[str] = None
    characters: Optional[int] = None
    cache_hit: Optional[bool] = None
    audio_url: Optional[str] = None
    audio_sha256: Optional[str] = None
    audio_bytes: Optional[int] = None
    duration_ms: Optional[int] = None
    marks: Optional[List[str]] = None
    marks_url: Optional[str] = None
    error: Optional[TaskError] = None
    attempts: Optional[int] = None
    metadata: Any = None
    created_at: Optional[_dt.datetime] = None
    started_at: Optional[_dt.datetime] = None
    finished_at: Optional[_dt.datetime] = None
    chunks_total: Optional[int] = None
    chunks_done: Optional[int] = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_terminal(self) -> bool:
        """Whether the task will never change again."""
        return _is_terminal(self.status)

    @property
    def is_long(self) -> bool:
        """Whether it is a long job, split into chunks by the server."""
        return self.chunks_total is not None

    @property
    def succeeded(self) -> bool:
        """Whether its audio is ready."""
        return self.status == TaskStatus.SUCCEEDED

    @classmethod
    def from_json(cls, data: JSON) -> Task:
        cache_hit = data.get("cache_hit")
        return cls(
            id=str(data.get("task_id", "")),
            status=_status(data.get("status")),
            status_url=_str(data.get("status_url")),
            priority=_str(data.get("priority")),
            dialect=_str(data.get("dialect")),
            voice=_str(data.get("voice")),
            format=_str(data.get("format")),
            characters=_int(data.get("characters")),
            cache_hit=cache_hit if isinstance(cache_hit, bool) else None,
            audio_url=_str(data.get("audio_url")),
            audio_sha256=_str(data.get("audio_sha256")),
            audio_bytes=_int(data.get("audio_bytes")),
            duration_ms=_int(data.get("duration_ms")),
            marks=_strs(data["marks"]) if isinstance(data.get("marks"), list) else None,
            marks_url=_str(data.get("marks_url")),
            error=TaskError.from_json(data.get("error")),
            attempts=_int(data.get("attempts")),
            metadata=data.get("metadata"),
            created_at=_datetime(data.get("created_at")),
            started_at=_datetime(data.get("started_at")),
            finished_at=_datetime(data.get("finished_at")),
            chunks_total=_int(data.get("chunks_total")),
            chunks_done=_int(data.get("chunks_done")),
            raw=data,
        )


@dataclass(frozen=True)
class TaskPage:
    """One page of the tenant's tasks, newest first; ``next_cursor`` is
    ``None`` on the last page."""

    tasks: List[Task]
    next_cursor: Optional[str] = None

    @classmethod
    def from_json(cls, data: JSON) -> TaskPage:
        jobs = data.get("jobs")
        return cls(
            tasks=[Task.from_json(j) for j in jobs if isinstance(j, dict)]
            if isinstance(jobs, list)
            else [],
            next_cursor=_str(data.get("next_cursor")),
        )


class Speech(bytes):
    """Audio synthesized at high priority: the bytes themselves, with the
    task recorded for them. Use it wherever ``bytes`` go
    (``Path("a.mp3").write_bytes(speech)``)."""

    task_id: str
    content_type: str
    cache_hit: bool

    def __new__(cls, audio: bytes, *, task_id: str, content_type: str, cache_hit: bool) -> Speech:
        speech = super().__new__(cls, audio)
        speech.task_id = task_id
        speech.content_type = content_type
        speech.cache_hit = cache_hit
        return speech

    def __reduce__(self) -> Any:
        return (
            _speech,
            (bytes(self), self.task_id, self.content_type, self.cache_hit),
        )

    def __repr__(self) -> str:
        return (
            f"Speech({len(self)} bytes, task_id={self.task_id!r}, "
            f"content_type={self.content_type!r}, cache_hit={self.cache_hit})"
        )


def _speech(audio: bytes, task_id: str, content_type: str, cache_hit: bool) -> Speech:
    return Speech(audio, task_id=task_id, content_type=content_type, cache_hit=cache_hit)


@dataclass(frozen=True)
class Mark:
    """One speech mark, Polly-like: a ``word``, ``sentence`` or ``viseme``
    with its time in the audio; words and sentences also carry ``start``
    and ``end``, character offsets into the normalised text."""

    type: str
    start_ms: int
    end_ms: int
    value: str
    start: Optional[int] = None
    end: Optional[int] = None

    @classmethod
    def from_json(cls, data: JSON) -> Mark:
        return cls(
            type=str(data.get("type", "")),
            start_ms=_int(data.get("start_ms")) or 0,
            end_ms=_int(data.get("end_ms")) or 0,
            value=str(data.get("value", "")),
            start=_int(data.get("start")),
            end=_int(data.get("end")),
        )


@dataclass(frozen=True)
class Dialect:
    """A dialect of the catalog and what it offers."""

    id: str
    name: str
    voices: List[str]
    formats: List[str]
    emotions: List[str]
    marks: List[str]
    provider_chain: List[str]
    model: Optional[str] = None
    sample_rate_hz: Optional[int] = None
    max_request_chars: Optional[int] = None
    """Longest text synthesized as one request (the least of its providers'
    limits): a longer normal-priority job is a long job, split into chunks
    by the server; a longer high-priority job is refused. ``None`` when the
    server does not say."""
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @property
    def default_voice(self) -> Optional[str]:
        """The voice used when a job names none."""
        return self.voices[0] if self.voices else None

    @classmethod
    def from_json(cls, data: JSON) -> Dialect:
        return cls(
            id=str(data.get("id", "")),
            name=str(data.get("name", "")),
            voices=_strs(data.get("voices")),
            formats=_strs(data.get("formats")),
            emotions=_strs(data.get("emotions")),
            marks=_strs(data.get("marks")),
            provider_chain=_strs(data.get("provider_chain")),
            model=_str(data.get("model")),
            sample_rate_hz=_int(data.get("sample_rate_hz")),
            max_request_chars=_int(data.get("max_request_chars")),
            raw=data,
        )


@dataclass(frozen=True)
class Voice:
    """A voice one may name in a job, with its dialect."""

    id: str
    dialect: str
    dialect_name: str
    is_default: bool


@dataclass(frozen=True)
class UsageDay:
    """One UTC day's usage of one provider and dialect."""

    day: _dt.date
    dialect: str
    provider: Optional[str]
    tasks: int
    succeeded: int
    failed: int
    cache_hits: int
    characters: int
    billable_characters: int
    cost: Decimal
    currency: Optional[str]

    @classmethod
    def from_json(cls, data: JSON) -> UsageDay:
        try:
            cost = Decimal(str(data.get("cost", "0")))
        except InvalidOperation:
            cost = Decimal(0)
        return cls(
            day=_date(data.get("day")) or _dt.date.min,
            dialect=str(data.get("dialect", "")),
            provider=_str(data.get("provider")),
            tasks=_int(data.get("tasks")) or 0,
            succeeded=_int(data.get("succeeded")) or 0,
            failed=_int(data.get("failed")) or 0,
            cache_hits=_int(data.get("cache_hits")) or 0,
            characters=_int(data.get("characters")) or 0,
            billable_characters=_int(data.get("billable_characters")) or 0,
            cost=cost,
            currency=_str(data.get("currency")),
        )


@dataclass(frozen=True)
class Usage:
    """The calling tenant's usage from ``from_`` to ``to`` (UTC days,
    inclusive); days without finished tasks are absent from ``days``."""

    from_: Optional[_dt.date]
    to: Optional[_dt.date]
    days: List[UsageDay]

    @property
    def billable_characters(self) -> int:
        """Characters billed over the whole range."""
        return sum(d.billable_characters for d in self.days)

    @classmethod
    def from_json(cls, data: JSON) -> Usage:
        days = data.get("days")
        return cls(
            from_=_date(data.get("from")),
            to=_date(data.get("to")),
            days=[UsageDay.from_json(d) for d in days if isinstance(d, dict)]
            if isinstance(days, list)
            else [],
        )


@dataclass(frozen=True)
class BatchSubmission:
    """A batch as its submission answers it: one task id per item, in order."""

    id: str
    status: str
    task_ids: List[str]
    status_url: Optional[str] = None

    @classmethod
    def from_json(cls, data: JSON) -> BatchSubmission:
        return cls(
            id=str(data.get("batch_id", "")),
            status=str(data.get("status", "")),
            task_ids=_strs(data.get("task_ids")),
            status_url=_str(data.get("status_url")),
        )


@dataclass(frozen=True)
class StatusCounts:
    """A batch's items per task status."""

    queued: int = 0
    processing: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0

    @classmethod
    def from_json(cls, data: Any) -> StatusCounts:
        if not isinstance(data, dict):
            return cls()
        return cls(**{k: _int(data.get(k)) or 0 for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class BatchItem:
    """One item of a batch: its task's state."""

    index: int
    task_id: str
    status: Union[TaskStatus, str]
    cache_hit: bool
    custom_id: Optional[str] = None
    audio_url: Optional[str] = None
    duration_ms: Optional[int] = None
    error: Optional[TaskError] = None

    @property
    def is_terminal(self) -> bool:
        """Whether the item's task will never change again."""
        return _is_terminal(self.status)

    @classmethod
    def from_json(cls, data: JSON) -> BatchItem:
        return cls(
            index=_int(data.get("index")) or 0,
            task_id=str(data.get("task_id", "")),
            status=_status(data.get("status")),
            cache_hit=bool(data.get("cache_hit", False)),
            custom_id=_str(data.get("custom_id")),
            audio_url=_str(data.get("audio_url")),
            duration_ms=_int(data.get("duration_ms")),
            error=TaskError.from_json(data.get("error")),
        )


@dataclass(frozen=True)
class Batch:
    """A batch with its counts and one page of its items (``items``, from
    the cursor asked for; ``next_cursor`` is ``None`` on the last page)."""

    id: str
    status: str
    size: int
    counts: StatusCounts
    concatenate: bool
    items: List[BatchItem]
    next_cursor: Optional[str] = None
    status_url: Optional[str] = None
    concatenated_audio_url: Optional[str] = None
    concatenated_audio_bytes: Optional[int] = None
    concatenated_duration_ms: Optional[int] = None
    concatenate_error: Optional[str] = None
    metadata: Any = None
    cancelled_items: Optional[int] = None
    created_at: Optional[_dt.datetime] = None
    cancelled_at: Optional[_dt.datetime] = None
    completed_at: Optional[_dt.datetime] = None
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_completed(self) -> bool:
        """Whether every item is terminal (and the audio joined, when asked)."""
        return self.status == "completed"

    @classmethod
    def from_json(cls, data: JSON) -> Batch:
        items = data.get("data")
        return cls(
            id=str(data.get("batch_id", "")),
            status=str(data.get("status", "")),
            size=_int(data.get("items")) or 0,
            counts=StatusCounts.from_json(data.get("counts")),
            concatenate=bool(data.get("concatenate", False)),
            items=[BatchItem.from_json(i) for i in items if isinstance(i, dict)]
            if isinstance(items, list)
            else [],
            next_cursor=_str(data.get("next_cursor")),
            status_url=_str(data.get("status_url")),
            concatenated_audio_url=_str(data.get("concatenated_audio_url")),
            concatenated_audio_bytes=_int(data.get("concatenated_audio_bytes")),
            concatenated_duration_ms=_int(data.get("concatenated_duration_ms")),
            concatenate_error=_str(data.get("concatenate_error")),
            metadata=data.get("metadata"),
            cancelled_items=_int(data.get("cancelled_items")),
            created_at=_datetime(data.get("created_at")),
            cancelled_at=_datetime(data.get("cancelled_at")),
            completed_at=_datetime(data.get("completed_at")),
            raw=data,
        )


@dataclass(frozen=True)
class BatchResult:
    """What :meth:`ttsq.Client.run_batch` made of many jobs: the batches
    submitted (1,000 jobs each at most) and one item per job, in the order
    the jobs were given (``index`` counts across all the batches)."""

    batches: List[Batch]
    items: List[BatchItem]

    @property
    def succeeded(self) -> List[BatchItem]:
        """The items whose audio is ready."""
        return [i for i in self.items if i.status == TaskStatus.SUCCEEDED]

    @property
    def failed(self) -> List[BatchItem]:
        """The items that failed or were cancelled."""
        return [i for i in self.items if i.is_terminal and i.status != TaskStatus.SUCCEEDED]


@dataclass(frozen=True)
class WebhookEvent:
    """A verified webhook delivery: ``task.completed`` (``data`` is the task
    as :meth:`ttsq.Client.get` reads it) or ``batch.completed`` (``data`` is
    the batch without its items). Dedupe on ``id``: a retried or replayed
    event keeps it."""

    id: str
    type: str
    created_at: Optional[_dt.datetime]
    data: JSON
    raw: JSON = field(default_factory=dict, repr=False, compare=False)

    @property
    def task(self) -> Optional[Task]:
        """The task, for a ``task.*`` event."""
        return Task.from_json(self.data) if self.type.startswith("task.") else None

    @property
    def batch(self) -> Optional[Batch]:
        """The batch, for a ``batch.*`` event."""
        return Batch.from_json(self.data) if self.type.startswith("batch.") else None

    @classmethod
    def from_json(cls, data: JSON) -> WebhookEvent:
        payload = data.get("data")
        return cls(
            id=str(data.get("id", "")),
            type=str(data.get("type", "")),
            created_at=_datetime(data.get("created_at")),
            data=payload if isinstance(payload, dict) else {},
            raw=data,
        )
