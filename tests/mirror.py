"""A real HTTP server on 127.0.0.1 serving census zips like INEP's, with injectable faults."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Faults:
    drop_rate: float = 0.0  # share of GET bodies cut off mid-transfer
    fail_first: int = 0  # 503 answers before the first success, per path
    fail_rate: float = 0.0  # share of further requests answered 503
    retry_after: str | None = "0"
    chunk_delay_s: float = 0.0  # sleep between 8 KiB chunks (slow server)
    lie_length_by: int = 0  # announce this many more bytes than sent, then close
    ignore_range: bool = False
    hang_paths: tuple = ()  # paths the server never answers (it sleeps hang_s, then closes)
    hang_s: float = 30.0


@dataclass
class MirrorState:
    files: dict[str, bytes] = field(default_factory=dict)  # URL path -> content
    listing_path: str = "/censo-escolar"
    listing_extra: str = ""
    redirects: dict = field(default_factory=dict)  # path -> Location of a 302
    faults: Faults = field(default_factory=Faults)
    log: list[tuple[str, str, str | None, int]] = field(default_factory=list)  # method, path, Range, status
    failures_sent: dict[str, int] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(1))

    def publish(self, path: str, data: bytes) -> None:
        self.files[path] = data

    def etag(self, path: str) -> str:
        return '"' + hashlib.md5(self.files[path]).hexdigest() + '"'

    def gets(self, path: str) -> list:
        return [entry for entry in self.log if entry[0] == "GET" and entry[1] == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: MirrorState

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _status(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.state.log.append((self.command, self.path, self.headers.get("Range"), code))
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        st, faults = self.state, self.state.faults
        path = self.path.split("?", 1)[0]
        if path == st.listing_path:
            links = "".join(f'<li><a href="{p}">{p.rsplit("/", 1)[-1]}</a></li>' for p in sorted(st.files))
            html = f"<html><body><h1>Censo Escolar</h1><ul>{links}{st.listing_extra}</ul></body></html>".encode()
            return self._status(200, html, {"Content-Type": "text/html; charset=utf-8"}, head)
        if path in faults.hang_paths:
            time.sleep(faults.hang_s)
            self.close_connection = True
            return
        if path in st.redirects:
            return self._status(302, b"", {"Location": st.redirects[path]}, head)
        if path not in st.files:
            return self._status(404, b"not found", head=head)
        sent = st.failures_sent.get(path, 0)
        if sent < faults.fail_first or (faults.fail_rate and st.rng.random() < faults.fail_rate):
            st.failures_sent[path] = sent + 1
            headers = {"Retry-After": faults.retry_after} if faults.retry_after is not None else {}
            return self._status(503, b"busy", headers, head)
        data = st.files[path]
        etag = st.etag(path)
        common = {
            "ETag": etag,
            "Last-Modified": formatdate(1_700_000_000, usegmt=True),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/zip",
        }
        start = 0
        rng_header = self.headers.get("Range")
        if rng_header and not faults.ignore_range and not head:
            if_range = self.headers.get("If-Range")
            if if_range is None or if_range == etag:
                start = int(rng_header.split("=", 1)[1].split("-", 1)[0])
        body = data[start:]
        status = 206 if start else 200
        if start:
            common["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self.state.log.append((self.command, path, rng_header, status))
        self.send_response(status)
        for k, v in common.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) + faults.lie_length_by))
        self.end_headers()
        if head:
            return
        cut = len(body)
        if faults.drop_rate and st.rng.random() < faults.drop_rate and len(body) > 1:
            cut = st.rng.randrange(0, len(body))
        if faults.lie_length_by:
            self.close_connection = True
        for offset in range(0, cut, 8192):
            if faults.chunk_delay_s:
                time.sleep(faults.chunk_delay_s)
            try:
                self.wfile.write(body[offset : min(offset + 8192, cut)])
            except (BrokenPipeError, ConnectionResetError):
                return
        if cut < len(body) or faults.lie_length_by:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True


class Mirror:
    """Context manager: `with Mirror(state) as base_url: ...`."""

    def __init__(self, state: MirrorState):
        handler = type("Handler", (_Handler,), {"state": state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> str:
        self.thread.start()
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
