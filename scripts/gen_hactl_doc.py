"""Write docs/hactl.md from the command table (hacluster/cli/commands.py):
    .venv/bin/python scripts/gen_hactl_doc.py"""

from __future__ import annotations

import sys
from pathlib import Path

from hacluster.cli import hactl
from hacluster.cli.commands import COMMANDS


def _args(spec: object) -> str:
    parts = []
    for flags, kwargs in spec.args:  # type: ignore[attr-defined]
        name = flags[0]
        if name.startswith("-"):
            metavar = kwargs.get("metavar") or ("" if kwargs.get("action") else name.strip("-")
                                                .upper().replace("-", "_"))
            text = f"{name} {metavar}".strip()
            parts.append(text if kwargs.get("required") else f"[{text}]")
        else:
            parts.append(f"[{name.upper()}]" if kwargs.get("nargs") in ("?", "*")
                         else name.upper())
    return " ".join(parts)


def _exit_codes() -> list[str]:
    text = (hactl.__doc__ or "").split("Exit codes (stable, for scripts):", 1)[1]
    return [line.strip() for line in text.strip().splitlines()]


def render() -> str:
    lines = ["# hactl reference", "",
             "Generated from `hacluster/cli/commands.py` by `scripts/gen_hactl_doc.py`.", "",
             "```", "hactl [--connect TARGET] [--json] [-v] [--timeout S] [--token-file F]",
             "      [--cafile F] [--cert F] [--key F] COMMAND ...", "```", "",
             "With no COMMAND, hactl opens an interactive shell (Tab completes commands, host",
             "and VM names; history in ~/.hactl_history). Piped input runs one command per line.",
             "", "Exit codes:", "", "```", *_exit_codes(), "```", "",
             "| command | what | RPC method |", "| --- | --- | --- |"]
    for spec in COMMANDS:
        usage = " ".join(spec.words) + (" " + _args(spec) if spec.args else "")
        lines.append(f"| `hactl {usage}` | {spec.help} | `{spec.method}` |")
    lines += ["", "## Examples", ""]
    for spec in COMMANDS:
        lines.append(f"- {spec.help}:")
        lines += [f"  `{e}`" for e in spec.examples]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "hactl.md"
    target.write_text(render())
    sys.stdout.write(f"wrote {target}\n")
