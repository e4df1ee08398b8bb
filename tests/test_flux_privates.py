"""No test and no model reads a private member of a flux object; no model imports a sibling.

The fluxes publish what their models, Jacobians and tests need (``edge_state`` and its frozen
per-edge state, ``block_values``, the pattern's ``indptr``/``indices``/``slots``, ``limited``,
``beta``, ...). The rule checked here, on the syntax trees of ``tests/`` and
``fem_crossdiff/models/``: no attribute access ``X._name`` (single underscore, not a dunder)
where ``X`` is a name conventionally bound to a flux (``flux``, ``f``) or any ``.flux``
attribute (``s.model.flux._aux``). A flux's own methods use ``self``, which the rule allows.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Names that hold flux objects in the library and the tests.
FLUX_NAMES = {"flux", "f"}


def flux_private_reads(source: str) -> list[tuple[int, str]]:
    """``(line, expression)`` of every private member read through a flux in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__"):
            continue
        owner = node.value
        through_flux = ((isinstance(owner, ast.Name) and owner.id in FLUX_NAMES)
                        or (isinstance(owner, ast.Attribute) and owner.attr == "flux"))
        if through_flux:
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_rule_sees_private_reads():
    """The checker flags the forms that were in use (so a clean tree means something)."""
    sample = ("a = s.model.flux._aux['clamp']\n"
              "b = f._edge_terms(rho)[1]\n"
              "c = flux._indptr\n"
              "d = self._cache\n"
              "e = flux.__class__\n"
              "g = ctx.flux.block_values\n")
    assert sorted(line for line, _ in flux_private_reads(sample)) == [1, 2, 3]


def test_no_private_flux_members_in_tests_and_models():
    """Every ``.py`` file under ``tests/`` and ``fem_crossdiff/models/`` obeys the rule."""
    files = sorted((ROOT / "tests").glob("*.py")) + sorted(
        (ROOT / "fem_crossdiff" / "models").rglob("*.py"))
    assert len(files) > 20
    bad = [f"{path.relative_to(ROOT)}:{line}: {expr}"
           for path in files
           for line, expr in flux_private_reads(path.read_text())]
    assert not bad, "private flux members read:\n" + "\n".join(bad)


#: The models: one module or folder each under ``fem_crossdiff/models/``.
MODEL_UNITS = {"upwind", "galerkin", "muscl", "afc", "nonlocal_system"}


def _imported(path: Path) -> set[str]:
    """Dotted names imported by ``path`` (``from a import b`` gives ``a`` and ``a.b``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_model_imports_a_sibling_and_discretisation_imports_no_model():
    """Each model reads alone; the P1 machinery below them imports none of them."""
    models = ROOT / "fem_crossdiff" / "models"
    bad = []
    for path in sorted(models.rglob("*.py")):
        rel = path.relative_to(models)
        unit = rel.parts[0].removesuffix(".py")
        if unit not in MODEL_UNITS:
            continue  # base, registry, shared Jacobians: used by all
        for name in _imported(path):
            parts = name.split(".")
            if (parts[:2] == ["fem_crossdiff", "models"] and len(parts) > 2
                    and parts[2] in MODEL_UNITS - {unit}):
                bad.append(f"models/{rel} imports {name}")
    for path in sorted((ROOT / "fem_crossdiff" / "discretisation").glob("*.py")):
        bad += [f"discretisation/{path.name} imports {name}" for name in _imported(path)
                if name.startswith("fem_crossdiff.models")]
    assert not bad, "\n".join(bad)


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """The string constants of a module that are not docstrings, with their lines."""
    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docs]


def test_no_scheme_limiter_or_option_name_outside_models():
    """The registry is the only list: no code outside ``models/`` names a scheme or option."""
    from fem_crossdiff.models import entries
    from fem_crossdiff.models.muscl.options import LIMITER_CLASSES

    names = {e.scheme for e in entries()} | set(LIMITER_CLASSES)
    for e in entries():
        names |= set(e.option_names())
    assert {"muscl", "upwind", "smooth-sensor", "limiter"} <= names
    bad = [f"{path.relative_to(ROOT)}:{line}: {value!r}"
           for path in sorted((ROOT / "fem_crossdiff").rglob("*.py"))
           if "models" not in path.relative_to(ROOT).parts
           for line, value in _code_strings(path) if value in names]
    assert not bad, "names of the registry written outside models/:\n" + "\n".join(bad)
