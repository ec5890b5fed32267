"""hactl: the admin shell. Tables for people, --json for scripts; with no
command it opens an interactive shell with completion and history.

Exit codes (stable, for scripts):
  0  done
  1  refused by the cluster (rejected, not found, conflict)
  2  usage error or bad parameters (a name, value or domain XML the cluster never accepts)
  3  cannot reach a peer, no quorum, or the peer has not caught up since it started
  4  outcome unknown (maybe applied: timeout or leader change) - check with a read
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hacluster.cli import render
from hacluster.cli.commands import COMMANDS, Spec, build_parser
from hacluster.rpc.client import RpcClient
from hacluster.rpc.protocol import ErrorCode, RpcError

DEFAULT_SOCKET = "/run/hacluster/hactl.sock"
EXIT_CODES = {
    ErrorCode.REJECTED: 1, ErrorCode.NOT_FOUND: 1, ErrorCode.CONFLICT: 1,
    ErrorCode.FORBIDDEN: 1, ErrorCode.BAD_PARAMS: 2, ErrorCode.UNKNOWN_METHOD: 2,
    ErrorCode.UNAVAILABLE: 3, ErrorCode.NO_QUORUM: 3, ErrorCode.NOT_LEADER: 3,
    ErrorCode.UNAUTHENTICATED: 3, ErrorCode.MAYBE_APPLIED: 4, ErrorCode.TIMEOUT: 4,
}


def connect(args: argparse.Namespace) -> RpcClient:
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    return RpcClient.connect(args.connect, token=token, cafile=args.cafile,
                             certfile=args.cert, keyfile=args.key, timeout_s=args.timeout)


def run_command(args: argparse.Namespace, client: RpcClient,
                out: Callable[[str], None] = print,
                params: dict[str, Any] | None = None) -> int:
    spec: Spec = args.spec
    params = spec.params(args) if params is None else params
    if spec.streamed:
        for item in client.stream(spec.method, params, timeout_s=math.inf):
            out(json.dumps(item) if args.json else render.event_line(item))
        return 0
    result = client.call(spec.method, params)
    if args.json:
        out(json.dumps(result, indent=2, sort_keys=True, default=str))
    else:
        text = spec.render(result) if spec.render else _written(result)
        out(text)
        if isinstance(result, dict) and "freshness" in result and args.verbose:
            out(render.freshness(result["freshness"]))
    return 0


def _written(result: dict[str, Any]) -> str:
    lines = [f"committed at index {result['index']}"]
    lines += [f"  {render.event_line(e)}" for e in result.get("events", [])]
    lines += [f"note: {result['note']}"] if result.get("note") else []
    return "\n".join(lines)


def report_error(exc: RpcError) -> int:
    print(f"hactl: {exc.code.value}: {exc.message}", file=sys.stderr)
    field = exc.details.get("field") if exc.details else None
    if field:
        print(f"hactl: (field: {field})", file=sys.stderr)
    return EXIT_CODES.get(exc.code, 1)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(DEFAULT_SOCKET)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if getattr(args, "spec", None) is None:
        from hacluster.cli.shell import run_shell

        return run_shell(args, parser)

    def once() -> int:
        params = args.spec.params(args)  # files read (or refused) before any connection
        with connect(args) as client:
            return run_command(args, client, params=params)

    return guarded(once)


def guarded(action: Callable[[], int]) -> int:
    """Run one command; turn every failure into a message and an exit code."""
    try:
        return action()
    except RpcError as exc:
        return report_error(exc)
    except BrokenPipeError:  # e.g. piped into head: the reader left, nothing to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0
    except (OSError, ValueError) as exc:
        print(f"hactl: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


__all__ = ["COMMANDS", "main"]

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
