"""The one HTTP client: a ``requests`` session per thread, a timeout, retries with backoff.

Source downloads (:mod:`pipeline.io.fetch`), item images (:mod:`pipeline.features.image_fetch`)
and an OpenAI-compatible LLM endpoint (:mod:`pipeline.features.encoders.llm`) all go through
:class:`HttpClient`. The caller hands :meth:`HttpClient.run` one *attempt*, a function that
makes the request and reads the answer. The attempt returns a result, raises :class:`Retry`
for a failure that another attempt may fix, or :class:`Fail` for one it cannot. A transport
error (a refused or dropped connection, a timeout, a body cut off mid-stream) counts as a
:class:`Retry`. Between attempts the client waits ``backoff * 2**n`` seconds, or what the
server asked for in ``Retry-After``, at most ``max_backoff``. When no attempt is left, or on
:class:`Fail`, it raises :class:`Failed` with the last reason and the number of attempts.

Why not urllib3's ``Retry`` on the session's adapter: it repeats the request but not a body
read that breaks off mid-stream (the usual failure of a long download), it cannot resume from
the bytes already on disk, and it does not say how many attempts a download took.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import requests
import urllib3

log = logging.getLogger(__name__)

T = TypeVar("T")

# Transport failures worth another attempt; urllib3's errors surface from the raw body stream.
TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
)


class Retry(Exception):
    """A failure another attempt may fix. ``delay``: the server's Retry-After in seconds;
    ``result``: what the attempt would report if it stays the last one."""

    def __init__(self, reason: str, *, delay: float | None = None, result: Any = None):
        super().__init__(reason)
        self.reason, self.delay, self.result = reason, delay, result


class Fail(Exception):
    """A failure that another attempt would not fix (404, a bad URL, a wrong Range answer)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Failed(Exception):
    """:meth:`HttpClient.run` gave up: the last ``reason``, the ``attempts`` made, whether the
    last failure was ``transient`` (all retries spent), and the last attempt's ``result``."""

    def __init__(self, reason: str, attempts: int, *, transient: bool, result: Any = None):
        super().__init__(reason)
        self.reason, self.attempts, self.transient, self.result = (
            reason,
            attempts,
            transient,
            result,
        )


class HttpClient:
    """Retrying HTTP with one session per thread; safe to share between threads."""

    def __init__(
        self,
        *,
        timeout: float,
        retries: int = 0,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], Any] = time.sleep,
        retry_log_level: int = logging.WARNING,
    ):
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.headers = dict(headers or {})
        self.sleep = sleep  # injected by tests: no test waits on a real clock
        self.retry_log_level = retry_log_level
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ sessions
    def session(self) -> requests.Session:
        """This thread's session (connections are reused between its requests)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(self.headers)
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self.session().get(url, timeout=self.timeout, **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        return self.session().post(url, timeout=self.timeout, **kwargs)

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()
        self._local = threading.local()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ attempts
    def delay(self, attempt: int, asked: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based)."""
        wait = asked if asked is not None else self.backoff * 2**attempt
        return min(wait, self.max_backoff)

    def run(self, url: str, attempt: Callable[[], T]) -> tuple[T, int]:
        """``(attempt's result, attempts made)``; raises :class:`Failed` when it gives up.

        Exceptions other than transport errors, :class:`Retry` and :class:`Fail` propagate.
        """
        total = self.retries + 1
        for n in range(total):
            try:
                return attempt(), n + 1
            except Fail as exc:
                raise Failed(exc.reason, n + 1, transient=False) from exc.__cause__
            except Retry as exc:
                failure, cause = exc, exc.__cause__
            except TRANSIENT as exc:
                failure, cause = Retry(describe(exc, self.timeout)), exc
            if n + 1 == total:
                raise Failed(
                    failure.reason, total, transient=True, result=failure.result
                ) from cause
            wait = self.delay(n, failure.delay)
            log.log(
                self.retry_log_level,
                "%s: attempt %d of %d failed (%s); retrying in %.1f s",
                url,
                n + 1,
                total,
                failure.reason,
                wait,
            )
            self.sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises


# --------------------------------------------------------------------------- answers
def transient_status(code: int) -> bool:
    """Server errors, request timeouts and rate limits: worth another attempt."""
    return code >= 500 or code in (408, 429)


def status_reason(resp: requests.Response) -> str:
    return f"HTTP {resp.status_code} {resp.reason or ''}".strip()


def retry_for(resp: requests.Response, result: Any = None) -> Retry:
    """The :class:`Retry` of a transient status, with the server's Retry-After."""
    delay = retry_after(resp.headers.get("Retry-After"))
    return Retry(status_reason(resp), delay=delay, result=result)


def retry_after(value: str | None) -> float | None:
    """Seconds from a numeric Retry-After header (the HTTP-date form falls back to backoff)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def is_timeout(exc: BaseException | None) -> bool:
    # requests wraps a read timeout inside the body stream as a ConnectionError.
    while exc is not None:
        if isinstance(exc, requests.Timeout | urllib3.exceptions.TimeoutError | TimeoutError):
            return True
        if any(isinstance(a, urllib3.exceptions.TimeoutError) for a in getattr(exc, "args", ())):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def describe(exc: BaseException, timeout: float) -> str:
    """A short reason for a transport error (urllib3's messages repeat themselves at length)."""
    if is_timeout(exc):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | urllib3.exceptions.ProtocolError):
        return "connection dropped mid-body"
    return short(f"{type(exc).__name__}: {exc}")


def short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
