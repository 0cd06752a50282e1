"""Layers depend only downwards (docs/architecture.md): no module of securetorch imports from
a layer above its own, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "securetorch"

# bottom to top; a module may import from its own layer and the ones before it
LAYERS = [
    {"errors", "ring", "prg"},
    {"comm"},
    {"session"},
    {"protocols"},
    {"tensor"},
    {"models"},
    {"runtime"},
    {"secure", "check", "cli", "demo", "pytest_plugin", "__init__"},
]


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("securetorch"):
            found.append(node.module)
            found += [f"{node.module}.{a.name}" for a in node.names if node.module == "securetorch"]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("securetorch")]
    return [m for m in found if m != "securetorch"]


def test_every_layer_imports_only_downwards() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = "securetorch." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        name = name.removesuffix(".__init__") if path.name == "__init__.py" and path.parent != PACKAGE else name
        own = layer_of(name if path.parent != PACKAGE or path.name != "__init__.py" else "securetorch")
        for target in imports(path):
            if layer_of(target) > own:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports {target}")
    assert upward == []


def test_every_module_has_a_layer() -> None:
    tops = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.rglob("*.py")}
    assert tops <= set().union(*LAYERS), tops - set().union(*LAYERS)
