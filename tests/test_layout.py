"""The package's import layers (README, "Layout"): the contract and the model library sit below
everything that uses them; nothing imports upward, and generation never imports the trainer."""

from __future__ import annotations

import ast
from pathlib import Path

import craftsman_platform

ROOT = Path(craftsman_platform.__file__).parent
BASE = {"errors", "paths", "corpora", "warp_setup"}
# what each part may import from the package (besides itself)
ALLOWED = {
    "errors": set(),
    "paths": set(),
    "corpora": set(),
    "warp_setup": set(),
    "logger": BASE,
    "shapedata": BASE,
    "geometry": BASE | {"shapedata"},
    "models": BASE | {"shapedata"},
    "raycluster": BASE,
    # models: the latents pack encodes; logger: the dataset report's W&B tables
    "pipelines": BASE | {"shapedata", "geometry", "models", "raycluster", "logger"},
    "training": BASE | {"shapedata", "models", "raycluster", "logger"},
    "inference": BASE | {"shapedata", "models"},
    "evaluation": BASE | {"shapedata", "geometry", "models", "inference", "logger"},
    # the command line sees everything
    "schemas": {"evaluation", "geometry", "inference", "pipelines", "training"},
    "cli_help": BASE,
    "cli": BASE | {"cli_help", "schemas"},
}


def package_imports() -> dict[str, dict[str, set[str]]]:
    """part -> {imported part -> files importing it}."""
    found: dict[str, dict[str, set[str]]] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        part = rel.parts[0].removesuffix(".py")
        if part == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("craftsman_platform."):
                    target = name.split(".")[1]
                    if target != part:
                        found.setdefault(part, {}).setdefault(target, set()).add(str(rel))
    return found


def test_every_part_has_a_layer():
    parts = {p.name.removesuffix(".py") for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert parts - {"__init__"} == set(ALLOWED)


def test_nothing_imports_upward():
    wrong = [
        f"{part} imports {target} ({', '.join(sorted(files))})"
        for part, targets in package_imports().items()
        for target, files in targets.items()
        if target not in ALLOWED[part]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_model_library_and_the_contract_do_not_import_training():
    imports = package_imports()
    for part in ("models", "shapedata", "inference", "evaluation"):
        assert "training" not in imports.get(part, {}), part
