"""`hacluster peer`: load the config, run the peer under uvloop, handle signals."""

from __future__ import annotations

import asyncio
import dataclasses
import faulthandler
import logging
import signal
import sys
from collections.abc import Callable

import uvloop

from hacluster.config import Config, ConfigError, load_config
from hacluster.daemon.halt import exit_code_for
from hacluster.daemon.logs import setup_logging
from hacluster.daemon.peer import Peer
from hacluster.raft import CorruptStorage, RaftError
from hacluster.rpc.auth import RpcSetupError

log = logging.getLogger("hacluster.peer")

# What SIGHUP may change in a running peer; everything else needs a restart.
RELOADABLE = {"log", "notify"}

EXIT_CONFIG, EXIT_STORAGE = 2, 3  # others: daemon/halt.py (76), daemon/peer.py (75)


def reload(peer: Peer, path: str) -> None:
    try:
        new = load_config(path)
    except ConfigError as exc:
        log.error("reload refused: configuration invalid", extra={"error": str(exc)})
        return
    old = peer.config
    changed = [f.name for f in dataclasses.fields(Config)
               if f.name != "source" and getattr(old, f.name) != getattr(new, f.name)]
    fixed = [name for name in changed if name not in RELOADABLE]
    applied = [name for name in changed if name in RELOADABLE]
    peer.config = dataclasses.replace(old, **{name: getattr(new, name) for name in applied})
    if "log" in applied:
        setup_logging(new.log.level, new.log.format)
    if "notify" in applied:
        peer.notifications.reconfigure(peer.config)
    log.info("configuration reloaded", extra={
        "applied": ",".join(applied) or "nothing changed",
        "needs_restart": ",".join(f"[{n}]" for n in fixed) or "none"})
    reload_rpc_credentials(peer)


def reload_rpc_credentials(peer: Peer) -> None:
    """Tokens and certificates rotate in place: their files change, not the config."""
    if peer.rpc_server is None:
        return
    try:
        done = peer.rpc_server.reload_credentials()
    except RpcSetupError as exc:
        log.error("RPC credentials reload refused: the old ones stay", extra={"error": str(exc)})
        return
    log.info("RPC credentials reloaded", extra={"reloaded": done})


async def _serve(peer: Peer, path: str) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, peer.request_stop)
    loop.add_signal_handler(signal.SIGINT, peer.request_stop)
    loop.add_signal_handler(signal.SIGHUP, reload, peer, path)
    await peer.serve()


def run_peer(path: str, rebuild: bool = False,
             prepare: Callable[[Peer], None] | None = None) -> int:
    """Run until stopped; returns the exit code. `prepare` sees the peer before it
    starts (to add services, as tests do)."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"hacluster peer: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config.log.level, config.log.format)
    # `kill -USR1 PID` writes every thread's stack to stderr (the journal under systemd):
    # what a peer that seems stuck is waiting for, without stopping it
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    try:
        peer = Peer(config, rebuild=rebuild)
        if prepare is not None:
            prepare(peer)
        uvloop.run(_serve(peer, path))
        if peer.exit_code:
            return peer.exit_code
    except ConfigError as exc:
        print(f"hacluster peer: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CorruptStorage as exc:
        print(f"hacluster peer: {exc}\n  the peer refuses to start with damaged state; to "
              "rebuild from the other peers, run it once with --rebuild", file=sys.stderr)
        return EXIT_STORAGE
    except RaftError as exc:  # e.g. halted while starting: 76 if it cannot read the log
        print(f"hacluster peer: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except OSError as exc:  # e.g. the data directory read-only or its disk gone
        print(f"hacluster peer: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_STORAGE
    return 0


def describe_os_error(exc: OSError) -> str:
    """One line naming the file and the system's reason, instead of a traceback."""
    where = f" on {exc.filename}" if exc.filename else ""
    reason = exc.strerror or str(exc)
    return (f"cannot use the data directory or a file it needs: {reason}{where}; "
            "the peer stopped: fix the disk or its permissions and start it again")
