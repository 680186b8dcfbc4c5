"""Reading the server's JSON: lenient about what a newer server adds."""

from __future__ import annotations

import datetime as dt
import pickle
from decimal import Decimal

import ttsq


def test_a_task_reads_every_field_and_keeps_unknown_ones_in_raw() -> None:
    body = {
        "task_id": "t1",
        "status": "succeeded",
        "format": "opus",
        "characters": 12,
        "cache_hit": True,
        "marks": ["word"],
        "error": None,
        "metadata": {"a": [1]},
        "created_at": "2026-12-07T10:00:00.123456789Z",
        "finished_at": "2026-12-07T10:00:01+00:00",
        "shiny_new_field": 1,
    }
    task = ttsq.Task.from_json(body)
    assert task.succeeded and task.is_terminal and task.status == "succeeded"
    assert task.format == "opus" and task.marks == ["word"] and task.metadata == {"a": [1]}
    assert task.created_at == dt.datetime(2026, 12, 7, 10, 0, 0, 123456, tzinfo=dt.timezone.utc)
    assert task.finished_at is not None and task.finished_at.tzinfo is not None
    assert task.raw["shiny_new_field"] == 1 and task.started_at is None


def test_a_long_job_reads_its_progress_and_other_tasks_have_none() -> None:
    long = ttsq.Task.from_json(
        {"task_id": "t", "status": "processing", "chunks_total": 7, "chunks_done": 3}
    )
    single = ttsq.Task.from_json({"task_id": "u", "status": "processing"})
    odd = ttsq.Task.from_json({"task_id": "v", "status": "processing", "chunks_total": "7"})
    assert (long.chunks_total, long.chunks_done) == (7, 3) and long.is_long
    assert (single.chunks_total, single.chunks_done) == (None, None) and not single.is_long
    assert odd.chunks_total is None and odd.raw["chunks_total"] == "7"


def test_a_dialect_reads_its_request_limit_when_the_server_gives_it() -> None:
    with_limit = ttsq.Dialect.from_json({"id": "en-gb", "max_request_chars": 4096})
    without = ttsq.Dialect.from_json({"id": "en-gb"})
    assert with_limit.max_request_chars == 4096 and without.max_request_chars is None


def test_a_status_the_sdk_does_not_know_is_kept_as_a_string() -> None:
    task = ttsq.Task.from_json({"task_id": "t", "status": "paused"})
    assert task.status == "paused" and not task.is_terminal and not task.succeeded
    assert str(ttsq.TaskStatus.QUEUED) == "queued"


def test_usage_reads_dates_and_exact_costs() -> None:
    usage = ttsq.Usage.from_json(
        {
            "from": "2026-12-01",
            "to": "2026-12-07",
            "days": [
                {
                    "day": "2026-12-07",
                    "dialect": "en-gb",
                    "provider": "espeak",
                    "tasks": 3,
                    "succeeded": 3,
                    "failed": 0,
                    "cache_hits": 1,
                    "characters": 30,
                    "billable_characters": 20,
                    "cost": "0.001200",
                    "currency": "USD",
                }
            ],
        }
    )
    assert usage.from_ == dt.date(2026, 12, 1) and usage.to == dt.date(2026, 12, 7)
    assert usage.days[0].cost == Decimal("0.001200") and usage.billable_characters == 20


def test_a_job_sends_only_the_fields_set() -> None:
    job = ttsq.Job(text="Hi.", dialect="en-gb", marks=("word",), custom_id="a", speed=1.0)
    assert job.to_json() == {
        "text": "Hi.",
        "dialect": "en-gb",
        "marks": ["word"],
        "custom_id": "a",
        "speed": 1.0,
    }


def test_a_batch_reads_its_counts_and_items() -> None:
    batch = ttsq.Batch.from_json(
        {
            "batch_id": "b",
            "status": "completed",
            "items": 2,
            "counts": {"queued": 0, "succeeded": 1, "failed": 1},
            "concatenate": False,
            "data": [
                {"index": 0, "task_id": "t0", "status": "succeeded", "cache_hit": True},
                {
                    "index": 1,
                    "task_id": "t1",
                    "status": "failed",
                    "cache_hit": False,
                    "error": {"code": "synthesis_failed", "message": "no"},
                },
            ],
        }
    )
    assert batch.is_completed and batch.size == 2 and batch.counts.failed == 1
    assert batch.items[1].error == ttsq.TaskError("synthesis_failed", "no")
    assert batch.next_cursor is None


def test_speech_and_errors_survive_pickling() -> None:
    speech = ttsq.Speech(b"ID3", task_id="t", content_type="audio/mpeg", cache_hit=True)
    again = pickle.loads(pickle.dumps(speech))
    assert again == speech and again.task_id == "t" and again.cache_hit
    error = ttsq.RateLimitError(429, {"status": 429, "detail": "x"}, retry_after=3.0)
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, ttsq.RateLimitError) and copy.retry_after == 3.0
