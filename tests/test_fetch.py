"""Downloads as a user sees them: complete files, resumed transfers, retries and clear failures."""

from __future__ import annotations

import hashlib
import os

import pytest
import requests

from pipeline.io.fetch import FetchError, FetchResult, fetch
from pipeline.io.http import HttpClient
from tests.httpserver import LocalHTTPServer

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
CUT = 123_457  # where a dropped connection stops the body


def get(url: str, dest, **kwargs) -> FetchResult:
    """``fetch`` with test defaults: no waiting between attempts, small chunks, no bar, and a
    timeout no healthy local answer comes near (timeouts are tested with a server that holds
    its answer)."""
    kwargs = {"backoff": 0, "timeout": 30.0, "progress": False, "chunk_size": 16_384} | kwargs
    return fetch(url, dest, **kwargs)


def assert_complete(result: FetchResult, dest) -> None:
    assert result.path == dest
    assert dest.read_bytes() == DATA
    assert (result.size, result.sha256) == (len(DATA), SHA)
    assert not part_of(dest).exists()


def part_of(dest):
    return dest.with_name(dest.name + ".part")


def ranges(server: LocalHTTPServer, path: str) -> list[str | None]:
    return [r.range for r in server.requests_for(path)]


def test_plain_download(http_server: LocalHTTPServer, tmp_path):
    url = http_server.add("/data.bin", DATA)
    dest = tmp_path / "sub" / "data.bin"
    result = get(url, dest, expected_sha256=SHA.upper())
    assert_complete(result, dest)
    assert (result.url, result.attempts, result.resumed) == (url, 1, False)
    assert ranges(http_server, "/data.bin") == [None]


def test_dropped_connection_is_resumed_with_range(http_server: LocalHTTPServer, tmp_path):
    url = http_server.add("/data.bin", DATA, drop_after=CUT, times=1)
    dest = tmp_path / "data.bin"
    result = get(url, dest, expected_sha256=SHA)
    assert_complete(result, dest)
    assert (result.attempts, result.resumed) == (2, True)
    assert ranges(http_server, "/data.bin") == [None, f"bytes={CUT}-"]


def test_interrupted_run_leaves_part_and_next_run_resumes(http_server: LocalHTTPServer, tmp_path):
    url = http_server.add("/data.bin", DATA, drop_after=CUT, times=1)
    dest = tmp_path / "data.bin"
    with pytest.raises(FetchError, match="1 attempt"):
        get(url, dest, retries=0)
    assert not dest.exists()
    assert part_of(dest).read_bytes() == DATA[:CUT]

    result = get(url, dest, expected_sha256=SHA)
    assert_complete(result, dest)
    assert (result.attempts, result.resumed) == (1, True)
    assert ranges(http_server, "/data.bin") == [None, f"bytes={CUT}-"]


def test_part_holding_the_whole_file_is_finished(http_server: LocalHTTPServer, tmp_path):
    url = http_server.add("/data.bin", DATA)
    dest = tmp_path / "data.bin"
    part_of(dest).write_bytes(DATA)  # a run killed between the last byte and the rename
    result = get(url, dest)
    assert_complete(result, dest)
    assert ranges(http_server, "/data.bin") == [f"bytes={len(DATA)}-"]  # answered 416


def test_part_longer_than_the_file_starts_over(http_server: LocalHTTPServer, tmp_path):
    url = http_server.add("/data.bin", DATA)
    dest = tmp_path / "data.bin"
    part_of(dest).write_bytes(b"x" * (len(DATA) + 10))
    result = get(url, dest)
    assert_complete(result, dest)
    assert result.resumed is False


def test_server_ignoring_range_gives_correct_file(http_server: LocalHTTPServer, tmp_path):
    url = http_server.add("/data.bin", DATA, ignore_range=True)
    dest = tmp_path / "data.bin"
    part_of(dest).write_bytes(b"stale bytes that must not survive")
    result = get(url, dest, expected_sha256=SHA)
    assert_complete(result, dest)
    assert result.resumed is False
    assert ranges(http_server, "/data.bin") == ["bytes=33-"]


def test_server_error_then_success_is_retried(http_server: LocalHTTPServer, tmp_path):
    url = http_server.add("/data.bin", DATA, status=500, times=1)
    result = get(url, tmp_path / "data.bin")
    assert_complete(result, tmp_path / "data.bin")
    assert result.attempts == 2


def test_retries_back_off_exponentially_and_honour_retry_after(
    http_server: LocalHTTPServer, tmp_path
):
    waits: list[float] = []  # the injected clock: nothing sleeps
    url = http_server.add("/busy", DATA, status=503, times=5)
    with pytest.raises(FetchError) as err:
        get(url, tmp_path / "busy", retries=4, backoff=10, sleep=waits.append)
    assert waits == [10, 20, 40, 60]  # doubling, capped at 60 s
    assert str(err.value) == f"HTTP 503 Service Unavailable for {url} (5 attempts)"

    waits.clear()
    url = http_server.add("/limited", DATA, status=429, headers={"Retry-After": "7"}, times=1)
    result = get(url, tmp_path / "limited", backoff=10, sleep=waits.append)
    assert waits == [7]
    assert result.attempts == 2


def test_persistent_server_error_fails_after_all_attempts(
    http_server: LocalHTTPServer, tmp_path, caplog
):
    url = http_server.add("/data.bin", DATA, status=500)
    dest = tmp_path / "data.bin"
    with caplog.at_level("WARNING", logger="pipeline.io.http"), pytest.raises(FetchError) as err:
        get(url, dest, retries=3)
    assert err.value.attempts == 4
    assert str(err.value) == f"HTTP 500 Internal Server Error for {url} (4 attempts)"
    assert len(http_server.requests_for("/data.bin")) == 4
    assert "attempt 3 of 4 failed (HTTP 500 Internal Server Error)" in caplog.text
    assert not dest.exists()


def test_not_found_fails_at_once(http_server: LocalHTTPServer, tmp_path):
    url = http_server.url("/missing.bin")
    dest = tmp_path / "missing.bin"
    with pytest.raises(FetchError) as err:
        get(url, dest, retries=5)
    assert str(err.value) == f"HTTP 404 Not Found for {url} (1 attempt)"
    assert len(http_server.requests_for("/missing.bin")) == 1
    assert not dest.exists()


def test_read_timeout_is_retried(http_server: LocalHTTPServer, tmp_path, monkeypatch):
    url = http_server.add("/slow.bin", DATA)
    real_get = HttpClient.get
    calls = []

    def first_times_out(self, url, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            raise requests.ReadTimeout("read timed out")
        return real_get(self, url, **kwargs)

    monkeypatch.setattr(HttpClient, "get", first_times_out)
    result = get(url, tmp_path / "slow.bin")
    assert_complete(result, tmp_path / "slow.bin")
    assert result.attempts == 2
    assert len(calls) == 2 and ranges(http_server, "/slow.bin") == [None]


def test_a_server_that_never_answers_times_out_on_every_attempt(
    http_server: LocalHTTPServer, tmp_path
):
    # The server holds its answer until the test ends: the client's timeout fires every time,
    # however loaded the machine is.
    url = http_server.add("/stuck.bin", DATA, hold=True)
    dest = tmp_path / "stuck.bin"
    with pytest.raises(FetchError) as err:
        get(url, dest, timeout=0.05, retries=1)
    assert str(err.value) == f"timed out after 0.05 s, 0 bytes on disk for {url} (2 attempts)"
    assert err.value.attempts == 2
    assert len(http_server.wait_for("/stuck.bin", 2)) == 2
    assert not dest.exists()


def test_wrong_checksum_fails_and_leaves_nothing(http_server: LocalHTTPServer, tmp_path):
    url = http_server.add("/data.bin", DATA)
    dest = tmp_path / "data.bin"
    wrong = "0" * 64
    with pytest.raises(FetchError) as err:
        get(url, dest, expected_sha256=wrong)
    assert f"expected {wrong}, got {SHA}" in str(err.value)
    assert url in str(err.value)
    assert not dest.exists()
    assert not part_of(dest).exists()


def test_file_url_and_local_path_are_copied(tmp_path):
    src = tmp_path / "mirror dir" / "data.bin"
    src.parent.mkdir()
    src.write_bytes(DATA)
    for url, name in [(src.as_uri(), "from_url.bin"), (str(src), "from_path.bin")]:
        result = get(url, tmp_path / name, expected_sha256=SHA)
        assert_complete(result, tmp_path / name)
        assert (result.url, result.attempts, result.resumed) == (url, 1, False)


def test_missing_local_file_fails_clearly(tmp_path):
    src = tmp_path / "nowhere.bin"
    dest = tmp_path / "data.bin"
    with pytest.raises(FetchError, match=f"cannot read {src}: No such file"):
        get(src.as_uri(), dest)
    assert not dest.exists()
    assert not part_of(dest).exists()


def test_unsupported_scheme_fails_clearly(tmp_path):
    with pytest.raises(FetchError, match="unsupported URL scheme 'ftp'"):
        get("ftp://example.org/data.bin", tmp_path / "data.bin")
