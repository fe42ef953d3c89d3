"""Expressions in the problem's coordinates ("sin(pi*x)*sin(pi*y)", "exp(-t)*x*(1-x)"), parsed safely.

:func:`parse` is the one entry point (so it can later be switched to a shared bounded parser):

1. the text is at most :data:`MAX_LENGTH` characters of numbers, the allowed variable names, the
   whitelisted functions and constants, ``+ - * / ** ^ ( ) ,`` (a token whitelist: no attribute access,
   no strings, no other names, so no Python code can run);
2. its syntax tree is evaluated in float64 (numpy) at probe points inside the domain, node by node, before
   sympy sees it: every number literal is at most :data:`MAX_NUMBER` in magnitude, every exponent at most
   :data:`MAX_EXPONENT` at every probe point, and every part of the expression must be finite there.  This
   bounds the expression by its *value*, not its spelling: ``(x-x+9)**(x-x+9)**(x-x+9)`` is refused
   because its exponent is 9^9 at the probes, whatever the spelling;
3. sympy's ``parse_expr`` builds the expression (the derivatives of a manufactured solution come from it),
   and :func:`to_torch` turns it into a differentiable torch function by walking the sympy tree (no
   generated code, no ``eval`` of the text).
"""
from __future__ import annotations

import ast
import math
import re
from typing import Callable, Sequence

import numpy as np
import torch

from inr.errors import InputError

MAX_LENGTH = 500
MAX_NUMBER = 1e12
MAX_EXPONENT = 1000
MAX_NODES = 400

FUNCTIONS = ("abs", "sign", "sqrt", "exp", "log", "sin", "cos", "tan", "sinh", "cosh", "tanh", "asin", "acos",
             "atan", "asinh", "acosh", "atanh", "Max", "Min")
CONSTANTS = ("pi", "E")
_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|"
                    r"(\*\*|[-+*/^(),]))")

_NP = {"abs": np.abs, "sign": np.sign, "sqrt": np.sqrt, "exp": np.exp, "log": np.log, "sin": np.sin,
       "cos": np.cos, "tan": np.tan, "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh, "asin": np.arcsin,
       "acos": np.arccos, "atan": np.arctan, "asinh": np.arcsinh, "acosh": np.arccosh, "atanh": np.arctanh}


def _fail(name: str, text: str, what: str):
    raise InputError(f"{name} {text!r}: {what}")


def _check_tokens(text: str, name: str, variables: Sequence[str]) -> None:
    allowed = set(FUNCTIONS) | set(CONSTANTS) | set(variables)
    pos, src = 0, text.rstrip()
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m or m.end() == pos:
            _fail(name, text, f"unexpected character {src[pos:].lstrip()[:1]!r} at position {pos}; use numbers, "
                              f"{', '.join(variables)}, + - * / ** ^ ( ) and {', '.join(FUNCTIONS + CONSTANTS)}")
        if m.group(2) and m.group(2) not in allowed:
            _fail(name, text, f"unknown name {m.group(2)!r}; allowed: {', '.join(variables)}, "
                              f"{', '.join(FUNCTIONS + CONSTANTS)}")
        pos = m.end()


def _probe_values(tree: ast.AST, probes: dict, name: str, text: str) -> None:
    """Evaluate every node at the probe points in float64; refuse huge literals and exponents and any
    non-finite part (module docstring, step 2)."""
    count = 0

    def ev(node):
        nonlocal count
        count += 1
        if count > MAX_NODES:
            _fail(name, text, f"more than {MAX_NODES} operations")
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            try:
                v = float(node.value)
            except OverflowError:
                v = math.inf
            if not math.isfinite(v) or abs(v) > MAX_NUMBER:
                _fail(name, text, f"number literal too large (limit {MAX_NUMBER:g})")
            return np.float64(v)
        if isinstance(node, ast.Name):
            if node.id in probes:
                return probes[node.id]
            if node.id in ("pi", "E"):
                return np.float64(math.pi if node.id == "pi" else math.e)
            _fail(name, text, f"{node.id!r} is a function; call it with ( )")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow):
                if not np.all(np.abs(b) <= MAX_EXPONENT):
                    _fail(name, text, f"an exponent reaches {float(np.max(np.abs(b))):.3g} (limit {MAX_EXPONENT})")
                v = np.power(a, b)
            else:
                v = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply,
                     ast.Div: np.divide}[type(node.op)](a, b)
            return _finite(v, name, text)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            fn = node.func.id
            if fn not in FUNCTIONS:
                _fail(name, text, f"unknown function {fn!r}")
            args = [ev(a) for a in node.args]
            if fn in ("Max", "Min"):
                if len(args) < 2:
                    _fail(name, text, f"{fn} needs at least two arguments")
                v = args[0]
                for a in args[1:]:
                    v = np.maximum(v, a) if fn == "Max" else np.minimum(v, a)
                return v
            if len(args) != 1:
                _fail(name, text, f"{fn} takes one argument, got {len(args)}")
            return _finite(_NP[fn](args[0]), name, text, f"{fn}(...)")
        _fail(name, text, "only numbers, variables, + - * / ** and function calls are allowed")

    with np.errstate(all="ignore"):
        ev(tree)


def _finite(v, name, text, what="a part of the expression"):
    if not np.all(np.isfinite(v)):
        _fail(name, text, f"{what} is not finite (or not real) at points inside the domain")
    return v


def _probes(variables: Sequence[str], bounds: Sequence[tuple] | None) -> dict:
    g = np.random.default_rng(12345)
    out = {}
    for i, v in enumerate(variables):
        lo, hi = bounds[i] if bounds is not None and i < len(bounds) else (0.0, 1.0)
        out[v] = lo + (hi - lo) * (0.05 + 0.9 * g.random(16))
    return out


def parse_sympy(text: str, variables: Sequence[str], *, name: str = "expression",
                bounds: Sequence[tuple] | None = None):
    """``text`` -> a sympy expression in the symbols ``variables`` (real); the checks of the module
    docstring, with probe points inside ``bounds`` (one (lo, hi) per variable; default [0, 1]).
    Raises :class:`inr.errors.InputError` naming ``name``."""
    import sympy as sp
    from sympy.parsing.sympy_parser import convert_xor, parse_expr, standard_transformations

    if not isinstance(text, str):
        raise InputError(f"{name} must be text, got {type(text).__name__}")
    if not text.strip():
        raise InputError(f"{name} is empty")
    if len(text) > MAX_LENGTH:
        raise InputError(f"{name} is {len(text)} characters long; at most {MAX_LENGTH} are accepted")
    _check_tokens(text, name, variables)
    try:
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        _fail(name, text, f"cannot parse ({getattr(e, 'msg', None) or type(e).__name__})")
    try:
        _probe_values(tree, _probes(variables, bounds), name, text)
    except RecursionError:
        _fail(name, text, "nested too deeply")
    syms = {v: sp.Symbol(v, real=True) for v in variables}
    local = {**syms, "pi": sp.pi, "E": sp.E, "abs": sp.Abs}
    local.update({f: getattr(sp, f) for f in FUNCTIONS if f not in local})
    try:
        expr = parse_expr(text.strip(), local_dict=local, global_dict={"Integer": sp.Integer, "Float": sp.Float,
                                                                       "Rational": sp.Rational, "Symbol": sp.Symbol},
                          transformations=standard_transformations + (convert_xor,))
    except (SyntaxError, TypeError, ValueError, AttributeError, sp.SympifyError) as e:
        _fail(name, text, f"cannot parse ({type(e).__name__})")
    if isinstance(expr, (int, float)):
        expr = sp.Float(expr)
    if not isinstance(expr, sp.Expr) or expr.free_symbols - set(syms.values()):
        _fail(name, text, f"must be an expression in {', '.join(variables)}")
    if expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan, sp.I):
        _fail(name, text, "is not a finite real expression")
    return expr


def parse(spec, variables: Sequence[str], *, name: str = "expression",
          bounds: Sequence[tuple] | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """An expression or a function of the coordinates -> ``f(X) -> (N, 1)`` for X of shape (N, len(variables)).

    ``spec``: text (parsed by :func:`parse_sympy`), a number, a sympy expression, or a Python callable
    ``f(X)`` returning N values (used as given; its output is reshaped to (N, 1)).  Raises
    :class:`inr.errors.InputError` naming ``name`` on bad text."""
    import sympy as sp

    if callable(spec) and not isinstance(spec, sp.Basic):
        def call(X, _f=spec):
            y = _f(X)
            y = y if torch.is_tensor(y) else torch.as_tensor(np.asarray(y), dtype=X.dtype, device=X.device)
            return (y * torch.ones(X.shape[0], dtype=X.dtype, device=X.device)).reshape(-1, 1) \
                if y.numel() == 1 else y.reshape(-1, 1)
        return call
    if isinstance(spec, bool):
        raise InputError(f"{name} must be an expression, a number or a function, got {spec!r}")
    if isinstance(spec, (int, float)):
        if not math.isfinite(spec):
            raise InputError(f"{name} must be finite, got {spec}")
        spec = sp.Float(spec)
    expr = spec if isinstance(spec, sp.Basic) else parse_sympy(spec, variables, name=name, bounds=bounds)
    return to_torch(expr, variables)


_TORCH = {"sin": torch.sin, "cos": torch.cos, "tan": torch.tan, "exp": torch.exp, "log": torch.log,
          "sqrt": torch.sqrt, "sinh": torch.sinh, "cosh": torch.cosh, "tanh": torch.tanh, "asin": torch.asin,
          "acos": torch.acos, "atan": torch.atan, "asinh": torch.asinh, "acosh": torch.acosh,
          "atanh": torch.atanh, "Abs": torch.abs, "sign": torch.sign}


def to_torch(expr, variables: Sequence[str]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A sympy expression -> a differentiable torch function of X (N, len(variables)) -> (N, 1), built by
    walking the expression tree (no code generation)."""
    import sympy as sp

    index = {v: i for i, v in enumerate(variables)}

    def ev(e, X):
        if e.is_Symbol:
            return X[:, index[e.name]]
        if e.is_Number or e in (sp.pi, sp.E) or e.is_NumberSymbol:
            return torch.full((X.shape[0],), float(e), dtype=X.dtype, device=X.device)
        if e.is_Add:
            out = ev(e.args[0], X)
            for a in e.args[1:]:
                out = out + ev(a, X)
            return out
        if e.is_Mul:
            out = ev(e.args[0], X)
            for a in e.args[1:]:
                out = out * ev(a, X)
            return out
        if e.is_Pow:
            base, ex = e.args
            if ex.is_Number:
                p = float(ex)
                if p == 0.5:
                    return torch.sqrt(ev(base, X))
                if float(p).is_integer():
                    return ev(base, X) ** int(p)
                return ev(base, X) ** p
            if base == sp.E:
                return torch.exp(ev(ex, X))
            return ev(base, X) ** ev(ex, X)
        if isinstance(e, (sp.Max, sp.Min)):
            out = ev(e.args[0], X)
            for a in e.args[1:]:
                out = torch.maximum(out, ev(a, X)) if isinstance(e, sp.Max) else torch.minimum(out, ev(a, X))
            return out
        fn = _TORCH.get(type(e).__name__)
        if fn is not None and len(e.args) == 1:
            return fn(ev(e.args[0], X))
        if isinstance(e, sp.Piecewise) or type(e).__name__ == "Heaviside":
            raise InputError(f"expression {e}: {type(e).__name__} is not supported")
        raise InputError(f"expression {e}: cannot evaluate {type(e).__name__}")

    def f(X: torch.Tensor) -> torch.Tensor:
        return ev(expr, X).reshape(-1, 1)

    f.expr = expr   # type: ignore[attr-defined]
    return f
