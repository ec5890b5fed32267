"""`hactl` with no command: an interactive shell (prompt_toolkit) with the same
commands, completion of commands and of host and VM names, and history."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hacluster.cli.commands import COMMANDS, Spec
from hacluster.rpc.protocol import RpcError

HISTORY = Path.home() / ".hactl_history"
BUILTINS = ("help", "exit", "quit")


class Names:
    """Host and VM names for completion, refreshed from the peer now and then."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.hosts: list[str] = []
        self.vms: list[str] = []

    def refresh(self) -> None:
        try:
            self.hosts = [h["name"] for h in self.client.call("host.list", {})["hosts"]]
            self.vms = [v["name"] for v in self.client.call("vm.list", {})["vms"]]
        except (RpcError, OSError):
            pass


def candidates(words: list[str], names: Names) -> list[str]:
    """Completions for the word being typed, given the complete words before it."""
    specs = [s for s in COMMANDS if tuple(s.words[: len(words)]) == tuple(words)]
    nexts = sorted({s.words[len(words)] for s in specs if len(s.words) > len(words)})
    if nexts or not words:
        return nexts + (list(BUILTINS) if not words else [])
    spec = next((s for s in COMMANDS if s.words == tuple(words[: len(s.words)])), None)
    if spec is None:
        return []
    position = len(words) - len(spec.words)
    kinds = spec.completes
    kind = kinds[position] if position < len(kinds) else ""
    return {"host": names.hosts, "vm": names.vms}.get(kind, [])


def _completer(names: Names) -> Any:
    from prompt_toolkit.completion import Completer, Completion

    class HactlCompleter(Completer):
        def get_completions(self, document: Any, complete_event: Any) -> Iterator[Any]:
            text = document.text_before_cursor
            words = text.split()
            current = "" if text.endswith(" ") or not words else words.pop()
            for option in candidates(words, names):
                if option.startswith(current):
                    yield Completion(option, start_position=-len(current))

    return HactlCompleter()


def _help(parser: argparse.ArgumentParser) -> str:
    lines = ["commands (add --help to any of them):"]
    lines += [f"  {' '.join(s.words):<22} {s.help}" for s in COMMANDS]
    lines.append("  exit                   leave the shell")
    return "\n".join(lines)


def run_line(line: str, parser: argparse.ArgumentParser, base: argparse.Namespace,
             client: Any) -> int:
    from hacluster.cli.hactl import guarded, run_command

    words = shlex.split(line)
    try:
        args = parser.parse_args(words, namespace=argparse.Namespace(**vars(base)))
    except SystemExit as exc:  # argparse already printed the problem or the help
        return int(exc.code or 0)
    spec: Spec | None = getattr(args, "spec", None)
    if spec is None:
        print(_help(parser))
        return 0
    return guarded(lambda: run_command(args, client))


def run_shell(base: argparse.Namespace, parser: argparse.ArgumentParser,
              lines: Iterable[str] | None = None) -> int:
    from hacluster.cli.hactl import connect, report_error

    try:
        client = connect(base)
    except RpcError as exc:
        return report_error(exc)
    names = Names(client)
    names.refresh()
    source = lines if lines is not None else _prompt_lines(names, base.connect)
    status = 0
    with client:
        for line in source:
            line = line.strip()
            if not line:
                continue
            if line in ("exit", "quit"):
                break
            if line == "help":
                print(_help(parser))
                continue
            status = run_line(line, parser, base, client)
            names.refresh()
    return status


def _prompt_lines(names: Names, target: str) -> Iterator[str]:
    if not sys.stdin.isatty():  # piped commands: one per line, no prompt
        yield from sys.stdin
        return
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory

    session: PromptSession[str] = PromptSession(
        history=FileHistory(str(HISTORY)), completer=_completer(names))
    print(f"hactl shell on {target}: 'help' lists the commands, Tab completes, Ctrl-D leaves")
    while True:
        try:
            yield session.prompt("hactl> ")
        except KeyboardInterrupt:
            continue
        except EOFError:
            return
