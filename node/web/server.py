"""Serving the web app with uvicorn from a thread of the node process."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from node.logs import log_event

logger = logging.getLogger(__name__)


class WebServer:
    """Run an ASGI app with uvicorn in a background thread.

    The listening socket is bound in :meth:`start`, in the caller's thread, so a port in
    use fails there rather than silently in the thread.

    Parameters
    ----------
    app
        The app (see :func:`node.web.create_app`).
    host, port
        Where to listen; port 0 picks a free one (read :attr:`port` after start).
    """

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Bind, start serving, and wait until uvicorn is ready.

        Raises
        ------
        OSError
            If the address cannot be bound.
        RuntimeError
            If uvicorn does not start within ``timeout`` seconds.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.listen(128)
        sock.set_inheritable(True)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self.app, log_level="warning", access_log=False,
                                lifespan="off", server_header=False, timeout_keep_alive=30,
                                # Live worklist streams never finish by themselves.
                                timeout_graceful_shutdown=3)
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                                        name="web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the web server did not start")
            time.sleep(0.02)
        log_event(logger, logging.INFO, "web_listening", host=self.host, port=self.port)

    @property
    def url(self) -> str:
        """Base URL of the running server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting requests, finish those in flight, and join the thread."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = None
        self._thread = None


__all__ = ["WebServer"]
