"""The house of ../shared/STYLE.md: each layer imports only the layers before it (imports inside functions too).

    constellation -> links over time -> routing -> emulation --.
                                          model -> serving -----+-> deployment -> experiments -> cli
                                                                 `-> view (reads series and results)
"""

import ast
from pathlib import Path

import pytest

import meshemu

PACKAGE = Path(meshemu.__file__).parent
BASE = "base"  # errors, config, constants, resources: every layer's foundation

ALLOWED = {
    "constellation": set(),
    "links": {"constellation"},
    "routing": {"links"},
    "emulation": {"links", "routing"},
    "model": set(),
    "serving": {"model"},  # never emulation: the same programs run on loopback and in the mesh
    "deployment": {"links", "routing", "emulation", "model", "serving"},
    "view": {"constellation", "links", "routing", "experiments"},  # reads a results folder's experiment file
    "experiments": {"constellation", "links", "routing", "emulation", "model", "serving", "deployment"},
    "cli": {"constellation", "links", "routing", "emulation", "model", "serving", "deployment", "experiments",
            "view"},
}


def _layer_of_module(name: str) -> str:
    parts = name.split(".")
    if len(parts) >= 2 and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return BASE


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("meshemu"):
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("meshemu"):
                    yield node.lineno, alias.name


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) > 1 and parts[0] in ALLOWED and "node_modules" not in parts:
            yield parts[0], path


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_before_it(layer):
    wrong = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
             for own, path in _sources() if own == layer
             for line, module in _imports(path)
             if _layer_of_module(module) not in ALLOWED[layer] | {layer, BASE}]
    assert not wrong, "\n".join(wrong)


def test_the_base_modules_import_no_layer():
    wrong = [f"{path.name}:{line} imports {module}" for path in sorted(PACKAGE.glob("*.py"))
             if path.name not in ("__main__.py",)
             for line, module in _imports(path) if _layer_of_module(module) != BASE]
    assert not wrong, "\n".join(wrong)


def test_the_layer_table_knows_every_package():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(ALLOWED), packages ^ set(ALLOWED)
