"""Run the app on uvicorn: in the foreground (the CLI) or on a background thread (tests, benchmarks)."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import threading
import time
from typing import Any

from pluralign.errors import ConfigError, PluralignError
from pluralign.serve.config import ServeConfig
from pluralign.serve.loading import Loaded

log = logging.getLogger("pluralign.serve")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def uvicorn_server(cfg: ServeConfig, loaded: Loaded | None = None, keys: list[str] | None = None,
                   sock: socket.socket | None = None) -> Any:
    import uvicorn

    from pluralign.serve.app import create_app

    app = create_app(cfg, loaded, keys)
    srv = app.state.server
    if not srv.keys.enabled and not _loopback(cfg.host):
        log.warning("serving on %s without API keys: anyone who can reach it can use it", cfg.host)
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=int(cfg.graceful_timeout_s), lifespan="on")
    server = uvicorn.Server(config)
    server.app_state = srv
    return server


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (port 0: any free one). Bound here, before the server starts, so that a
    port in use is a one-line error naming it rather than uvicorn's log line and exit code 3."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"--port {port}: already in use on {host} (another server? --port 0 takes any "
                              "free port)", field="port") from None
        raise ConfigError(f"cannot listen on {host}:{port} (--host, --port): {e.strerror or e}") from None


def serve(cfg: ServeConfig, sock: socket.socket | None = None) -> None:
    """Serve until SIGINT/SIGTERM; then stop accepting, drain in-flight requests and exit. The model loads in
    the background (/health answers 503 meanwhile); if it fails to load, the server stops and this raises,
    since a server that can only answer 503 would otherwise look alive to whatever supervises it."""
    server = uvicorn_server(cfg)
    engine = server.app_state.engine
    engine.on_failure = lambda: setattr(server, "should_exit", True)  # uvicorn checks it every 0.1 s
    server.run(sockets=[sock or listen(cfg.host, cfg.port)])
    if engine.state == "failed":
        raise PluralignError(f"--model {cfg.model}: {engine.error}")


class Background:
    """`with Background(cfg, loaded) as url:` a server on a free 127.0.0.1 port in a daemon thread,
    ready (model loaded) on entry and shut down gracefully on exit."""

    def __init__(self, cfg: ServeConfig, loaded: Loaded | None = None, keys: list[str] | None = None,
                 ready_timeout: float = 120.0):
        self.sock = listen(cfg.host, cfg.port)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn_server(cfg, loaded, keys)
        self.url = f"http://{cfg.host}:{self.port}"
        self.ready_timeout = ready_timeout
        self.thread = threading.Thread(target=lambda: self.server.run(sockets=[self.sock]), daemon=True)

    @property
    def state(self) -> Any:
        return self.server.app_state

    def __enter__(self) -> str:
        self.thread.start()
        end = time.monotonic() + self.ready_timeout
        while not self.server.started and time.monotonic() < end and self.thread.is_alive():
            time.sleep(0.01)
        self.state.engine.wait_ready(max(0.0, end - time.monotonic()))
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __exit__(self, *exc: Any) -> None:
        self.stop()
