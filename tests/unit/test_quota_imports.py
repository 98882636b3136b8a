"""The quota package knows nothing of HTTP: no module of it imports aiohttp or multidict."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import proxy.quota

PACKAGE = Path(proxy.quota.__file__).parent
HTTP = ("aiohttp", "multidict", "yarl")


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_no_quota_module_names_an_http_library() -> None:
    """No import statement in proxy/quota names aiohttp, multidict or yarl."""
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) >= 8
    offenders = {p.name: sorted(_imported(p) & set(HTTP)) for p in modules}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_importing_the_quota_package_loads_no_http_library() -> None:
    """Every quota module imported in a fresh interpreter, nothing HTTP comes with it."""
    names = ", ".join(f"proxy.quota.{p.stem}" for p in sorted(PACKAGE.glob("*.py")))
    script = (
        f"import sys, importlib\nfor name in '{names}'.split(', '):\n"
        "    importlib.import_module(name.removesuffix('.__init__'))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = set(ast.literal_eval(out.strip()))
    assert "proxy" in loaded
    assert loaded.isdisjoint(HTTP)
