"""The client's own logic (retries, back-off, errors, paging, batch
chunking) against httpx.MockTransport: a scripted HTTP peer, not a
stand-in for ttsq, whose behaviour the live tests check."""

from __future__ import annotations

import json
from typing import Any, Dict, List

import httpx
import pytest

import ttsq
from ttsq import _async_client, _client
from ttsq._base import Call

URL = "http://ttsq.test"
TASK_ID = "0193a0b2-0000-7000-8000-000000000001"


def task_json(status: str = "succeeded", **extra: Any) -> Dict[str, Any]:
    body = {
        "task_id": TASK_ID,
        "status": status,
        "priority": "normal",
        "dialect": "en-gb",
        "voice": "en-gb",
        "format": "mp3",
        "characters": 5,
        "cache_hit": False,
        "attempts": 1,
        "status_url": f"{URL}/v1/tts/jobs/{TASK_ID}",
        "created_at": "2026-12-07T10:00:00.5Z",
    }
    body.update(extra)
    return body


def problem(status: int, **extra: Any) -> Dict[str, Any]:
    return {"type": "urn:ttsq:problem:x", "title": "T", "status": status, "detail": "d", **extra}


class Peer:
    """Answers requests from a script, recording them."""

    def __init__(self, *answers: Any) -> None:
        self.answers: List[Any] = list(answers)
        self.requests: List[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            result: httpx.Response = answer(request)
            return result
        return answer  # type: ignore[no-any-return]


def respond(status: int, body: Any = None, **headers: str) -> httpx.Response:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    if body is None:
        return httpx.Response(status, headers=hdrs)
    if isinstance(body, bytes):
        return httpx.Response(status, content=body, headers=hdrs)
    return httpx.Response(status, json=body, headers=hdrs)


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> List[float]:
    slept: List[float] = []

    async def async_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(_client, "_sleep", slept.append)
    monkeypatch.setattr(_async_client, "_sleep", async_sleep)
    return slept


def make(peer: Peer, **options: Any) -> ttsq.Client:
    http = httpx.Client(transport=httpx.MockTransport(peer))
    return ttsq.Client("key-1", base_url=URL, http_client=http, **options)


def amake(peer: Peer, **options: Any) -> ttsq.AsyncClient:
    http = httpx.AsyncClient(transport=httpx.MockTransport(peer))
    return ttsq.AsyncClient("key-1", base_url=URL, http_client=http, **options)


# --- settings ---------------------------------------------------------------


def test_from_env_reads_the_variables_the_command_line_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TTSQ_URL", "https://tts.example/")
    monkeypatch.setenv("TTSQ_API_KEY", "secret-key")
    client = ttsq.Client.from_env()
    assert client.base_url == "https://tts.example"
    assert "secret-key" not in repr(client)
    client.close()
    monkeypatch.delenv("TTSQ_URL")
    with ttsq.Client.from_env() as client:
        assert client.base_url == ttsq.DEFAULT_URL
    monkeypatch.delenv("TTSQ_API_KEY")
    with pytest.raises(ttsq.TtsqError, match="TTSQ_API_KEY"):
        ttsq.Client.from_env()
    with pytest.raises(ttsq.TtsqError, match="http"):
        ttsq.Client("k", base_url="ftp://x")


def test_every_request_carries_the_key_and_a_user_agent() -> None:
    peer = Peer(respond(200, task_json()))
    make(peer).get(TASK_ID)
    request = peer.requests[0]
    assert request.headers["authorization"] == "Bearer key-1"
    assert request.headers["user-agent"].startswith(f"ttsq-python/{ttsq.__version__}")
    assert request.url == f"{URL}/v1/tts/jobs/{TASK_ID}"


# --- retries ------------------------------------------------------------------


def test_an_idempotent_call_is_retried_on_5xx_429_and_connection_errors(
    pauses: List[float],
) -> None:
    peer = Peer(
        respond(503, problem(503)),
        httpx.ConnectError("refused"),
        respond(500, b"oops"),
        respond(502, b"<html>bad gateway</html>"),
        respond(504, None),
        respond(200, task_json()),
    )
    task = make(peer).get(TASK_ID)
    assert task.id == TASK_ID and len(peer.requests) == 6
    # Back-off doubles from 0.2 s, with jitter of up to half.
    for n, pause in enumerate(pauses):
        assert 0.1 * 2**n <= pause <= 0.2 * 2**n, pauses


def test_retries_stop_after_the_policy_and_raise_what_came_last(pauses: List[float]) -> None:
    peer = Peer(respond(503, problem(503, detail="database down")))
    with pytest.raises(ttsq.ServerError, match="database down") as caught:
        make(peer, retry=ttsq.RetryPolicy(max_retries=2)).get(TASK_ID)
    assert caught.value.status == 503 and len(peer.requests) == 3
    peer = Peer(httpx.ConnectError("refused"))
    with pytest.raises(ttsq.ApiConnectionError, match=r"cannot reach the API at http://ttsq\.test"):
        make(peer, retry=ttsq.RetryPolicy(max_retries=1)).get(TASK_ID)
    assert len(peer.requests) == 2
    peer = Peer(httpx.ReadTimeout("slow"))
    with pytest.raises(ttsq.ApiTimeoutError):
        make(peer, retry=ttsq.NO_RETRIES).get(TASK_ID)


def test_retry_after_is_honoured_and_capped(pauses: List[float]) -> None:
    peer = Peer(
        respond(503, problem(503), retry_after="2"),
        respond(503, problem(503), retry_after="30"),
        respond(429, problem(429), retry_after="3"),
        respond(200, task_json()),
    )
    make(peer).get(TASK_ID)
    assert pauses == [2.0, 5.0, 3.0]


def test_a_429_whose_limit_resets_later_than_the_cap_is_raised_at_once(pauses: List[float]) -> None:
    body = problem(429, code="limit_exceeded", limit="daily_characters", retry_after=3600)
    peer = Peer(respond(429, body, retry_after="3600"))
    with pytest.raises(ttsq.RateLimitError) as caught:
        make(peer).submit("Hello.", "en-gb")
    assert len(peer.requests) == 1 and pauses == []
    error = caught.value
    assert error.retry_after == 3600 and error.code == "limit_exceeded"
    assert error.body["limit"] == "daily_characters"


def test_a_post_without_an_idempotency_key_is_never_retried(pauses: List[float]) -> None:
    peer = Peer(respond(503, problem(503)), httpx.ConnectError("refused"))
    client = make(peer)
    with pytest.raises(ttsq.ServerError):
        client._send(Call("POST", "/v1/tts/jobs", body={}))
    with pytest.raises(ttsq.ApiConnectionError):
        client._send(Call("POST", "/v1/tts/jobs", body={}))
    assert len(peer.requests) == 2 and pauses == []


def test_a_submission_is_retried_under_one_idempotency_key(pauses: List[float]) -> None:
    accepted = {"task_id": TASK_ID, "status": "queued", "status_url": "u"}
    peer = Peer(httpx.ConnectError("refused"), respond(503, problem(503)), respond(202, accepted))
    task = make(peer).submit("Hello.", "en-gb", format="opus", marks=["word"])
    assert task.status == ttsq.TaskStatus.QUEUED and task.characters is None
    keys = {r.headers["idempotency-key"] for r in peer.requests}
    assert len(peer.requests) == 3 and len(keys) == 1
    assert json.loads(peer.requests[0].content) == {
        "text": "Hello.",
        "dialect": "en-gb",
        "format": "opus",
        "marks": ["word"],
    }
    make(Peer(respond(202, accepted))).submit("x", "en-gb", idempotency_key="mine")
    peer = Peer(respond(202, accepted))
    make(peer).submit("x", "en-gb", idempotency_key="mine")
    assert peer.requests[0].headers["idempotency-key"] == "mine"


def test_a_synthesis_the_provider_refused_is_not_retried(pauses: List[float]) -> None:
    body = problem(502, code="synthesis_failed", task_id=TASK_ID)
    peer = Peer(respond(502, body))
    with pytest.raises(ttsq.ServerError) as caught:
        make(peer).synthesize("Hello.", "en-gb")
    assert len(peer.requests) == 1
    assert caught.value.code == "synthesis_failed" and caught.value.task_id == TASK_ID


def test_client_errors_are_not_retried_and_keep_the_problem(pauses: List[float]) -> None:
    body = problem(400, errors=[{"field": "speed", "reason": "must be between 0.5 and 2"}])
    peer = Peer(respond(400, body, content_type="application/problem+json"))
    with pytest.raises(ttsq.BadRequestError) as caught:
        make(peer).get(TASK_ID)
    assert len(peer.requests) == 1
    error = caught.value
    assert error.type == "urn:ttsq:problem:x" and error.title == "T" and error.detail == "d"
    assert error.errors == [ttsq.FieldError("speed", "must be between 0.5 and 2")]
    assert str(error) == "400 T: d"


@pytest.mark.parametrize(
    "status,cls",
    [
        (401, ttsq.AuthenticationError),
        (403, ttsq.PermissionDeniedError),
        (404, ttsq.NotFoundError),
        (409, ttsq.ConflictError),
        (413, ttsq.ApiError),
        (422, ttsq.UnprocessableEntityError),
    ],
)
def test_each_status_has_its_error(status: int, cls: type, pauses: List[float]) -> None:
    with pytest.raises(cls) as caught:
        make(Peer(respond(status, problem(status)))).cancel(TASK_ID)
    assert caught.value.status == status  # type: ignore[attr-defined]


def test_a_body_that_is_no_problem_becomes_one_from_the_status(pauses: List[float]) -> None:
    peer = Peer(respond(404, b"<html>Not Found</html>"))
    with pytest.raises(ttsq.NotFoundError) as caught:
        make(peer).get(TASK_ID)
    assert caught.value.type == "about:blank"
    assert caught.value.title == "Not Found" and "Not Found" in caught.value.detail
    with pytest.raises(ttsq.UnexpectedResponseError):
        make(Peer(respond(200, b"not json"))).get(TASK_ID)


async def test_the_async_client_retries_the_same_way(pauses: List[float]) -> None:
    peer = Peer(
        httpx.ConnectError("refused"),
        respond(503, problem(503), retry_after="1"),
        respond(200, task_json()),
    )
    async with amake(peer) as client:
        task = await client.get(TASK_ID)
    assert task.succeeded and len(peer.requests) == 3 and pauses[1] == 1.0
    peer = Peer(respond(429, problem(429), retry_after="600"))
    with pytest.raises(ttsq.RateLimitError):
        await amake(peer).get(TASK_ID)


# --- long-poll, paging, synthesis -------------------------------------------


def test_wait_long_polls_in_slices_until_the_task_is_terminal(pauses: List[float]) -> None:
    peer = Peer(
        respond(200, task_json("queued")),
        respond(200, task_json("processing")),
        respond(200, task_json()),
    )
    task = make(peer).wait(TASK_ID, timeout=100)
    assert task.succeeded
    assert [r.url.params["wait"] for r in peer.requests] == ["20", "20", "20"]


def test_wait_gives_up_after_its_timeout_with_the_task_as_last_read(
    pauses: List[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [0.0]

    def answer(request: httpx.Request) -> httpx.Response:
        now[0] += float(request.url.params["wait"])  # the server waits as long as asked
        return respond(200, task_json("queued"))

    monkeypatch.setattr(_client.time, "monotonic", lambda: now[0])
    peer = Peer(answer)
    with pytest.raises(ttsq.WaitTimeoutError) as caught:
        make(peer).wait(TASK_ID, timeout=45)
    assert [r.url.params["wait"] for r in peer.requests] == ["20", "20", "5"]
    assert caught.value.last.status == "queued"


def test_list_tasks_follows_the_cursor_lazily() -> None:
    def page(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        if cursor is None:
            return respond(200, {"jobs": [task_json(), task_json()], "next_cursor": "c2"})
        return respond(200, {"jobs": [task_json("failed", error={"code": "x", "message": "y"})]})

    peer = Peer(page)
    tasks = make(peer).list_tasks(status="failed", page_size=2)
    assert peer.requests == []
    listed = list(tasks)
    assert len(listed) == 3 and listed[2].error == ttsq.TaskError("x", "y")
    assert [dict(r.url.params) for r in peer.requests] == [
        {"status": "failed", "limit": "2"},
        {"status": "failed", "limit": "2", "cursor": "c2"},
    ]


def test_synthesize_returns_the_audio_with_its_task() -> None:
    peer = Peer(
        respond(200, b"ID3audio", content_type="audio/mpeg", x_task_id=TASK_ID, x_cache="hit")
    )
    speech = make(peer).synthesize("Hi.", "en-gb", voice="v", speed=1.5)
    assert speech == b"ID3audio" and isinstance(speech, bytes)
    assert (speech.task_id, speech.content_type, speech.cache_hit) == (TASK_ID, "audio/mpeg", True)
    body = json.loads(peer.requests[0].content)
    assert body == {
        "text": "Hi.",
        "dialect": "en-gb",
        "voice": "v",
        "speed": 1.5,
        "priority": "high",
    }
    assert peer.requests[0].headers["accept"] == "audio/*"


def test_a_retried_synthesis_still_running_is_waited_for(pauses: List[float]) -> None:
    peer = Peer(
        respond(202, task_json("processing")),
        respond(200, task_json("succeeded", cache_hit=True)),
        respond(200, b"RIFF", content_type="audio/wav"),
    )
    speech = make(peer).synthesize("Hi.", "en-gb", format="wav")
    assert speech == b"RIFF" and speech.content_type == "audio/wav" and speech.cache_hit
    assert peer.requests[2].url.params["inline"] == "1"


# --- batches ----------------------------------------------------------------


class BatchPeer:
    """Accepts batches and answers them completed, every item succeeded."""

    def __init__(self) -> None:
        self.batches: Dict[str, List[Dict[str, Any]]] = {}
        self.keys: List[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            items = json.loads(request.content)["items"]
            batch_id = f"b{len(self.batches)}"
            self.batches[batch_id] = items
            self.keys.append(request.headers["idempotency-key"])
            return respond(
                202, {"batch_id": batch_id, "status": "running", "task_ids": [], "status_url": ""}
            )
        batch_id = request.url.path.rsplit("/", 1)[1]
        items = self.batches[batch_id]
        start = int(request.url.params.get("cursor", "0"))
        limit = int(request.url.params.get("limit", "100"))
        page = [
            {
                "index": i,
                "task_id": f"{batch_id}-{i}",
                "custom_id": items[i].get("custom_id"),
                "status": "succeeded",
                "cache_hit": False,
            }
            for i in range(start, min(start + limit, len(items)))
        ]
        body = {
            "batch_id": batch_id,
            "status": "completed",
            "items": len(items),
            "counts": {"succeeded": len(items)},
            "concatenate": False,
            "data": page,
        }
        if start + limit < len(items):
            body["next_cursor"] = str(start + limit)
        return respond(200, body)


def test_run_batch_splits_into_batches_of_1000_and_returns_every_item_in_order(
    pauses: List[float],
) -> None:
    peer = BatchPeer()
    jobs = [
        ttsq.Job(text=f"Line {n}.", dialect="en-gb", custom_id=f"line-{n}") for n in range(2345)
    ]
    result = make(Peer(peer)).run_batch(jobs, idempotency_key="book-7")
    assert [len(items) for items in peer.batches.values()] == [1000, 1000, 345]
    assert peer.keys == ["book-7.0", "book-7.1", "book-7.2"]
    assert [i.index for i in result.items] == list(range(2345))
    assert [i.custom_id for i in result.items] == [f"line-{n}" for n in range(2345)]
    assert len(result.batches) == 3 and len(result.succeeded) == 2345 and result.failed == []


async def test_async_run_batch_takes_mappings_and_waits_for_all_batches(
    pauses: List[float],
) -> None:
    peer = BatchPeer()
    jobs = [{"text": f"Line {n}.", "dialect": "en-gb"} for n in range(1001)]
    async with amake(Peer(peer)) as client:
        result = await client.run_batch(jobs)
    assert [len(items) for items in peer.batches.values()] == [1000, 1]
    assert [i.index for i in result.items] == list(range(1001))


def test_submit_batch_refuses_more_than_1000_jobs_before_sending() -> None:
    peer = Peer(respond(500, None))
    client = make(peer)
    with pytest.raises(ValueError, match="run_batch"):
        client.submit_batch([{"text": "x", "dialect": "en-gb"}] * 1001)
    with pytest.raises(ValueError):
        client.submit_batch([])
    assert peer.requests == []


def test_retries_are_logged_without_the_key(
    pauses: List[float], caplog: pytest.LogCaptureFixture
) -> None:
    peer = Peer(respond(503, problem(503)), respond(200, task_json()))
    with caplog.at_level("DEBUG", logger="ttsq"):
        make(peer).get(TASK_ID)
    assert "retrying GET /v1/tts/jobs/" in caplog.text and "HTTP 503" in caplog.text
    assert "key-1" not in caplog.text
