"""A real HTTP server on 127.0.0.1 for webhook tests: it records every POST and answers
500 the first `failures` times, then 204; or, `silent`, never answers at all."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookServer:
    def __init__(self, failures: int = 0, silent: bool = False) -> None:
        self.failures = failures
        self.silent = silent
        self.posts: list[tuple[dict[str, Any], str]] = []  # (JSON body, Authorization)
        self.answered = threading.Event()  # set at the first 2xx
        self.release = threading.Event()  # a silent server's handlers wait for this
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with server._lock:
                    server.posts.append((json.loads(body), self.headers.get(
                        "Authorization", "")))
                    failing = len(server.posts) <= server.failures
                if server.silent:
                    server.release.wait(60)
                    return
                self.send_response(500 if failing else 204)
                self.end_headers()
                if not failing:
                    server.answered.set()

            def log_message(self, *args: object) -> None:
                return None

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.server_address[1]}/hook"

    def events(self) -> list[str]:
        with self._lock:
            return [str(body["event"]) for body, _ in self.posts]

    def close(self) -> None:
        self.release.set()
        self.http.shutdown()
        self.http.server_close()
