"""Target functions of one variable given as text ("runge", "abs(x)", "tanh(20*x)"), parsed safely.

The text is checked against a whitelist of tokens (numbers, ``x``, arithmetic, and the function
names below) before sympy parses it, so no Python code can run; the result is lambdified with numpy.
"""
from __future__ import annotations

import re

import numpy as np

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
            raise ValueError(f"--target {text!r}: unexpected character {text[pos:].lstrip()[:1]!r} at "
                             f"position {pos}; use numbers, x, + - * / ** ^ ( ) and {', '.join(FUNCTIONS)}")
        if m.group(2) and m.group(2) not in names:
            raise ValueError(f"--target {text!r}: unknown name {m.group(2)!r}; allowed: x, "
                             f"{', '.join(FUNCTIONS + CONSTANTS)}")
        pos = m.end()


def parse_target(text: str):
    """``text`` -> (canonical string, sympy expression in ``x``, vectorised numpy function)."""
    import sympy as sp
    from sympy.parsing.sympy_parser import convert_xor, parse_expr, standard_transformations

    src = PRESETS.get(text.strip().lower(), text)
    if not src.strip():
        raise ValueError("--target is empty")
    _check_tokens(src)
    x = sp.Symbol("x", real=True)
    local = {"x": x, "pi": sp.pi, "E": sp.E, "abs": sp.Abs}
    local.update({name: getattr(sp, name) for name in FUNCTIONS if name not in local})
    try:
        expr = parse_expr(src, local_dict=local, transformations=standard_transformations + (convert_xor,))
    except (SyntaxError, TypeError, ValueError, sp.SympifyError) as e:
        raise ValueError(f"--target {text!r}: cannot parse ({e})") from None
    if not isinstance(expr, sp.Expr) or expr.free_symbols - {x}:
        raise ValueError(f"--target {text!r}: must be an expression in x alone")
    fn = sp.lambdify(x, expr, modules="numpy")

    def f(t):
        t = np.asarray(t, dtype=np.float64)
        return np.broadcast_to(np.asarray(fn(t), dtype=np.float64), t.shape).copy()

    with np.errstate(all="ignore"):
        probe = f(np.linspace(-1, 1, 1001))
    if not np.all(np.isfinite(probe)):
        raise ValueError(f"--target {text!r}: not finite everywhere on [-1, 1]")
    return src, expr, f
