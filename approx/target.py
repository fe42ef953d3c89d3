"""Target functions of one variable given as text ("runge", "abs(x)", "tanh(20*x)"), parsed safely.

The text is checked against a whitelist of tokens (numbers, ``x``, arithmetic, and the function
names below) before sympy parses it, so no Python code can run; the result is lambdified with numpy.

Bounds (sympy evaluates constant powers exactly, so ``9**9**9`` would never finish): the text is at
most :data:`MAX_LENGTH` characters, every number literal at most :data:`MAX_NUMBER` in magnitude, every
constant exponent at most :data:`MAX_EXPONENT` in magnitude, and every constant sub-expression must
evaluate (in float64) to a finite value; all of this is checked on the syntax tree before sympy sees it.
"""
from __future__ import annotations

import ast
import math
import re

import numpy as np
from inr.errors import InputError

MAX_LENGTH = 500
MAX_NUMBER = 1e12
MAX_EXPONENT = 1000

PRESETS = {"runge": "1/(1 + 25*x**2)"}
FUNCTIONS = ("abs", "sign", "sqrt", "exp", "log", "sin", "cos", "tan", "sinh", "cosh", "tanh", "asin",
             "acos", "atan", "asinh", "acosh", "atanh", "Max", "Min", "Heaviside")
CONSTANTS = ("pi", "E")
_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|([A-Za-z][A-Za-z0-9]*)|"
                    r"(\*\*|[-+*/^(),]))")


def _check_tokens(text: str) -> None:
    pos, names = 0, set(FUNCTIONS) | set(CONSTANTS) | {"x"}
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise InputError(f"--target {text!r}: unexpected character {text[pos:].lstrip()[:1]!r} at "
                             f"position {pos}; use numbers, x, + - * / ** ^ ( ) and {', '.join(FUNCTIONS)}")
        if m.group(2) and m.group(2) not in names:
            raise InputError(f"--target {text!r}: unknown name {m.group(2)!r}; allowed: x, "
                             f"{', '.join(FUNCTIONS + CONSTANTS)}")
        pos = m.end()


_MATH = {"abs": abs, "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "sin": math.sin, "cos": math.cos,
         "tan": math.tan, "sinh": math.sinh, "cosh": math.cosh, "tanh": math.tanh, "asin": math.asin,
         "acos": math.acos, "atan": math.atan, "asinh": math.asinh, "acosh": math.acosh, "atanh": math.atanh}


def _check_bounds(text: str, src: str) -> None:
    """Refuse huge literals, huge constant exponents and constant sub-expressions that overflow, without
    evaluating anything but float64 arithmetic on already-bounded numbers."""
    if len(src) > MAX_LENGTH:
        raise InputError(f"--target is {len(src)} characters long; at most {MAX_LENGTH} are accepted")
    try:
        tree = ast.parse(src.replace("^", "**"), mode="eval")
    except SyntaxError as e:
        raise InputError(f"--target {text!r}: cannot parse ({e.msg})") from None

    def fail(what: str):
        raise InputError(f"--target {text!r}: {what}")

    def value(node):
        """float value of a constant sub-tree, None where it depends on x (or is not plain arithmetic)."""
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (int, float)):
                try:
                    v = float(node.value)
                except OverflowError:
                    fail(f"number literal too large (limit {MAX_NUMBER:g})")
                if not math.isfinite(v) or abs(v) > MAX_NUMBER:
                    fail(f"number literal {v:g} too large (limit {MAX_NUMBER:g})")
                return v
            return None
        if isinstance(node, ast.Name):
            return {"pi": math.pi, "E": math.e}.get(node.id)
        if isinstance(node, ast.UnaryOp):
            v = value(node.operand)
            return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
        if isinstance(node, ast.BinOp):
            a, b = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and b is not None and abs(b) > MAX_EXPONENT:
                fail(f"exponent {b:g} too large (limit {MAX_EXPONENT})")
            if a is None or b is None:
                return None
            try:
                if isinstance(node.op, ast.Pow):
                    v = math.pow(a, b)
                elif isinstance(node.op, ast.Mult):
                    v = a * b
                elif isinstance(node.op, ast.Div):
                    v = a / b
                elif isinstance(node.op, ast.Add):
                    v = a + b
                elif isinstance(node.op, ast.Sub):
                    v = a - b
                else:
                    return None
            except OverflowError:
                fail("a constant part overflows float64")
            except (ValueError, ZeroDivisionError):
                return None   # e.g. (-1)**0.5 or 1/0: left to sympy and the finiteness probe
            if not math.isfinite(v):
                fail("a constant part overflows float64")
            return v
        if isinstance(node, ast.Call):
            args = [value(a) for a in node.args]
            fn = _MATH.get(node.func.id) if isinstance(node.func, ast.Name) else None
            if fn is None or len(args) != 1 or args[0] is None:
                return None
            try:
                v = fn(args[0])
            except OverflowError:
                fail(f"{node.func.id}(...) of a constant overflows float64")
            except ValueError:
                return None
            if not math.isfinite(v):
                fail(f"{node.func.id}(...) of a constant overflows float64")
            return v
        for child in ast.iter_child_nodes(node):
            value(child)
        return None

    value(tree)


def parse_target(text: str):
    """``text`` -> (canonical string, sympy expression in ``x``, vectorised numpy function)."""
    import sympy as sp
    from sympy.parsing.sympy_parser import convert_xor, parse_expr, standard_transformations

    src = PRESETS.get(text.strip().lower(), text)
    if not src.strip():
        raise InputError("--target is empty")
    _check_tokens(src)
    _check_bounds(text, src)
    x = sp.Symbol("x", real=True)
    local = {"x": x, "pi": sp.pi, "E": sp.E, "abs": sp.Abs}
    local.update({name: getattr(sp, name) for name in FUNCTIONS if name not in local})
    try:
        expr = parse_expr(src, local_dict=local, transformations=standard_transformations + (convert_xor,))
    except (SyntaxError, TypeError, ValueError, sp.SympifyError) as e:
        raise InputError(f"--target {text!r}: cannot parse ({e})") from None
    if not isinstance(expr, sp.Expr) or expr.free_symbols - {x}:
        raise InputError(f"--target {text!r}: must be an expression in x alone")
    fn = sp.lambdify(x, expr, modules="numpy")

    def f(t):
        t = np.asarray(t, dtype=np.float64)
        return np.broadcast_to(np.asarray(fn(t), dtype=np.float64), t.shape).copy()

    with np.errstate(all="ignore"):
        probe = f(np.linspace(-1, 1, 1001))
    if not np.all(np.isfinite(probe)):
        raise InputError(f"--target {text!r}: not finite everywhere on [-1, 1]")
    return src, expr, f
