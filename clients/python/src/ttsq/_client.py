"""The synchronous client."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, Iterable, Iterator, List, Mapping, Optional, Type, Union

import httpx

from . import _base
from ._base import MAX_BATCH_ITEMS, POLL_SLICE, BaseClient, Call, Date, RetryPolicy
from .errors import WaitTimeoutError
from .models import (
    Batch,
    BatchItem,
    BatchResult,
    BatchSubmission,
    Dialect,
    JobLike,
    Mark,
    Speech,
    Task,
    TaskPage,
    Usage,
    Voice,
)

_sleep = time.sleep
"""How the client pauses (between retries, polls); replaced in tests."""


class Client(BaseClient):
    """A client of one ttsq API as one tenant (the API key names it).

    Use it as a context manager, or call :meth:`close` when done::

        with ttsq.Client.from_env() as client:
            audio = client.synthesize("Hello there.", dialect="en-gb")

    Idempotent calls are retried on connection errors, ``429`` and ``5xx``
    (see :class:`RetryPolicy`); submissions are sent with an
    ``Idempotency-Key`` (a fresh one unless you pass yours), so they are
    retried too without ever making a second task. One client is safe to
    share between threads.
    """

    def __init__(
        self,
        api_key: Optional[str] = None,
        *,
        base_url: Optional[str] = None,
        timeout: Union[float, httpx.Timeout, None] = None,
        retry: Optional[RetryPolicy] = None,
        default_headers: Optional[Mapping[str, str]] = None,
        http_client: Optional[httpx.Client] = None,
    ) -> None:
        """``api_key`` and ``base_url`` default to ``TTSQ_API_KEY`` and
        ``TTSQ_URL`` (then ``http://127.0.0.1:8080``). ``http_client`` is an
        ``httpx.Client`` of your own (proxies, transports); it is then yours
        to close."""
        api_key, url = self._env(api_key, base_url)
        super().__init__(api_key, url, retry, default_headers)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(
            timeout=timeout if timeout is not None else _base.DEFAULT_TIMEOUT
        )

    @classmethod
    def from_env(cls, **options: Any) -> Client:
        """A client of ``TTSQ_URL`` with the key in ``TTSQ_API_KEY``, the
        variables the ``ttsq`` command line reads; ``options`` as for the
        constructor."""
        return cls(**options)

    def close(self) -> None:
        """Closes the connections (unless the ``httpx.Client`` was given)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    # --- transport ----------------------------------------------------------

    def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            request = self._request(self._http, call)
            try:
                response = self._http.send(request)
            except httpx.TransportError as error:
                pause = self._pause(call, attempt, error=error)
                if pause is None:
                    raise self._connection_error(error) from error
            else:
                pause = self._pause(call, attempt, response=response)
                if pause is None:
                    return self._check(response)
            _sleep(pause)
            attempt += 1

    # --- tasks --------------------------------------------------------------

    def synthesize(
        self,
        text: str,
        dialect: str,
        *,
        voice: Optional[str] = None,
        format: Optional[str] = None,
        speed: Optional[float] = None,
        emotion: Optional[str] = None,
        metadata: Any = None,
        idempotency_key: Optional[str] = None,
    ) -> Speech:
        """Synthesizes ``text`` now (high priority) and returns the audio:
        ``bytes``, with ``task_id``, ``content_type`` and ``cache_hit``.

        ``format`` is any the dialect offers: ``mp3`` (default), ``wav``,
        ``pcm``, ``opus``, ``flac``…
        """
        job = _base.job(text, dialect, voice, format, speed, emotion, None, metadata)
        response = self._send(self._synthesize_call(job, idempotency_key))
        if response.status_code == 202:
            # A retried request whose first attempt is still synthesizing.
            task = self.wait(_base.json_object(response).get("task_id", ""))
            if not task.succeeded:
                raise _base.not_finished(task)
            audio = self._audio_response(task.id)
            return Speech(
                audio.content,
                task_id=task.id,
                content_type=audio.headers.get("content-type", "application/octet-stream"),
                cache_hit=bool(task.cache_hit),
            )
        return _base.speech(response)

    def submit(
        self,
        text: str,
        dialect: str,
        *,
        voice: Optional[str] = None,
        format: Optional[str] = None,
        speed: Optional[float] = None,
        emotion: Optional[str] = None,
        marks: Optional[Iterable[str]] = None,
        metadata: Any = None,
        callback_url: Optional[str] = None,
        priority: Optional[str] = None,
        idempotency_key: Optional[str] = None,
    ) -> Task:
        """Submits one job and returns its task: ``queued`` (or already
        ``succeeded`` on a cache hit) at normal priority, terminal at
        ``priority="high"``. Wait for it with :meth:`wait`.

        ``marks`` asks for speech marks (``word``, ``sentence``,
        ``viseme``), read later with :meth:`marks`. A repeated
        ``idempotency_key`` returns the first task instead of a new one.
        """
        job = _base.job(
            text, dialect, voice, format, speed, emotion, marks, metadata, callback_url, priority
        )
        return self.submit_job(job, idempotency_key=idempotency_key)

    def submit_job(self, job: JobLike, *, idempotency_key: Optional[str] = None) -> Task:
        """Submits a :class:`Job` (or a mapping of its fields), as :meth:`submit`."""
        response = self._send(self._submit_call(job, idempotency_key))
        return Task.from_json(_base.json_object(response))

    def get(self, task_id: str, *, wait: Optional[float] = None) -> Task:
        """The task as it is now; with ``wait``, as soon as it is terminal
        but after at most ``wait`` seconds (at most the server's
        ``server.max_wait_secs``, 60 by default)."""
        return Task.from_json(_base.json_object(self._send(self._get_call(task_id, wait))))

    def wait(self, task_id: str, *, timeout: Optional[float] = 300.0) -> Task:
        """Long-polls the task until it is terminal and returns it, whether
        it succeeded or not; :class:`WaitTimeoutError` after ``timeout``
        seconds (``None``: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = POLL_SLICE if deadline is None else max(0.0, deadline - time.monotonic())
            task = self.get(task_id, wait=int(min(left, POLL_SLICE)))
            if task.is_terminal:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeoutError(task_id, timeout or 0.0, task)
            if left < 1:
                _sleep(min(left, 0.2))

    def audio(self, task_id: str) -> bytes:
        """The audio of a succeeded task (:class:`ConflictError` before)."""
        return self._audio_response(task_id).content

    def _audio_response(self, task_id: str) -> httpx.Response:
        return self._send(self._audio_call(task_id))

    def marks(self, task_id: str) -> List[Mark]:
        """The speech marks of a succeeded task that asked for ``marks``,
        ordered by start."""
        call = Call("GET", f"/v1/tts/jobs/{_base._id(task_id)}/marks")
        return _base.marks(self._send(call))

    def cancel(self, task_id: str) -> Task:
        """Cancels a task that is still queued and returns it, now
        ``cancelled``; :class:`ConflictError` once a worker has it."""
        call = Call("DELETE", f"/v1/tts/jobs/{_base._id(task_id)}")
        return Task.from_json(_base.json_object(self._send(call)))

    def list_tasks_page(
        self,
        *,
        status: Optional[str] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> TaskPage:
        """One page of the tenant's tasks, newest first (``limit`` 1 to
        200, 50 by default); pass ``next_cursor`` for the next."""
        response = self._send(self._list_call(status, limit, cursor))
        return TaskPage.from_json(_base.json_object(response))

    def list_tasks(
        self, *, status: Optional[str] = None, page_size: Optional[int] = None
    ) -> Iterator[Task]:
        """Every task of the tenant (only those in ``status``, if given),
        newest first, fetched a page at a time as the iteration goes."""
        cursor: Optional[str] = None
        while True:
            page = self.list_tasks_page(status=status, limit=page_size, cursor=cursor)
            yield from page.tasks
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    # --- batches ------------------------------------------------------------

    def submit_batch(
        self,
        jobs: Iterable[JobLike],
        *,
        concatenate: bool = False,
        callback_url: Optional[str] = None,
        metadata: Any = None,
        idempotency_key: Optional[str] = None,
    ) -> BatchSubmission:
        """Submits 1 to 1,000 jobs as one batch (items may carry a
        ``custom_id``); :meth:`run_batch` takes any number. ``concatenate``
        joins the items' audio into one file; ``callback_url`` is told once
        every item is terminal."""
        call = self._batch_call(jobs, concatenate, callback_url, metadata, idempotency_key)
        return BatchSubmission.from_json(_base.json_object(self._send(call)))

    def get_batch(
        self, batch_id: str, *, cursor: Optional[str] = None, limit: Optional[int] = None
    ) -> Batch:
        """The batch, its counts and one page of its items (``limit`` 1 to
        1,000, 100 by default)."""
        call = self._get_batch_call(batch_id, cursor, limit)
        return Batch.from_json(_base.json_object(self._send(call)))

    def batch_items(
        self, batch_id: str, *, page_size: int = MAX_BATCH_ITEMS
    ) -> Iterator[BatchItem]:
        """Every item of the batch, in batch order, a page at a time."""
        cursor: Optional[str] = None
        while True:
            batch = self.get_batch(batch_id, cursor=cursor, limit=page_size)
            yield from batch.items
            if not batch.next_cursor:
                return
            cursor = batch.next_cursor

    def cancel_batch(self, batch_id: str) -> Batch:
        """Cancels the items still queued; finished and running ones are kept."""
        call = Call("DELETE", f"/v1/tts/batches/{_base._id(batch_id)}")
        return Batch.from_json(_base.json_object(self._send(call)))

    def wait_batch(
        self, batch_id: str, *, timeout: Optional[float] = 600.0, poll_interval: float = 1.0
    ) -> Batch:
        """Polls the batch until it is ``completed`` (every item terminal,
        the audio joined when asked) and returns it with its first page of
        items; :class:`WaitTimeoutError` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = min(0.25, poll_interval)
        while True:
            batch = self.get_batch(batch_id, limit=1)
            if batch.is_completed:
                return self.get_batch(batch_id)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeoutError(batch_id, timeout or 0.0, batch)
                pause = min(pause, left)
            _sleep(pause)
            pause = min(pause * 2, poll_interval)

    def run_batch(
        self,
        jobs: Iterable[JobLike],
        *,
        timeout: Optional[float] = 3600.0,
        metadata: Any = None,
        idempotency_key: Optional[str] = None,
    ) -> BatchResult:
        """Submits any number of jobs as batches of 1,000, waits for all of
        them and returns one item per job, in order. With an
        ``idempotency_key`` a rerun (after a crash) submits nothing twice:
        batch ``n`` is keyed ``{key}.{n}``."""
        chunks = _base.chunks(list(jobs))
        base_key = idempotency_key or _base.new_idempotency_key()
        deadline = None if timeout is None else time.monotonic() + timeout
        submitted = [
            self.submit_batch(chunk, metadata=metadata, idempotency_key=f"{base_key}.{n}")
            for n, chunk in enumerate(chunks)
        ]
        batches: List[Batch] = []
        items: List[BatchItem] = []
        for n, batch in enumerate(submitted):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            batches.append(self.wait_batch(batch.id, timeout=left))
            items.extend(_base.reindexed(self.batch_items(batch.id), n * MAX_BATCH_ITEMS))
        return BatchResult(batches=batches, items=items)

    # --- catalog and usage --------------------------------------------------

    def list_dialects(self) -> List[Dialect]:
        """Every dialect this deployment serves, with its voices and formats."""
        body = _base.json_object(self._send(Call("GET", "/v1/dialects")))
        return _base.dialects(body)

    def list_voices(self, dialect: Optional[str] = None) -> List[Voice]:
        """The voices one may name, of every dialect or of one."""
        return _base.voices(self.list_dialects(), dialect)

    def usage(self, from_: Optional[Date] = None, to: Optional[Date] = None) -> Usage:
        """The tenant's usage by UTC day, ``from_`` to ``to`` inclusive
        (dates or ``YYYY-MM-DD``; default the last 30 days)."""
        return Usage.from_json(_base.json_object(self._send(self._usage_call(from_, to))))
