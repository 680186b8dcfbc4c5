"""Fixtures: clients of a live ttsq for the live tests, which are skipped
only when ``TTSQ_URL`` and ``TTSQ_API_KEY`` are not set. The Rust
integration test ``python_sdk`` (``deploy/local/test.sh``) starts a stack
and sets them, so there they always run."""

from __future__ import annotations

import os
from typing import AsyncIterator, Iterator

import pytest

import ttsq


def _live_settings() -> tuple[str, str]:
    url, key = os.environ.get("TTSQ_URL"), os.environ.get("TTSQ_API_KEY")
    if not url or not key:
        pytest.skip("no live ttsq: set TTSQ_URL and TTSQ_API_KEY (deploy/local/test.sh does)")
    return url, key


@pytest.fixture
def live_url() -> str:
    return _live_settings()[0]


@pytest.fixture
def client() -> Iterator[ttsq.Client]:
    _live_settings()
    with ttsq.Client.from_env() as client:
        yield client


@pytest.fixture
async def aclient() -> AsyncIterator[ttsq.AsyncClient]:
    _live_settings()
    async with ttsq.AsyncClient.from_env() as client:
        yield client
