"""A local HTTP server for offline tests, with Range support and per-path fault injection.

GET and HEAD are served; a POST is answered like a GET and its body recorded (an API
endpoint's canned answer).

Files are served from an in-memory dict (:meth:`LocalHTTPServer.add`) or from a directory.
Faults apply to the first ``times`` requests for a path (every request when ``times`` is None):

- ``status``: answer with this status and a short text body (500, 503, 404, ...);
- ``drop_after``: send the headers with the full length, then only this many body bytes, then
  close the connection (a download cut off mid-file);
- ``hold``: answer only once :meth:`LocalHTTPServer.release` is called for the path, or the
  server stops (a server that never answers: the client's timeout fires, however slow the
  machine is);
- ``ignore_range``: answer a Range request with 200 and the whole file;
- ``rate``: send the body at about this many bytes per second (a slow server);
- ``content_length``: announce this Content-Length whatever the body's (a wrong header:
  more than is sent, or less, so that the client stops early);
- ``redirect``: answer 302 with this Location (a redirect loop when it points back).

Per path, always: ``content_type`` (e.g. ``text/html`` for a page where an image was expected)
and extra ``headers`` (e.g. ``{"Retry-After": "2"}``). Every request is recorded in
:attr:`LocalHTTPServer.requests` so tests can assert on what the client asked for;
:meth:`LocalHTTPServer.wait_for` waits (on a condition, not a clock) until a path has seen a
number of requests, for requests the client gave up on before the server read them.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class Request:
    """One request as the server saw it."""

    method: str
    path: str
    range: str | None
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Route:
    """What to serve at one path, and which faults to inject."""

    data: bytes | None  # None: read the file from the server's directory
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    drop_after: int | None = None
    hold: bool = False
    ignore_range: bool = False
    rate: int | None = None
    content_length: int | None = None
    redirect: str | None = None
    times: int | None = None
    served: int = 0
    released: threading.Event = field(default_factory=threading.Event)


class LocalHTTPServer:
    """A threaded HTTP server on 127.0.0.1 with a free port; use as a context manager."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory is not None else None
        self.routes: dict[str, Route] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._seen = threading.Condition(self._lock)
        self._stopped = False
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        # A short poll interval keeps shutdown (once per test) fast.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def add(
        self,
        path: str,
        data: bytes | None = None,
        *,
        content_type: str = "application/octet-stream",
        headers: dict[str, str] | None = None,
        status: int | None = None,
        drop_after: int | None = None,
        hold: bool = False,
        ignore_range: bool = False,
        rate: int | None = None,
        content_length: int | None = None,
        redirect: str | None = None,
        times: int | None = None,
    ) -> str:
        """Serve ``data`` (or the directory's file) at ``path`` with the given faults; return its URL."""
        key = "/" + path.lstrip("/")
        route = Route(
            data=data,
            content_type=content_type,
            headers=dict(headers or {}),
            status=status,
            drop_after=drop_after,
            hold=hold,
            ignore_range=ignore_range,
            rate=rate,
            content_length=content_length,
            redirect=redirect,
            times=times,
        )
        with self._lock:
            self.routes[key] = route
        return self.url(path)

    def requests_for(self, path: str) -> list[Request]:
        key = "/" + path.lstrip("/")
        with self._lock:
            return [r for r in self.requests if r.path == key]

    def wait_for(self, path: str, n: int, timeout: float = 30.0) -> list[Request]:
        """The requests for ``path`` once there are at least ``n`` (``timeout`` only guards
        against a test that would otherwise hang; it is not a speed threshold)."""
        key = "/" + path.lstrip("/")
        with self._seen:
            self._seen.wait_for(
                lambda: sum(r.path == key for r in self.requests) >= n, timeout=timeout
            )
            return [r for r in self.requests if r.path == key]

    def release(self, path: str) -> None:
        """Let held requests for ``path`` (and later ones) be answered."""
        with self._lock:
            route = self.routes.get("/" + path.lstrip("/"))
        if route is not None:
            route.released.set()

    def start(self) -> LocalHTTPServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped = True
        with self._lock:  # wakes handlers holding their answer
            for route in self.routes.values():
                route.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LocalHTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- used by the handler ---------------------------------------------------------------
    def _lookup(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[Route, bool]:
        """Record the request; return its route and whether faults apply to it."""
        with self._lock:
            self.requests.append(Request(method, path, headers.get("Range"), headers, body))
            self._seen.notify_all()
            route = self.routes.get(path)
            if route is None:
                route = Route(data=None)
            faulty = route.times is None or route.served < route.times
            route.served += 1
        return route, faulty

    def _read(self, route: Route, path: str) -> bytes | None:
        if route.data is not None:
            return route.data
        if self.directory is None:
            return None
        root = self.directory.resolve()
        file = (root / path.lstrip("/")).resolve()
        if not file.is_relative_to(root) or not file.is_file():
            return None
        return file.read_bytes()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LocalHTTPServer

    def handle_error(self, request, client_address) -> None:
        # A client that timed out or hung up mid-body is an expected part of these tests.
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def do_POST(self) -> None:  # answered like a GET; the request body is recorded
        self._respond(
            body=True, request_body=self.rfile.read(int(self.headers["Content-Length"] or 0))
        )

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet; requests are recorded instead

    def _respond(self, body: bool, request_body: bytes = b"") -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        headers = dict(self.headers.items())
        route, faulty = owner._lookup(self.command, path, headers, request_body)
        if faulty and route.hold:
            route.released.wait()
            if owner._stopped:
                return
        if faulty and route.redirect is not None:
            self._send_status(302, route, body, {"Location": route.redirect})
            return
        if faulty and route.status is not None:
            self._send_status(route.status, route, body)
            return
        data = owner._read(route, path)
        if data is None:
            self._send_status(404, route, body)
            return

        status, start, end = 200, 0, len(data)
        match = _RANGE.match(self.headers.get("Range", "").strip())
        if match and not (faulty and route.ignore_range):
            parsed = _parse_range(match, len(data))
            if parsed is None:
                self._send_status(416, route, body, {"Content-Range": f"bytes */{len(data)}"})
                return
            status, (start, end) = 206, parsed

        self.send_response(status)
        self.send_header("Content-Type", route.content_type)
        length = route.content_length if faulty and route.content_length is not None else None
        self.send_header("Content-Length", str(end - start if length is None else length))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        for name, value in route.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not body:
            return
        payload = data[start:end]
        if faulty and route.drop_after is not None:
            self.wfile.write(payload[: route.drop_after])
            self.wfile.flush()
            self.close_connection = True  # the client sees EOF before Content-Length bytes
            return
        if faulty and route.rate is not None:
            step = max(1, route.rate // 20)
            for i in range(0, len(payload), step):
                if owner._stopped:
                    return
                self.wfile.write(payload[i : i + step])
                self.wfile.flush()
                time.sleep(0.05)
        elif length is not None and length < len(payload):
            self.wfile.write(payload[:length])
        else:
            self.wfile.write(payload)
        if length is not None and length != len(payload):
            self.close_connection = True

    def _send_status(
        self, status: int, route: Route, body: bool, extra: dict[str, str] | None = None
    ) -> None:
        text = f"{status} {HTTPStatus(status).phrase}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(text)))
        for name, value in {**route.headers, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(text)


def _parse_range(match: re.Match[str], size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) of a single ``bytes=`` range; None if unsatisfiable.

    Anything else (several ranges, other units) does not match and gets the whole file.
    """
    first, last = match.groups()
    if not first:  # suffix range: the last N bytes
        if not last or int(last) == 0:
            return None
        return max(0, size - int(last)), size
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    if start >= size or start >= end:
        return None
    return start, end


@pytest.fixture
def http_server() -> Iterator[LocalHTTPServer]:
    """A running :class:`LocalHTTPServer`, shut down after the test."""
    with LocalHTTPServer() as server:
        yield server
