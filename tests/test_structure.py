"""The shape of the package (issue 10): records in one leaf module, one way for imports to flow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bce_audit import formulas, records

PACKAGE = Path(records.__file__).resolve().parent


def _imports() -> dict[str, set[str]]:
    """Module -> the bce_audit modules it imports (at the top or inside a function)."""
    mods = {p.stem for p in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m in mods:
        for n in ast.walk(ast.parse((PACKAGE / f"{m}.py").read_text(encoding="utf-8"))):
            if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "bce_audit":
                parts = n.module.split(".")
                names = parts[1:2] if len(parts) > 1 else [a.name for a in n.names]
                graph[m] |= {t for t in names if t in mods and t != m}
            elif isinstance(n, ast.Import):
                graph[m] |= {a.name.split(".")[1] for a in n.names
                             if a.name.startswith("bce_audit.") and a.name.split(".")[1] in mods}
    return graph


def _third_party(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module:
            out.add(n.module.split(".")[0])
        elif isinstance(n, ast.Import):
            out |= {a.name.split(".")[0] for a in n.names}
    return out


def test_records_is_a_leaf():
    assert _imports()["records"] == set()


@pytest.mark.parametrize("module", ["report", "plot", "config", "streams", "cache", "baseline"])
def test_consumers_take_records_not_the_pipeline(module):
    assert not _imports()[module] & {"sweep", "keypoints"}, _imports()[module]


def test_no_import_cycles():
    graph = _imports()

    def reaches(a: str, b: str) -> bool:
        seen, todo = set(), [a]
        while todo:
            x = todo.pop()
            if x == b:
                return True
            if x not in seen:
                seen.add(x)
                todo += graph[x]
        return False

    cycles = sorted((a, b) for a in graph for b in graph[a] if reaches(b, a))
    assert cycles == []


def test_only_the_cli_imports_click():
    assert sorted(m.stem for m in PACKAGE.glob("*.py") if "click" in _third_party(m.stem)) == ["cli"]


def test_builtin_formula_names_are_defined_once():
    assert tuple(formulas.FORMULAS) == formulas.NAMES == records.FORMULA_NAMES
    assert records.Settings().formulas == records.FORMULA_NAMES


def test_options_are_declared_once():
    """Settings' option fields give the config keys, the flags and the JSON settings."""
    from bce_audit import cli, config

    options = records.setting_flags()
    assert set(records.Settings().as_dict()) == set(options)
    assert set(config.TYPES) == set(config.FLAGS) == set(config.SELECTION_KEYS)
    assert set(options) <= set(config.FLAGS)
    sweep_opts = {p.name: p.opts for p in cli.cli.commands["sweep"].params}
    for key, flag in config.FLAGS.items():
        assert flag in sweep_opts[key], (key, flag)  # the click option is named after its key
