"""Network faults against a local HTTP server on 127.0.0.1 started by each test.

Slow answers, dropped connections, wrong Content-Length, 404, 429 with Retry-After, 500, a
redirect loop and a server that stops mid-file: retries are bounded, the final error names the
URL, the attempts and the reason, no partial file is promoted, and a resumed download is
verified by its checksum. Waits between attempts go through an injected ``sleep`` (no test
waits on a real clock for backoff).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import random

import pytest

from pipeline.io.fetch import FetchError, fetch
from tests.faults import record
from tests.httpserver import LocalHTTPServer

SEED = 13
DATA = gzip.compress(random.Random(SEED).randbytes(400_000), mtime=0)  # a valid gzip file
SHA = hashlib.sha256(DATA).hexdigest()
DIGEST = {"Repr-Digest": f"sha-256=:{base64.b64encode(bytes.fromhex(SHA)).decode()}:"}


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def get(url: str, dest, **kw):
    kw = {"retries": 3, "backoff": 0.5, "timeout": 30.0, "progress": False, "chunk_size": 8192} | kw
    return fetch(url, dest, **kw)


def part(dest):
    return dest.with_name(dest.name + ".part")


def nothing_promoted(dest) -> bool:
    return not dest.exists()


def test_a_slow_server_within_the_timeout_completes(http_server, tmp_path):
    url = http_server.add("slow.gz", DATA, rate=2_000_000, headers=DIGEST)
    result = get(url, tmp_path / "slow.gz", timeout=5.0)
    assert result.sha256 == SHA and result.attempts == 1
    record("slow server (2 MB/s)", times=1, outcome="completed, sha256 verified", lost="none")


def test_a_server_that_never_answers_times_out_each_attempt_and_fails_clearly(
    http_server, tmp_path
):
    url = http_server.add("hang.gz", DATA, hold=True)
    sleeps = Sleeps()
    with pytest.raises(FetchError, match=r"timed out after 0\.5 s.* for .*hang\.gz \(3 attempts\)"):
        get(url, tmp_path / "hang.gz", timeout=0.5, retries=2, sleep=sleeps)
    assert sleeps == [0.5, 1.0] and nothing_promoted(tmp_path / "hang.gz")
    record(
        "server that never answers",
        times=3,
        outcome="3 attempts, then a one-line error naming the URL",
        lost="none",
    )


@pytest.mark.parametrize("cut", [1, 100_000, len(DATA) - 1])
def test_dropped_connections_resume_and_the_result_is_verified(http_server, tmp_path, cut):
    url = http_server.add("drop.gz", DATA, drop_after=cut, times=2, headers=DIGEST)
    result = get(url, tmp_path / "drop.gz", sleep=Sleeps())
    assert (tmp_path / "drop.gz").read_bytes() == DATA and result.resumed
    offsets, done = [0], 0
    for _ in range(2):  # two answers cut after `cut` bytes, then a whole one
        done += min(cut, len(DATA) - done)
        if done == len(DATA):
            break
        offsets.append(done)
    expected = [None] + [f"bytes={o}-" for o in offsets[1:]]
    assert [r.range for r in http_server.requests_for("drop.gz")] == expected
    record(
        "connection dropped mid-body",
        times=2,
        outcome="resumed with Range, sha256 verified",
        lost="none",
    )


def test_a_content_length_larger_than_the_body_is_retried_and_resumed(http_server, tmp_path):
    url = http_server.add("long.gz", DATA, content_length=len(DATA) + 1000, times=1)
    result = get(url, tmp_path / "long.gz", sleep=Sleeps())
    assert result.sha256 == SHA and result.attempts == 2
    record(
        "Content-Length larger than the body", times=1, outcome="retried, completed", lost="none"
    )


def test_a_content_length_smaller_than_the_file_is_caught_by_the_checksum(http_server, tmp_path):
    """The client reads what the header announces: a short file, refused by the published
    sha256 (a gzip file is also refused by its missing end marker)."""
    url = http_server.add("short.bin", DATA, content_length=len(DATA) // 2, headers=DIGEST)
    with pytest.raises(FetchError, match=r"sha256 mismatch.*short\.bin"):
        get(url, tmp_path / "short.bin", sleep=Sleeps())
    assert nothing_promoted(tmp_path / "short.bin") and not part(tmp_path / "short.bin").exists()
    record(
        "Content-Length smaller than the file",
        times=1,
        outcome="refused by the sha256; nothing kept",
        lost="none",
    )


def test_404_fails_at_once(http_server, tmp_path):
    sleeps = Sleeps()
    with pytest.raises(FetchError, match=r"HTTP 404 Not Found for .*missing\.gz \(1 attempt\)"):
        get(http_server.url("missing.gz"), tmp_path / "missing.gz", sleep=sleeps)
    assert sleeps == [] and nothing_promoted(tmp_path / "missing.gz")
    record("HTTP 404", times=1, outcome="one attempt, a one-line error", lost="none")


def test_429_waits_what_retry_after_asks(http_server, tmp_path):
    url = http_server.add("busy.gz", DATA, status=429, headers={"Retry-After": "7"}, times=2)
    sleeps = Sleeps()
    result = get(url, tmp_path / "busy.gz", sleep=sleeps)
    assert sleeps == [7.0, 7.0] and result.attempts == 3 and result.sha256 == SHA
    record("HTTP 429 with Retry-After", times=2, outcome="waited as asked, completed", lost="none")


def test_500_is_retried_a_bounded_number_of_times(http_server, tmp_path):
    url = http_server.add("broken.gz", DATA, status=500)
    sleeps = Sleeps()
    with pytest.raises(FetchError, match=r"HTTP 500 .* \(4 attempts\)"):
        get(url, tmp_path / "broken.gz", sleep=sleeps)
    assert sleeps == [0.5, 1.0, 2.0] and len(http_server.requests_for("broken.gz")) == 4
    assert nothing_promoted(tmp_path / "broken.gz")
    record(
        "HTTP 500", times=4, outcome="4 attempts with backoff, then a one-line error", lost="none"
    )


def test_a_redirect_loop_fails_clearly(http_server, tmp_path):
    a = http_server.add("a.gz", None, redirect="/b.gz")
    http_server.add("b.gz", None, redirect="/a.gz")
    with pytest.raises(FetchError, match=r"TooManyRedirects.* for .*a\.gz \(1 attempt\)"):
        get(a, tmp_path / "a.gz", sleep=Sleeps())
    assert nothing_promoted(tmp_path / "a.gz")
    record(
        "redirect loop",
        times=1,
        outcome="stopped after 30 redirects, a one-line error",
        lost="none",
    )


def test_a_server_that_stops_mid_file_leaves_a_part_that_another_mirror_completes(tmp_path):
    dest = tmp_path / "data.gz"
    with LocalHTTPServer() as server:
        url = server.add("data.gz", DATA, drop_after=150_000)
        with pytest.raises(FetchError):
            get(url, dest, retries=1, sleep=Sleeps())
        assert part(dest).stat().st_size == 300_000 and nothing_promoted(dest)
    # The server is gone: connection refused, every attempt.
    with pytest.raises(FetchError, match=r"\(2 attempts\)"):
        get(url, dest, retries=1, sleep=Sleeps())
    with LocalHTTPServer() as mirror:
        result = get(mirror.add("data.gz", DATA, headers=DIGEST), dest, sleep=Sleeps())
        assert result.resumed and [r.range for r in mirror.requests] == ["bytes=300000-"]
    assert dest.read_bytes() == DATA
    record(
        "server stops mid-file (then gone)",
        times=3,
        outcome="part kept; another mirror resumed it, sha256 verified",
        lost="none",
    )


def test_a_resumed_part_of_another_file_is_caught_and_fetched_again(http_server, tmp_path):
    """The part on disk came from an older version of the file: the published checksum
    fails, the file is fetched once more from its first byte."""
    dest = tmp_path / "changed.gz"
    part(dest).write_bytes(b"\x1f\x8b" + bytes(99_998))
    url = http_server.add("changed.gz", DATA, headers=DIGEST)
    result = get(url, dest, sleep=Sleeps())
    assert dest.read_bytes() == DATA and result.sha256 == SHA
    assert [r.range for r in http_server.requests_for("changed.gz")] == ["bytes=100000-", None]
    record(
        "resumed part of another file",
        times=1,
        outcome="checksum failed, fetched again from byte 0",
        lost="none",
    )
