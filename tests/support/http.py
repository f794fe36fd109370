"""A loopback HTTP file server (``http_server`` fixture) with Range support and interrupted transfers."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional


class FileServer:
    """Serves ``files[path] = bytes`` on 127.0.0.1; honours ``Range: bytes=N-``.

    ``drop_after[path] = n``: send only n bytes of the body, then close (an interrupted transfer).
    ``ignore_range``: answer 200 with the whole file even when asked for a range.
    ``requests``: (path, Range header or None) of every request, in order.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.ignore_range = False
        self.requests: list[tuple[str, Optional[str]]] = []
        self.sent: dict[str, int] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{path.lstrip('/')}"

    def _handler(self) -> type:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                path = self.path.lstrip("/")
                header = self.headers.get("Range")
                owner.requests.append((path, header))
                if path not in owner.files:
                    self.send_error(404)
                    return
                body, start = owner.files[path], 0
                if header and not owner.ignore_range:
                    start = int(header.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                payload = payload[:owner.drop_after.get(path, len(payload))]
                # counted before writing: the client may read the last byte (and the test look at `sent`)
                # before this thread runs again
                owner.sent[path] = owner.sent.get(path, 0) + len(payload)
                self.wfile.write(payload)

        return Handler

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
