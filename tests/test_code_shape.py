"""The code's shape, by AST over the packages (docs/design.md, Conventions): no library function with more
than 8 parameters, no import of another package's private name, no import cycle between the project's
modules."""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("inr", "approx", "pde", "tomography", "classify")
PACKAGES = LIBRARY + ("benchmarks",)
MAX_PARAMS = 8
PARAM_CHECKED = LIBRARY


@lru_cache(maxsize=None)
def _modules() -> dict:
    """``{dotted module name: (path, AST)}`` for every module of :data:`PACKAGES`."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = (f, ast.parse(f.read_text(), str(f)))
    return out


def _where(path: Path, node) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


# ---------------------------------------------------------------------------------------------- parameters

def _is_dataclass(cls: ast.ClassDef) -> bool:
    for d in cls.decorator_list:
        d = d.func if isinstance(d, ast.Call) else d
        if (isinstance(d, ast.Name) and d.id == "dataclass") or (isinstance(d, ast.Attribute) and d.attr == "dataclass"):
            return True
    return False


def _functions(tree: ast.AST, in_class: ast.ClassDef | None = None):
    """``(function, enclosing class or None)`` for every def in ``tree``, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, in_class
            yield from _functions(node, None)
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, node)
        else:
            yield from _functions(node, in_class)


def _count(fn) -> int:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return len([n for n in names if n not in ("self", "cls")])


def too_many_parameters(packages=PARAM_CHECKED) -> list[str]:
    """Functions with more than :data:`MAX_PARAMS` parameters (``self`` / ``cls`` not counted; ``*args`` and
    ``**kwargs`` count one each).  Exempt: dataclasses (their generated ``__init__``) and the ``__init__`` of
    the ``nn.Module`` layers in ``inr/layers/``."""
    found = []
    for name, (path, tree) in _modules().items():
        if name.split(".")[0] not in packages:
            continue
        layer = name.startswith("inr.layers.")
        for fn, cls in _functions(tree):
            if cls is not None and (_is_dataclass(cls) or (layer and fn.name == "__init__")):
                continue
            n = _count(fn)
            if n > MAX_PARAMS:
                found.append(f"{_where(path, fn)} {fn.name}: {n} parameters")
    return found


# ---------------------------------------------------------------------------------------------- imports

def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The dotted name ``from ... import`` refers to (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _top_level_imports(tree: ast.Module):
    """The import statements that run when the module is imported: module level, class bodies, ``if`` /
    ``try`` / ``with`` blocks; not function bodies, not ``if TYPE_CHECKING:``."""
    todo = list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
        else:
            todo.extend(c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt))


def _imports(name: str, tree: ast.AST, top_level: bool):
    """``(node, alias, imported module, imported name or None)`` for the project's modules."""
    mods = _modules()
    is_package = mods[name][0].name == "__init__.py"
    nodes = _top_level_imports(tree) if top_level else (n for n in ast.walk(tree)
                                                       if isinstance(n, (ast.Import, ast.ImportFrom)))
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in mods:
                    yield node, alias, alias.name, None
        else:
            target = _absolute(name, node, is_package)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in mods:
                    yield node, alias, sub, None
                elif target in mods:
                    yield node, alias, target, alias.name


def _package(module: str) -> str:
    return module.split(".")[0]


def private_imports() -> list[str]:
    """``from x import _y`` and ``x._y`` where ``x`` is a module of another of the project's packages
    (dunder names aside)."""
    found = []
    mods = _modules()
    for name, (path, tree) in mods.items():
        aliases = {}   # local name -> the project's module it is bound to
        for node, alias, module, attr in _imports(name, tree, top_level=False):
            if attr is None:   # a module: bound to its alias, or ``import a.b`` binds ``a``
                top = isinstance(node, ast.Import) and alias.asname is None
                aliases[alias.name.split(".")[0] if top else (alias.asname or alias.name)] = \
                    module.split(".")[0] if top else module
            if _package(module) == _package(name):
                continue
            if attr is not None and attr.startswith("_") and not attr.startswith("__"):
                found.append(f"{_where(path, node)} imports {module}.{attr}")
            elif any(p.startswith("_") and not p.startswith("__") for p in module.split(".")):
                found.append(f"{_where(path, node)} imports the private module {module}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                chain, base = [node.attr], node.value
                while isinstance(base, ast.Attribute):
                    chain.append(base.attr)
                    base = base.value
                if not isinstance(base, ast.Name) or base.id not in aliases:
                    continue
                dotted = ".".join([aliases[base.id], *reversed(chain[1:])])
                if dotted in mods and _package(dotted) != _package(name):
                    found.append(f"{_where(path, node)} uses {dotted}.{node.attr}")
    return found


def import_cycles() -> list[str]:
    """Cycles of module-level imports between the project's modules (Tarjan's strongly connected
    components of the import graph), each as its modules."""
    graph = {name: sorted({m for _, _, m, _ in _imports(name, tree, top_level=True) if m != name})
             for name, (_, tree) in _modules().items()}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(" <-> ".join(sorted(comp)))

    for v in graph:
        if v not in index:
            visit(v)
    return out


# ---------------------------------------------------------------------------------------------- tests

def test_no_library_function_takes_more_than_eight_parameters():
    found = too_many_parameters()
    assert not found, "more than 8 parameters (group options into a dataclass):\n" + "\n".join(found)


def test_no_package_imports_another_packages_private_names():
    found = private_imports()
    assert not found, "private names of another package:\n" + "\n".join(found)


def test_no_import_cycles():
    found = import_cycles()
    assert not found, "import cycles:\n" + "\n".join(found)


if __name__ == "__main__":
    for title, f in (("parameters", lambda: too_many_parameters(LIBRARY)), ("private", private_imports),
                     ("cycles", import_cycles)):
        print(f"== {title}")
        print("\n".join(f()))
