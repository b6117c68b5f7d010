"""A model server on 127.0.0.1 (started per test) serving the demo model's files, and a fresh cache per test.

The handler counts requests per file and can misbehave on demand: cut a transfer half way (a declared
``Content-Length``, half the bytes, then the connection closed), serve a corrupted copy (same size, one
byte changed), hold a file back until a second client shows up. Nothing here touches the network beyond
127.0.0.1.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import scgpt
from scgpt.model._resolve import clear_cache
from scgpt.model._scgpt import _demo_path

NAME = "hubtest_model"
FILES = ("args.json", "vocab.json", "best_model.pt")


class ModelServer:
    """Files over HTTP from 127.0.0.1, with a request counter and switches for failures."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.requests: Counter[str] = Counter()
        self.truncate: Counter[str] = Counter()  # file -> how many more responses to cut half way
        self.corrupt: set[str] = set()
        self.hold: tuple[str, str, float] | None = None  # (file held, file whose 2nd request releases it, timeout)
        self._second = threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                name = self.path.lstrip("/").split("?")[0]
                with server._lock:
                    server.requests[name] += 1
                    cut = server.truncate[name] > 0
                    if cut:
                        server.truncate[name] -= 1
                    if server.hold and name == server.hold[1] and server.requests[name] >= 2:
                        server._second.set()
                if name not in server.files:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if server.hold and name == server.hold[0]:
                    server._second.wait(server.hold[2])
                body = server.files[name]
                if name in server.corrupt:
                    mid = len(body) // 2
                    body = body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1 :]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.running = False


@pytest.fixture(scope="session")
def demo_files() -> dict[str, bytes]:
    """The bytes of the bundled demo model's files (the test model is made of them)."""
    return {f: (_demo_path() / f).read_bytes() for f in FILES}


@pytest.fixture(scope="session")
def demo_hashes(demo_files) -> dict[str, tuple[str, int]]:
    return {f: (hashlib.sha256(b).hexdigest(), len(b)) for f, b in demo_files.items()}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty cache and no offline switch (whatever the environment says)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("SCGPT_CACHE", str(folder))
    for key in ("SCGPT_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(scgpt.settings, "_cache_dir", None)
    monkeypatch.setattr(scgpt.settings, "_offline", None)
    monkeypatch.setattr("scgpt.hub._download.RETRY_WAIT", 0.0)
    clear_cache()
    yield folder
    clear_cache()


@pytest.fixture
def server(demo_files):
    s = ModelServer(demo_files)
    yield s
    s.stop()


@pytest.fixture
def registered(server, demo_hashes, cache):
    """The test model, registered with its files' published SHA-256 and sizes, served by ``server``."""
    scgpt.hub.register(NAME, files=demo_hashes, urls=server.url + "/{file}", description="test model", overwrite=True)
    yield NAME
    scgpt.hub.unregister(NAME)


@pytest.fixture
def log_lines():
    """Messages of the 'scgpt' logger during the test (it does not propagate to pytest's capture)."""
    lines: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = ListHandler(level=logging.DEBUG)
    logger = logging.getLogger("scgpt")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)
