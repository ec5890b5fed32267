"""Imports point downwards only (ARCHITECTURE.md), and each third-party library the
cluster is built on is imported by one adapter package only.

An AST scan of every module of the package: nothing is imported or executed. Imports
inside functions count too (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import hacluster

PACKAGE_ROOT = Path(next(iter(hacluster.__path__))).resolve()

# Lower numbers are lower layers; a module may import its own layer and lower ones.
LAYERS = {
    "hacluster.fsm": 0,  # the replicated state machine, placement included
    "hacluster.core": 1,  # leader, agent, lease and barrier decisions
    "hacluster.ports": 2,  # the interfaces the adapters implement
    "hacluster.raft": 3,
    "hacluster.fence": 3,
    "hacluster.hypervisor": 3,
    "hacluster.secrets": 3,
    "hacluster.config": 4,
    "hacluster.daemon": 5,
    "hacluster.rpc": 5,
    "hacluster.cli": 5,
    "hacluster.sim": 5,
    "hacluster.lab": 5,
}
ADAPTERS = ("hacluster.raft", "hacluster.fence", "hacluster.hypervisor", "hacluster.secrets")
ONE_ADAPTER = {"pysyncobj": "hacluster.raft", "pyghmi": "hacluster.fence",
               "libvirt": "hacluster.hypervisor", "libvirtaio": "hacluster.hypervisor",
               "prometheus_client": "hacluster.daemon.metrics"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> tuple[str, int] | None:
    for prefix, rank in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return prefix, rank
    return None


def imports(path: Path, name: str = "") -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import statement in the file."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            yield base, node.lineno
            for alias in node.names:  # `from hacluster import fsm` imports a subpackage
                yield f"{base}.{alias.name}", node.lineno


def package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE_ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_layer() -> None:
    unplaced = [module_name(p) for p in package_modules()
                if module_name(p) != "hacluster" and layer_of(module_name(p)) is None]
    assert not unplaced, f"add these to LAYERS: {unplaced}"


def wrong_way(path: Path, name: str) -> list[str]:
    """Imports of module `name` (in `path`) that point upwards, or sideways between
    adapters."""
    own = layer_of(name)
    if own is None:
        return []
    wrong = []
    for target, line in imports(path, name):
        other = layer_of(target)
        if other is None or other[0] == own[0]:
            continue
        upwards = other[1] > own[1]
        sideways = other[1] == own[1] and own[0] in ADAPTERS
        if upwards or sideways:
            wrong.append(f"{name}:{line} ({own[0]}) imports {target} ({other[0]})")
    return wrong


def test_imports_point_downwards_only() -> None:
    wrong = [w for path in package_modules() for w in wrong_way(path, module_name(path))]
    assert not wrong, "\n".join(wrong)


def test_each_library_is_imported_by_its_adapter_only() -> None:
    wrong = []
    for path in package_modules():
        name = module_name(path)
        for target, line in imports(path):
            top = target.split(".")[0]
            owner = ONE_ADAPTER.get(top)
            if owner is not None and not (name == owner or name.startswith(owner + ".")):
                wrong.append(f"{path.relative_to(PACKAGE_ROOT.parent)}:{line} imports {top} "
                             f"(only {owner} may)")
    assert not wrong, "\n".join(wrong)


def test_the_scan_sees_wrong_imports(tmp_path: Path) -> None:
    """The checks above can fail: upwards, sideways and relative imports are caught."""
    source = tmp_path / "x.py"
    source.write_text("from hacluster.daemon import peer\nfrom ..raft import node\n"
                      "import hacluster.fsm.model\n\n\ndef f():\n    import hacluster.cli\n")
    found = wrong_way(source, "hacluster.fsm.x")
    assert [w.split(" imports ")[1].split()[0] for w in found] == [
        "hacluster.daemon", "hacluster.daemon.peer", "hacluster.raft", "hacluster.raft.node",
        "hacluster.cli"], found
    sideways = wrong_way(source, "hacluster.fence.x")
    assert any("hacluster.raft" in w for w in sideways), sideways
    assert wrong_way(source, "hacluster.daemon.x") == []
