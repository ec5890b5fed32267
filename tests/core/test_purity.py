"""The pure core (hacluster/fsm, hacluster/core, hacluster/ports) does no I/O.

An AST scan (nothing is imported or executed) follows every hacluster import
transitively from each core module, and fails on any import of a module that
does I/O, reads the clock or randomness, on any hacluster module outside the
core, and on any stdlib or third-party module that is not on the allow-list
(add a module there only if it is pure). It also fails on calls of builtins that
do I/O or are not deterministic across processes (hash() of a str differs per
PYTHONHASHSEED).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import hacluster

# __path__, not __file__: a stale editable install may load hacluster as a namespace
PACKAGE_ROOT = Path(next(iter(hacluster.__path__))).resolve()
CORE_DIRS = ("fsm", "core")
CORE_PREFIXES = ("hacluster.fsm", "hacluster.core", "hacluster.ports")
ALLOWED_HACLUSTER = {"hacluster", *CORE_PREFIXES}

FORBIDDEN = {
    "os",
    "sys",
    "socket",
    "subprocess",
    "threading",
    "multiprocessing",
    "asyncio",
    "concurrent",
    "time",
    "datetime",
    "random",
    "secrets",
    "logging",
    "pathlib",
    "io",
    "select",
    "selectors",
    "signal",
    "shutil",
    "tempfile",
    "urllib",
    "http",
    "ssl",
    "uuid",
    "pickle",
    "marshal",
    "shelve",
    "importlib",
    "ctypes",
    "pysyncobj",
    "pyghmi",
    "libvirt",
    "uvloop",
    "prompt_toolkit",
    "cryptography",
}
ALLOWED = {
    "__future__",
    "abc",
    "bisect",
    "collections",
    "dataclasses",
    "enum",
    "functools",
    "hashlib",
    "hmac",
    "itertools",
    "math",
    "msgpack",
    "re",
    "types",
    "typing",
}
# Single modules of a package that is not pure as a whole: expat parses a string held
# in memory and fetches nothing (no external entity handler is ever set), while the
# rest of `xml` (sax, dom, etree.parse) opens files and URLs.
ALLOWED_MODULES = {"xml.parsers", "xml.parsers.expat"}
FORBIDDEN_CALLS = {
    "open",
    "print",
    "input",
    "exec",
    "eval",
    "compile",
    "__import__",
    "breakpoint",
    "hash",
    "id",
}
EXPECTED = {
    "hacluster.fsm.apply",
    "hacluster.fsm.codec",
    "hacluster.fsm.wire",
    "hacluster.fsm.model",
    "hacluster.fsm.placement",
    "hacluster.core.manager",
    "hacluster.core.agent",
    "hacluster.core.lease",
    "hacluster.ports",
}


def module_file(name: str) -> Path | None:
    parts = name.split(".")[1:]
    base = PACKAGE_ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_ROOT).with_suffix("")
    parts = ["hacluster", *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(name: str, tree: ast.AST) -> Iterator[tuple[str, int]]:
    """Every module an import statement may load, with its line."""
    path = module_file(name)
    package = name if path is not None and path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, node.lineno
            for alias in node.names:  # `from pkg import submodule`
                if module_file(f"{base}.{alias.name}") is not None:
                    yield f"{base}.{alias.name}", node.lineno


def parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def scan() -> tuple[set[str], list[str]]:
    """Walk the import graph from every core module: (modules seen, problems)."""
    start = [module_name(p) for d in CORE_DIRS for p in sorted((PACKAGE_ROOT / d).glob("*.py"))]
    start.append("hacluster.ports")
    seen: set[str] = set()
    problems: list[str] = []
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None:
            problems.append(f"{name}: module file not found")
            continue
        tree = ast.parse(path.read_text(), str(path))
        problems.extend(_call_problems(name, tree))
        for target, line in imported_names(name, tree):
            top = target.split(".")[0]
            where = f"{name} line {line} imports {target}"
            if top == "hacluster":
                if not target.startswith(CORE_PREFIXES) and target != "hacluster":
                    problems.append(f"{where}: outside the pure core")
                    continue
                todo.extend(p for p in [*parents(target), target] if module_file(p))
            elif target in ALLOWED_MODULES:
                continue
            elif top in FORBIDDEN:
                problems.append(f"{where}: does I/O, reads the clock or randomness")
            elif top not in ALLOWED:
                problems.append(f"{where}: not on the allow-list (add it if it is pure)")
        todo.extend(parents(name))
    return seen, problems


def _call_problems(name: str, tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in FORBIDDEN_CALLS
        ):
            # hash()/id() are fine only in ports (not replicated, not in the core)
            if name == "hacluster.ports" and node.func.id == "hash":
                continue
            yield f"{name} line {node.lineno} calls {node.func.id}()"


def test_scan_finds_the_core_modules() -> None:
    seen, _ = scan()
    assert seen >= EXPECTED, f"scan missed {sorted(EXPECTED - seen)}"
    assert len([m for m in seen if m.startswith("hacluster.fsm.")]) >= 10


def test_pure_core_imports_nothing_that_does_io() -> None:
    _, problems = scan()
    assert not problems, "\n".join(problems)


def test_scan_notices_a_forbidden_import() -> None:
    tree = ast.parse("import os\nfrom time import monotonic\nfrom hacluster.raft import x\n")
    names = [n for n, _ in imported_names("hacluster.fsm.fake", tree)]
    assert names == ["os", "time", "hacluster.raft"]


def test_scan_resolves_relative_imports() -> None:
    tree = ast.parse("from . import model\nfrom ..core import lease\n")
    names = {n for n, _ in imported_names("hacluster.fsm.apply", tree)}
    assert {"hacluster.fsm.model", "hacluster.core.lease"} <= names


@pytest.mark.parametrize(
    "name", sorted(module_name(p) for d in CORE_DIRS for p in (PACKAGE_ROOT / d).glob("*.py"))
)
def test_every_core_module_imports_first_in_a_fresh_interpreter(name: str) -> None:
    """Catches import cycles that only bite when a module is the first one imported."""
    root = str(PACKAGE_ROOT.parent)  # the child imports the hacluster this process uses
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
    }
    result = subprocess.run(
        [sys.executable, "-c", f"import {name}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1:]
