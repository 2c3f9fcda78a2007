"""Which PersonC modules may import which: no cycles, adapters apart, the guard's vocabulary below the pipeline."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "personc_assets"


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


MODULES = _module_names()


def _imports(module: str) -> set[str]:
    """PersonC modules ``module`` imports anywhere in its file (function-level imports too)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    found.add(f"{target}.{alias.name}")
                elif target in MODULES:
                    found.add(target)
    return found - {module}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules():
    # why: detect.py/fast_detect.py and the two dlib engines imported each other; a cycle makes import
    # order matter and hides which module owns a helper
    graph = {m: _imports(m) for m in MODULES}
    assert _cycles(graph) == []


def test_encoder_adapters_import_only_shared_helpers():
    # why: magface took its crop from arcface and both their hash from the dlib adapter; a change to
    # one model family must not reach into another
    encoders = "personc_assets.core.encoders"
    shared = {f"{encoders}.base", f"{encoders}.common"}
    for module in MODULES:
        family = module[len(encoders) + 1:].split(".")[0] if module.startswith(encoders + ".") else None
        if family in (None, "base", "common", "availability"):  # availability wires the registry
            continue
        others = {m for m in _imports(module) if m.startswith(encoders + ".") and m not in shared
                  and m.split(".")[len(encoders.split("."))] != family}
        assert not others, f"{module} imports other encoder families: {sorted(others)}"


def test_audit_redteam_and_the_guard_vocabulary_do_not_load_the_pipeline():
    # why: taus, guard building and witness checks are library vocabulary; the audit and red team use
    # them without pulling in the pipeline's steps
    code = ("import sys, personc_assets.core.audit, personc_assets.core.redteam, personc_assets.core.ensemble; "
            "print(sorted(m for m in sys.modules if m.startswith('personc_assets.core.pipeline')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_pipeline_does_not_import_the_privacy_modes():
    # why: the privacy modes are built on the pipeline's values; the pipeline reaching up into them (it
    # took the age/gender labeller from privacy.attributes) makes the two layers one
    privacy = "personc_assets.core.privacy"
    for module in MODULES:
        if module.startswith("personc_assets.core.pipeline"):
            upward = sorted(m for m in _imports(module) if m == privacy or m.startswith(privacy + "."))
            assert not upward, f"{module} imports the privacy modes: {upward}"
