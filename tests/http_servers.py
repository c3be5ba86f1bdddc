"""Local HTTP servers in a thread for the alert tests: one that records the requests it gets (and answers with the
statuses it is told to, then 200), and one that accepts connections and never answers."""

from __future__ import annotations

import contextlib
import gzip
import json
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_GET(self) -> None:
        self._record()

    def do_POST(self) -> None:
        self._record()

    def _record(self) -> None:
        body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
        if self.headers.get('Content-Encoding') == 'gzip':
            body = gzip.decompress(body)
        status = self.server.next_status()
        self.server.requests.append(Request(self.command, self.path, dict(self.headers.items()), body))
        self.send_response(status)
        self.send_header('Content-Length', '2')
        self.end_headers()
        self.wfile.write(b'{}')

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, statuses: list[int] | None = None) -> None:
        super().__init__(('127.0.0.1', 0), _Handler)
        self.requests: list[Request] = []
        self.statuses = list(statuses or [])
        self._lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.server_address[1]}'

    def next_status(self) -> int:
        with self._lock:
            return self.statuses.pop(0) if self.statuses else 200

    def at(self, path: str) -> list[Request]:
        return [request for request in self.requests if request.path == path]

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class Hanging:
    """Accepts connections, reads nothing and never answers: a client sends its request and waits for ever (until
    its own timeout). Counts the connections it holds."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(('127.0.0.1', 0))
        self.socket.listen(1000)
        self.held: list[socket.socket] = []
        threading.Thread(target=self._hold, daemon=True).start()

    def _hold(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return  # closed
            self.held.append(connection)

    @property
    def url(self) -> str:
        return f'http://127.0.0.1:{self.socket.getsockname()[1]}/hook'

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone does not, on Linux)
        self.socket.close()
        for connection in self.held:
            connection.close()


def sentry_items(requests: list[Request], kind: str = 'check_in') -> list[dict[str, Any]]:
    """The items of ``kind`` in the envelopes a Sentry SDK posted: a header line, then a header and a payload per
    item."""
    items = []
    for request in requests:
        lines = request.body.split(b'\n')[1:]
        for header, payload in zip(lines[::2], lines[1::2]):
            if json.loads(header).get('type') == kind:
                items.append(json.loads(payload))
    return items
