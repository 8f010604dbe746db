"""The layering holds: the shared core imports no service and not the CLI, the two services do not import each
other, and every error our code raises on purpose has one root.

Read from the source with ``ast`` (imports inside functions count: a lazy import is still a dependency), so
nothing is imported and no store is opened. See ARCHITECTURE.md and journeys/errors.py.
"""

from __future__ import annotations

import ast
import builtins
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("journeys", "collector", "query", "cli")

#: What each package must not import (the CLI is the top: it may import everything).
FORBIDDEN = {
    "journeys": ("collector", "query", "cli"),
    "collector": ("query", "cli"),
    "query": ("collector", "cli"),
}

#: Exception classes that do not derive from JourneysError on purpose: private control flow, never shown.
NOT_ERRORS = {
    ("cli.demo", "_Stop"),  # ends the demo's generator early; caught where it is raised
}

_BUILTIN_EXCEPTIONS = frozenset(
    name for name, value in vars(builtins).items() if isinstance(value, type) and issubclass(value, BaseException)
)


def _modules() -> dict[str, ast.Module]:
    """Every module of the four packages by dotted name (``pkg/__init__.py`` as ``pkg``); a copy to add to."""
    return dict(_parsed())


@functools.cache
def _parsed() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return found


def _imports(module: str, tree: ast.Module) -> list[tuple[int, str]]:
    """(line, dotted name) of every import anywhere in the module, relative ones resolved."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package upwards (modules here are not packages)
                base = ".".join(module.split(".")[: -node.level] + ([base] if base else []))
            found.append((node.lineno, base))
    return found


def layering_violations(modules: dict[str, ast.Module]) -> list[str]:
    violations = []
    for module, tree in modules.items():
        forbidden = FORBIDDEN.get(module.split(".")[0], ())
        for line, name in _imports(module, tree):
            if name.split(".")[0] in forbidden:
                violations.append(f"{module.replace('.', '/')}.py:{line} imports {name}")
    return violations


def _classes(modules: dict[str, ast.Module]) -> dict[tuple[str, str], list[tuple[str, str] | str]]:
    """Every class at any depth, keyed (module, name), with its bases resolved: a (module, name) for a class
    of ours (defined in the module or imported from one of ours), the bare name otherwise."""
    classes: dict[tuple[str, str], list[tuple[str, str] | str]] = {}
    for module, tree in modules.items():
        imported: dict[str, tuple[str, str]] = {}
        local = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                for alias in node.names:
                    imported[alias.asname or alias.name] = (node.module, alias.name)
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            bases: list[tuple[str, str] | str] = []
            for base in node.bases:
                text = ast.unparse(base)
                if text in local:
                    bases.append((module, text))
                elif text in imported:
                    bases.append(imported[text])
                elif isinstance(base, ast.Attribute):  # errors.JourneysError, journeys.errors.JourneysError
                    owner = ast.unparse(base.value)
                    owner = ".".join(imported[owner]) if owner in imported else owner
                    bases.append((owner, base.attr) if owner in modules else text)
                else:
                    bases.append(text)
            classes[(module, node.name)] = bases
    return classes


def error_violations(modules: dict[str, ast.Module]) -> list[str]:
    """Exception classes of ours that reach a built-in exception without going through JourneysError."""
    classes = _classes(modules)
    root = ("journeys.errors", "JourneysError")

    def reaches(cls: tuple[str, str] | str, seen: frozenset[tuple[str, str]]) -> tuple[bool, bool]:
        """(is an exception, goes through JourneysError)."""
        if cls == root:
            return True, True
        if isinstance(cls, str):  # a built-in, or another library's (asyncio.TimeoutError, aiohttp.ClientError)
            return cls in _BUILTIN_EXCEPTIONS or cls.endswith(("Error", "Exception")), False
        if cls not in classes or cls in seen:
            return False, False
        results = [reaches(base, seen | {cls}) for base in classes[cls]]
        return any(e for e, _ in results), any(r for _, r in results)

    violations = []
    for cls in classes:
        if cls == root or cls in NOT_ERRORS:
            continue
        is_exception, rooted = reaches(cls, frozenset())
        if is_exception and not rooted:
            violations.append(f"{cls[0]}.{cls[1]} derives from {', '.join(map(str, classes[cls]))}, not JourneysError")
    return violations


def test_the_core_imports_no_service_and_the_services_not_each_other() -> None:
    assert layering_violations(_modules()) == []


def test_every_error_of_ours_derives_from_journeys_error() -> None:
    modules = _modules()
    assert ("cli.demo", "_Stop") in _classes(modules), "NOT_ERRORS names a class that is gone"
    assert error_violations(modules) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("journeys.keys", "def f():\n    from query.maps import slug\n", "journeys/keys.py:2 imports query.maps"),
        ("journeys.config", "import cli.main\n", "journeys/config.py:1 imports cli.main"),
        ("collector.app", "from query import definitions\n", "collector/app.py:1 imports query"),
        ("query.app", "async def f():\n    import collector.spool\n", "query/app.py:2 imports collector.spool"),
        ("query.facts", "from ..collector import spool\n", "query/facts.py:1 imports collector"),
    ],
)
def test_a_forbidden_import_is_found(module: str, source: str, expected: str) -> None:
    """The check itself: a bad import, at the top or inside a function, is reported where it is."""
    assert layering_violations({module: ast.parse(source)}) == [expected]


@pytest.mark.parametrize(
    "source",
    [
        "class Oops(Exception):\n    pass\n",
        "class Oops(ValueError):\n    pass\n",
        "class Base(RuntimeError):\n    pass\n\n\nclass Oops(Base):\n    pass\n",
        "import asyncio\n\n\nclass Oops(asyncio.TimeoutError):\n    pass\n",
    ],
)
def test_an_error_outside_the_root_is_found(source: str) -> None:
    """The check itself: a new exception class that skips JourneysError, directly or through a base, fails."""
    modules = _modules()
    modules["query.oops"] = ast.parse(source)
    assert any(v.startswith("query.oops.Oops ") for v in error_violations(modules)), error_violations(modules)


def test_an_error_through_the_root_passes() -> None:
    modules = _modules()
    modules["query.fine"] = ast.parse(
        "from journeys.errors import JourneysError\nfrom journeys import errors\n\n"
        "class Fine(JourneysError, ValueError):\n    pass\n\n\nclass AlsoFine(errors.JourneysError):\n    pass\n"
    )
    assert error_violations(modules) == []


# --------------------------------------------------------------------------------------------------------
# One convention per service: app keys in one module, routes declared per module, added by the app factory
# --------------------------------------------------------------------------------------------------------

#: Where each service keeps its app keys, and its app factory (the one place that adds route tables).
APP_KEYS = {"collector": "collector.appkeys", "query": "query.appkeys"}
APP_FACTORIES = {"collector": "collector.app", "query": "query.app"}


def convention_violations(modules: dict[str, ast.Module]) -> list[str]:
    """``web.AppKey(…)`` outside a service's appkeys module; a route added to a router anywhere but by
    ``router.add_routes`` in the app factory (a route module declares a ``web.RouteTableDef``)."""
    found = []
    for module, tree in modules.items():
        service = module.split(".")[0]
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            name = node.func.attr
            if name == "AppKey" and module != APP_KEYS.get(service):
                found.append(f"{module}:{node.lineno} declares an AppKey outside {APP_KEYS.get(service)}")
            target = node.func.value
            on_router = isinstance(target, ast.Attribute) and target.attr == "router"
            adds = name.startswith("add_")
            if on_router and adds and (name != "add_routes" or module != APP_FACTORIES.get(service)):
                found.append(f"{module}:{node.lineno} router.{name}: declare routes in a RouteTableDef instead")
    return found


def test_app_keys_live_in_one_module_and_routes_are_declared_per_module() -> None:
    assert convention_violations(_modules()) == []


@pytest.mark.parametrize(
    "module, source",
    [
        ("collector.email", "from aiohttp import web\nKEY = web.AppKey('k', int)\n"),
        ("query.kpis_api", "def add(app):\n    app.router.add_get('/x', None)\n"),
        ("collector.app", "def create_app(app):\n    app.router.add_post('/x', None)\n"),
    ],
)
def test_a_route_or_key_outside_the_convention_is_found(module: str, source: str) -> None:
    modules = _modules()
    modules[module] = ast.parse(source)
    assert convention_violations(modules)
