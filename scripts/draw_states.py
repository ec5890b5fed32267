"""Draw the host and VM state tables (hacluster/fsm/states.py) as Mermaid
diagrams into docs/states.md:  .venv/bin/python scripts/draw_states.py"""

from __future__ import annotations

import sys
from pathlib import Path

from hacluster.fsm.states import HOST_EDGES, HOST_MEANINGS, VM_EDGES


def mermaid(edges: dict) -> str:  # type: ignore[type-arg]
    lines = ["```mermaid", "stateDiagram-v2"]
    for old in edges:
        for new in sorted(edges[old], key=lambda s: s.value):
            if new is not old:
                lines.append(f"    {old.value.replace('-', '_')} --> {new.value.replace('-', '_')}")
    lines.append("```")
    return "\n".join(lines)


def render() -> str:
    return "\n".join([
        "# State tables",
        "",
        "Generated from `hacluster/fsm/states.py` by `scripts/draw_states.py`; `apply` changes",
        "a state only along these edges (anything else is reported as a bug event).",
        "",
        "## Hosts",
        "",
        "| state | meaning |",
        "| --- | --- |",
        *(f"| `{state.value}` | {meaning} |" for state, meaning in HOST_MEANINGS.items()),
        "",
        mermaid(HOST_EDGES),
        "",
        "## VMs",
        "",
        mermaid(VM_EDGES),
        "",
    ])


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "docs" / "states.md"
    target.write_text(render())
    sys.stdout.write(f"wrote {target}\n")
