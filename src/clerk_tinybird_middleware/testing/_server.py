"""A tiny threaded HTTP server on 127.0.0.1 for the fakes.

Standard library only (``wsgiref`` + ``ThreadingMixIn``): one thread per connection, so a
fake that sleeps to simulate a slow upstream does not hold up other clients.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .._types import WSGIApp

__all__ = ["serve_wsgi"]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # request lines would carry nothing secret, but they are noise in test output


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False  # a fake told to hang must not hang the test that stops it
    allow_reuse_address = True
    request_queue_size = 256


@contextmanager
def serve_wsgi(app: WSGIApp, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` on ``host:port`` (0 = a free port) and yield its base URL."""
    server = make_server(
        host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
