"""The operator's async client against a small server on loopback: it logs in the way the
kubernetes client's Configuration says, and answers errors as the blocking client does
(an ApiException with the status and the headers a backoff reads)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from kubernetes.client import Configuration
from kubernetes.client.exceptions import ApiException

from kubetune.controller.cluster import AsyncRest, fetch_progress

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append({"headers": dict(request.headers), "query": dict(request.query), "body": await request.text()})
        if request.path.endswith("/slow"):
            await asyncio.sleep(0.4)
        if request.path.endswith("/busy"):
            return web.json_response({"reason": "TooManyRequests"}, status=429, headers={"Retry-After": "2"})
        return web.json_response({"path": request.path, "method": request.method})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


def _configuration(url: str) -> Configuration:
    configuration = Configuration(host=url)
    configuration.api_key = {"authorization": "Bearer secret-token"}
    return configuration


async def test_a_call_sends_json_with_the_login_and_returns_the_answer(
    server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = server
    rest = AsyncRest(_configuration(url))
    try:
        answer = await rest.call("POST", "/api/v1/namespaces/ns/configmaps", {"a": 1}, query=[("dryRun", "All")])
    finally:
        await rest.close()

    assert answer == {"path": "/api/v1/namespaces/ns/configmaps", "method": "POST"}
    headers = {name.lower(): value for name, value in seen[0]["headers"].items()}
    assert headers["authorization"] == "Bearer secret-token"
    assert headers["user-agent"].startswith("kubetune-operator/")
    assert seen[0]["body"] == '{"a": 1}' and seen[0]["query"] == {"dryRun": "All"}


async def test_an_error_answer_is_an_api_exception_with_its_headers(server: tuple[str, list[dict[str, Any]]]) -> None:
    url, _ = server
    rest = AsyncRest(_configuration(url))
    try:
        with pytest.raises(ApiException) as raised:
            await rest.call("GET", "/busy")
    finally:
        await rest.close()

    assert raised.value.status == 429
    assert raised.value.headers is not None and raised.value.headers["Retry-After"] == "2"
    assert "TooManyRequests" in str(raised.value.body)


async def test_progress_that_does_not_answer_is_none(server: tuple[str, list[dict[str, Any]]]) -> None:
    url, _ = server
    rest = AsyncRest(_configuration(url))
    try:
        port = int(url.rsplit(":", 1)[1])
        assert await fetch_progress(rest, "127.0.0.1", port) == {"path": "/progress", "method": "GET"}
        assert await fetch_progress(rest, "127.0.0.1", 1, timeout=1.0) is None
    finally:
        await rest.close()


async def test_the_wait_for_a_connection_is_not_counted_in_a_call_s_timeout(
    server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, _ = server
    rest = AsyncRest(_configuration(url), connections=1)
    rest.timeout = 1.0
    try:
        answers = await asyncio.gather(*(rest.call("GET", "/slow") for _ in range(4)))  # 1.6 s in a row
    finally:
        await rest.close()

    assert len(answers) == 4
