"""Generated docs stay in step with the code they describe."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import re
import shlex
import tomllib
from pathlib import Path

from hacluster import config as config_module
from hacluster.cli.commands import COMMANDS, build_parser
from hacluster.config import Config
from hacluster.fsm import commands as c
from hacluster.fsm.wire import decode_fields

ROOT = Path(__file__).resolve().parent.parent


def test_state_diagrams_match_the_tables() -> None:
    spec = importlib.util.spec_from_file_location("draw_states", ROOT / "scripts/draw_states.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs/states.md").read_text() == module.render(), \
        "run .venv/bin/python scripts/draw_states.py"


def test_hactl_reference_matches_the_commands() -> None:
    spec = importlib.util.spec_from_file_location("gen_hactl_doc",
                                                  ROOT / "scripts/gen_hactl_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (ROOT / "docs/hactl.md").read_text() == module.render(), \
        "run .venv/bin/python scripts/gen_hactl_doc.py"


# ------------------------------------------------------------ the operator guide

GUIDE = ROOT / "docs/operator-guide.md"
FENCE = "```"


def _code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(
        rf"^ *{FENCE}(\w*)\n(.*?)^ *{FENCE}", text, re.MULTILINE | re.DOTALL)]


def quoted_commands(text: str, program: str) -> list[str]:
    """Every `program ...` the text quotes: lines of sh blocks (continuations joined,
    comments dropped) and inline code spans (which may wrap across lines)."""
    found = []
    for language, body in _code_blocks(text):
        if language == "sh":
            joined = body.replace("\\\n", " ")
            found += [line.strip() for line in joined.splitlines()
                      if line.strip().startswith(program + " ")]
    outside = re.sub(rf"{FENCE}.*?{FENCE}", "", text, flags=re.DOTALL)
    found += [" ".join(m.split()) for m in re.findall(rf"`({program} [^`]+)`", outside)]
    return found


def hactl_arguments(command: str) -> list[str]:
    return shlex.split(command, comments=True)[1:]


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option of the parser and its subcommands, spelled out (argparse would also
    take an abbreviation, which the guide must not teach)."""
    found: set[str] = set()
    for action in parser._actions:
        found |= set(action.option_strings)
        for sub in getattr(action, "choices", None) or {}:
            if isinstance(action.choices, dict):
                found |= option_strings(action.choices[sub])
    return found


def test_the_guide_quotes_commands_to_check() -> None:
    commands = quoted_commands(GUIDE.read_text(), "hactl")
    assert len(commands) > 40, commands
    assert "hactl settings set fence_action=identify" in commands


def test_every_hactl_command_in_the_guide_parses() -> None:
    """Through hactl's own parser and its parameter builder (times, pairs), and every
    setting through the decoder the peer uses: what the guide says exists."""
    parser = build_parser("/nonexistent")
    names = {spec.words for spec in COMMANDS}
    spelled = option_strings(parser)
    for command in quoted_commands(GUIDE.read_text(), "hactl"):
        arguments = hactl_arguments(command)
        try:
            args = parser.parse_args(arguments)
        except SystemExit as exc:
            if exc.code == 0 and "--help" in arguments:
                continue
            if tuple(arguments) in names:  # a command named in prose, without its arguments
                continue
            raise AssertionError(f"the guide quotes a command hactl refuses: {command}") \
                from None
        abbreviated = [a.split("=")[0] for a in arguments
                       if a.startswith("-") and a.split("=")[0] not in spelled]
        assert not abbreviated, f"{command}: not hactl options: {abbreviated}"
        if args.spec is None:
            continue
        try:
            params = args.spec.params(args)
        except OSError:  # a file it names (a domain XML, a password): not on this machine
            continue
        if args.spec.method == "settings.set":
            decode_fields(c.SetSettings, params["values"])


def test_every_config_key_in_the_guide_exists() -> None:
    """TOML blocks and `[section] key` mentions name real peer settings."""
    text = GUIDE.read_text()
    mentioned: list[tuple[str, str]] = []
    for language, body in _code_blocks(text):
        if language == "toml":
            mentioned += [(s, k) for s, table in tomllib.loads(body).items() for k in table]
    mentioned += re.findall(r"`\[(\w+)\]\s+(\w+)`", text)
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    assert mentioned
    for section, key in mentioned:
        kind = sections.get(section)
        assert kind is not None, f"no section [{section}]"
        fields = {f.name for f in dataclasses.fields(getattr(config_module, str(kind)))} \
            if isinstance(kind, str) else {f.name for f in dataclasses.fields(kind)}
        assert key in fields, f"no key {key} in [{section}]"
