"""The layers the README draws: each package imports only from the layers below it, so that
store/ can take a second backend and the models can change without touching storage."""

from __future__ import annotations

import ast
from pathlib import Path

import specimen_id

ROOT = Path(specimen_id.__file__).parent
# bottom to top; a module may import its own layer and those below
LAYERS = [
    {"errors", "text", "threads", "products", "progress", "cache"},
    {"store"},
    {"models", "images", "quality", "local_features", "verification", "fixed_pattern", "simulate", "config"},
    {"search", "indexer"},
    {"service"},
    {"cli", "web", "watch", "camera", "__init__"},
]


def _layer(name: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if name in layer)


def _imports(path: Path) -> set[str]:
    """The top-level specimen_id modules a file imports (relative imports)."""
    package = list(path.relative_to(ROOT).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.ImportFrom) and node.level):
            continue
        base = package[:len(package) - (node.level - 1)]
        for name in [node.module] if node.module else [a.name for a in node.names]:
            module = ([*base, *name.split(".")] or ["__init__"])[0]
            if name == "__version__":  # set in __init__ before it imports anything
                continue
            if not ((ROOT / module).is_dir() or (ROOT / f"{module}.py").is_file()):
                module = "__init__"  # `from .. import export_archive`: the package's own API
            found.add(module)
    return found


def test_every_module_imports_only_its_own_layer_and_those_below():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        me = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" else "__init__"
        for target in _imports(path):
            if target != me and _layer(target) > _layer(me):
                upward.append(f"{rel} imports {target}")
    assert upward == []


def test_store_imports_nothing_above_it():
    for path in sorted((ROOT / "store").rglob("*.py")):
        assert {_layer(t) for t in _imports(path) if t != "store"} <= {0}, path
