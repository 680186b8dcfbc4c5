"""The SDK against a running ttsq, sync and async: every call, its errors,
and a real webhook delivery verified with verify_webhook.

Run by the Rust integration test ``python_sdk`` (``deploy/local/test.sh``),
which starts a stack and sets ``TTSQ_URL``, ``TTSQ_API_KEY`` and
``TTSQ_TEST_WEBHOOK_SECRET``; skipped when they are absent."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import os
import queue
import threading
import uuid
from typing import Dict, Iterator, List, Tuple

import pytest

import ttsq

WAIT = 120.0


def unique(text: str) -> str:
    """The text with a mark of its own, so that no earlier test's audio is a cache hit."""
    return f"{text} {uuid.uuid4().hex[:8]}"


# --- sync ---------------------------------------------------------------------


def test_the_catalog_lists_dialects_and_their_voices(client: ttsq.Client) -> None:
    dialects = {d.id: d for d in client.list_dialects()}
    en_gb = dialects["en-gb"]
    assert en_gb.voices and {"mp3", "wav"} <= set(en_gb.formats)
    assert en_gb.default_voice == en_gb.voices[0] and en_gb.provider_chain
    voices = client.list_voices("en-gb")
    assert [v.id for v in voices] == en_gb.voices
    assert voices[0].is_default and not any(v.is_default for v in voices[1:])
    assert len(client.list_voices()) == sum(len(d.voices) for d in dialects.values())


def test_synthesize_answers_the_audio_and_then_from_the_cache(client: ttsq.Client) -> None:
    text = unique("Hello from the Python SDK.")
    speech = client.synthesize(text, dialect="en-gb")
    assert speech.content_type == "audio/mpeg" and len(speech) > 1000
    assert not speech.cache_hit
    again = client.synthesize(text, dialect="en-gb")
    assert again.cache_hit and again == speech and again.task_id != speech.task_id
    wav = client.synthesize(text, dialect="en-gb", format="wav", speed=1.5)
    assert wav[:4] == b"RIFF" and wav.content_type == "audio/wav"
    task = client.get(wav.task_id)
    assert task.succeeded and task.priority == "high" and task.format == "wav"


def test_a_queued_job_is_waited_for_and_downloaded(client: ttsq.Client) -> None:
    submitted = client.submit(unique("Queued speech."), "fr-fr", format="wav", metadata={"n": 1})
    assert submitted.status in (ttsq.TaskStatus.QUEUED, ttsq.TaskStatus.SUCCEEDED)
    task = client.wait(submitted.id, timeout=WAIT)
    assert task.succeeded, task
    assert task.metadata == {"n": 1} and task.dialect == "fr-fr" and task.characters
    assert task.created_at is not None and task.finished_at is not None
    audio = client.audio(task.id)
    assert audio[:4] == b"RIFF" and len(audio) == task.audio_bytes
    assert client.get(task.id, wait=1).status == ttsq.TaskStatus.SUCCEEDED


def test_an_idempotency_key_names_one_task(client: ttsq.Client) -> None:
    key = f"py-{uuid.uuid4()}"
    text = unique("Only once.")
    first = client.submit(text, "en-us", idempotency_key=key)
    again = client.submit(text, "en-us", idempotency_key=key)
    assert first.id == again.id
    client.wait(first.id, timeout=WAIT)


def test_refusals_raise_their_error_with_the_problem(client: ttsq.Client, live_url: str) -> None:
    with pytest.raises(ttsq.BadRequestError) as invalid:
        client.submit("Too fast.", "en-gb", speed=9)
    assert invalid.value.status == 400
    assert invalid.value.type == "urn:ttsq:problem:validation"
    assert [e.field for e in invalid.value.errors] == ["speed"]

    with pytest.raises(ttsq.NotFoundError):
        client.get(str(uuid.uuid4()))

    done = client.wait(client.submit(unique("Finished."), "en-gb").id, timeout=WAIT)
    with pytest.raises(ttsq.ConflictError):
        client.cancel(done.id)

    stranger = ttsq.Client("not-a-key", base_url=live_url)
    with stranger, pytest.raises(ttsq.AuthenticationError) as unknown:
        stranger.list_dialects()
    assert unknown.value.status == 401

    with (
        ttsq.Client(
            "k",
            base_url="http://127.0.0.1:9",
            retry=ttsq.RetryPolicy(max_retries=1, initial_backoff=0.01),
        ) as nowhere,
        pytest.raises(ttsq.ApiConnectionError),
    ):
        nowhere.list_dialects()


def test_list_tasks_walks_every_page(client: ttsq.Client) -> None:
    ids = {client.submit(unique(f"Listed {n}."), "en-gb").id for n in range(3)}
    for task_id in ids:
        client.wait(task_id, timeout=WAIT)
    listed = [t.id for t in client.list_tasks(page_size=2)]
    assert ids <= set(listed) and len(listed) == len(set(listed))
    page = client.list_tasks_page(limit=2)
    assert len(page.tasks) == 2 and page.next_cursor
    succeeded = list(client.list_tasks(status="succeeded"))
    assert all(t.succeeded for t in succeeded) and ids <= {t.id for t in succeeded}


def test_speech_marks_time_the_words(client: ttsq.Client) -> None:
    # One sentence: the mark that keeps the audio this test's own goes inside it.
    text = f"Hello brave new world {uuid.uuid4().hex[:8]}."
    task = client.submit(text, "en-gb", marks=["word", "sentence"])
    task = client.wait(task.id, timeout=WAIT)
    assert task.succeeded and task.marks == ["word", "sentence"]
    marks = client.marks(task.id)
    words = [m.value for m in marks if m.type == "word"]
    assert words[:4] == ["Hello", "brave", "new", "world"], marks
    assert [m.type for m in marks if m.type == "sentence"] == ["sentence"]
    assert [m.start_ms for m in marks] == sorted(m.start_ms for m in marks)
    assert all(m.end_ms >= m.start_ms and m.start is not None for m in marks)


def test_a_batch_is_submitted_waited_for_and_read(client: ttsq.Client) -> None:
    jobs = [
        ttsq.Job(text=unique("Chapter one."), dialect="en-gb", custom_id="ch-1"),
        {"text": unique("Chapter two."), "dialect": "en-gb", "custom_id": "ch-2"},
        ttsq.Job(text=unique("Chapter three."), dialect="en-us", format="wav", custom_id="ch-3"),
    ]
    submitted = client.submit_batch(jobs, metadata={"book": 7})
    assert len(submitted.task_ids) == 3
    batch = client.wait_batch(submitted.id, timeout=WAIT)
    assert batch.is_completed and batch.counts.succeeded == 3 and batch.metadata == {"book": 7}
    items = list(client.batch_items(submitted.id, page_size=2))
    assert [i.custom_id for i in items] == ["ch-1", "ch-2", "ch-3"]
    assert [i.task_id for i in items] == submitted.task_ids
    assert client.audio(items[2].task_id)[:4] == b"RIFF"
    with pytest.raises(ttsq.BadRequestError) as refused:
        client.submit_batch([{"text": "", "dialect": "en-gb"}])
    assert refused.value.errors[0].field == "items[0].text"


def test_run_batch_splits_over_1000_jobs_and_waits_for_all(client: ttsq.Client) -> None:
    # The audio is stored first, so the 1,001 items are cache hits that
    # finish at submission: the batching is tested, not the synthesizer.
    text = unique("One line of many.")
    client.wait(client.submit(text, "en-gb").id, timeout=WAIT)
    jobs = [ttsq.Job(text=text, dialect="en-gb", custom_id=f"line-{n}") for n in range(1001)]
    result = client.run_batch(jobs, timeout=WAIT)
    assert len(result.batches) == 2
    assert [b.size for b in result.batches] == [1000, 1]
    assert [i.index for i in result.items] == list(range(1001))
    assert [i.custom_id for i in result.items] == [f"line-{n}" for n in range(1001)]
    assert len(result.succeeded) == 1001 and all(i.cache_hit for i in result.items)


def test_usage_reports_the_billable_characters_by_day(client: ttsq.Client) -> None:
    client.synthesize(unique("Billable words."), "en-gb")
    # Asked after the synthesis: a run across midnight (UTC) finds it yesterday.
    today = dt.datetime.now(dt.timezone.utc).date()
    usage = client.usage(today - dt.timedelta(days=1), today.isoformat())
    assert usage.from_ == today - dt.timedelta(days=1) and usage.to == today
    assert usage.billable_characters > 0
    day = next(d for d in usage.days if d.dialect == "en-gb")
    assert day.day in (today, usage.from_) and day.succeeded >= 1 and day.cost >= 0
    with pytest.raises(ttsq.BadRequestError):
        client.usage("yesterday")


class _Receiver(http.server.BaseHTTPRequestHandler):
    deliveries: queue.Queue[Tuple[bytes, Dict[str, str]]] = queue.Queue()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.deliveries.put((body, dict(self.headers.items())))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Tuple[str, queue.Queue[Tuple[bytes, Dict[str, str]]]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/tts", _Receiver.deliveries
    finally:
        server.shutdown()
        server.server_close()


def test_a_real_delivery_verifies_and_a_tampered_one_does_not(
    client: ttsq.Client, receiver: Tuple[str, queue.Queue[Tuple[bytes, Dict[str, str]]]]
) -> None:
    secret = os.environ.get("TTSQ_TEST_WEBHOOK_SECRET")
    if not secret:
        pytest.skip("no TTSQ_TEST_WEBHOOK_SECRET (the python_sdk integration test sets it)")
    url, deliveries = receiver
    task = client.submit(unique("Call me back."), "en-gb", callback_url=url)
    client.wait(task.id, timeout=WAIT)
    body, headers = deliveries.get(timeout=60)
    event = ttsq.verify_webhook(body, headers, secret)
    assert event.type == "task.completed" and event.id == headers["webhook-id"]
    assert event.task is not None and event.task.id == task.id and event.task.succeeded
    with pytest.raises(ttsq.WebhookVerificationError):
        ttsq.verify_webhook(body.replace(b"succeeded", b"failed"), headers, secret)
    with pytest.raises(ttsq.WebhookVerificationError):
        ttsq.verify_webhook(body, headers, "whsec_c2VjcmV0LW9mLWFub3RoZXItdGVuYW50")


# --- async ----------------------------------------------------------------------


async def test_the_async_client_does_it_all_concurrently(aclient: ttsq.AsyncClient) -> None:
    dialects = await aclient.list_dialects()
    assert "en-gb" in {d.id for d in dialects}
    texts = [unique(f"Concurrent {n}.") for n in range(3)]
    speeches = await asyncio.gather(*(aclient.synthesize(t, "en-us") for t in texts))
    assert len({s.task_id for s in speeches}) == 3 and all(len(s) > 1000 for s in speeches)

    submitted = await asyncio.gather(
        *(
            aclient.submit(unique(f"Queued {n}."), "en-gb", format="wav", marks=["word"])
            for n in range(3)
        )
    )
    tasks = await asyncio.gather(*(aclient.wait(t.id, timeout=WAIT) for t in submitted))
    assert all(t.succeeded for t in tasks)
    audio = await aclient.audio(tasks[0].id)
    assert audio[:4] == b"RIFF" and len(audio) == tasks[0].audio_bytes
    assert (await aclient.marks(tasks[0].id))[0].type == "word"

    listed: List[str] = [t.id async for t in aclient.list_tasks(page_size=2)]
    assert {t.id for t in tasks} <= set(listed)
    assert (await aclient.usage()).billable_characters > 0
    with pytest.raises(ttsq.NotFoundError):
        await aclient.cancel(str(uuid.uuid4()))
    with pytest.raises(ttsq.ConflictError):
        await aclient.cancel(tasks[0].id)


async def test_the_async_batch_helper_waits_for_every_item(aclient: ttsq.AsyncClient) -> None:
    jobs = [
        ttsq.Job(text=unique(f"Async item {n}."), dialect="en-gb", custom_id=str(n))
        for n in range(4)
    ]
    result = await aclient.run_batch(jobs, timeout=WAIT)
    assert [i.custom_id for i in result.items] == ["0", "1", "2", "3"]
    assert len(result.succeeded) == 4 and result.batches[0].is_completed
    assert (await aclient.get_batch(result.batches[0].id)).counts.succeeded == 4
