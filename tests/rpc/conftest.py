"""Fixtures for the RPC transport tests: real sockets, servers on uvloop threads."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hacluster.config import RpcConfig
from hacluster.rpc.server import Method, ServerLimits

from .support import (
    Pki,
    Probe,
    ServerThread,
    make_methods,
    make_pki,
    short_tmp_dir,
    unix_config,
)

TOKEN = "s3cr3t-token-0123456789abcdef"  # the good token of user "ops"


@pytest.fixture
def tmp_short() -> Iterator[Path]:
    path = short_tmp_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def probe() -> Probe:
    return Probe(threading.Event(), threading.Event())


@pytest.fixture
def start_server(tmp_short: Path, probe: Probe) -> Iterator[Callable[..., ServerThread]]:
    """Start servers (default: Unix socket only); each is stopped and checked for
    errors the event loop saw but nobody handled."""
    started: list[ServerThread] = []

    def start(config: RpcConfig | None = None, limits: ServerLimits | None = None,
              methods: dict[str, Method] | None = None, **kwargs: Any) -> ServerThread:
        thread = ServerThread(methods or make_methods(probe), config or unix_config(tmp_short),
                              limits, **kwargs)
        started.append(thread)
        return thread.__enter__()

    yield start
    for thread in started:
        thread.stop()
        assert not thread.loop_errors, thread.loop_errors


@pytest.fixture
def server(start_server: Callable[..., ServerThread]) -> ServerThread:
    return start_server()


@pytest.fixture
def tokens_file(tmp_short: Path) -> str:
    path = tmp_short / "tokens"
    path.write_text(f"# user:token\nops:{TOKEN}\n\nbackup:another-token-abcdefghijkl\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def tls_config(tmp_short: Path, pki: Pki, tokens_file: str) -> RpcConfig:
    return unix_config(tmp_short, tcp_address="127.0.0.1:0", tls_cert=pki.server_cert,
                       tls_key=pki.server_key, tls_client_ca=pki.ca_cert,
                       tokens_file=tokens_file)
