"""Generated docs stay in step with the code they describe."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
