"""Target functions of one variable given as text ("runge", "abs(x)", "tanh(20*x)"), parsed safely.

The text is checked against a whitelist of tokens (numbers, ``x``, arithmetic, and the function
names below) before sympy parses it, so no Python code can run; the result is lambdified with numpy.

Bounds (sympy evaluates constant powers exactly, so ``9**9**9`` would never finish): the text is at
most :data:`MAX_LENGTH` characters and every number literal at most :data:`MAX_NUMBER` in magnitude;
every sub-expression is evaluated (mpmath, 15 digits) at a few sample points before sympy sees it, and
one whose value is the same at all of them -- a constant, however it is spelled (``9``, ``x-x+9``,
``Max(9,9)``, ``sign(1)*9``) -- must be at most :data:`MAX_EXPONENT` in magnitude where it is an exponent
and lie within float64's range (at least 2**-:data:`MAX_BITS` in magnitude unless 0).  :func:`parse_expression` is the public parser (any variables; the
PDE tool parses its source and boundary expressions with it); :func:`parse_target` adds the 1-D target's
numpy function and its finiteness probe on [-1, 1].
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


def _check_tokens(text: str, variables: tuple = ("x",), name: str = "--target") -> None:
    pos, names = 0, set(FUNCTIONS) | set(CONSTANTS) | set(variables)
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise InputError(f"{name} {text!r}: unexpected character {text[pos:].lstrip()[:1]!r} at "
                             f"position {pos}; use numbers, {', '.join(variables)}, + - * / ** ^ ( ) and {', '.join(FUNCTIONS)}")
        if m.group(2) and m.group(2) not in names:
            raise InputError(f"{name} {text!r}: unknown name {m.group(2)!r}; allowed: "
                             f"{', '.join(variables + FUNCTIONS + CONSTANTS)}")
        pos = m.end()


# Sample points at which every sub-expression is evaluated (mpmath, 15 digits, unbounded exponent range):
# a sub-expression with the same value at all of them is a constant that sympy may fold exactly, so its
# value -- not its spelling -- is bounded.  Irrational-looking values avoid accidental zeros.
_SAMPLES = (-0.8713, -0.3141, 0.1737, 0.5923, 0.9419)
MAX_BITS = 4096   # a constant's magnitude must lie in [2**-MAX_BITS, float64's largest] (or be exactly 0)


def _mp_functions():
    import mpmath as mp

    def sign(v):
        return mp.sign(v) if not isinstance(v, mp.mpc) else None

    def heaviside(v, h0=mp.mpf(0.5)):
        if isinstance(v, mp.mpc):
            return None
        return mp.mpf(1) if v > 0 else mp.mpf(0) if v < 0 else h0

    def extreme(pick):
        def f(*vals):
            if not vals or any(isinstance(v, mp.mpc) for v in vals):
                return None
            return pick(vals)
        return f

    one = {"abs": abs, "sqrt": mp.sqrt, "exp": mp.exp, "log": mp.log, "sin": mp.sin, "cos": mp.cos,
           "tan": mp.tan, "sinh": mp.sinh, "cosh": mp.cosh, "tanh": mp.tanh, "asin": mp.asin, "acos": mp.acos,
           "atan": mp.atan, "asinh": mp.asinh, "acosh": mp.acosh, "atanh": mp.atanh, "sign": sign}
    return one, {"Max": extreme(max), "Min": extreme(min), "Heaviside": heaviside}


def _check_bounds(text: str, src: str, variables: tuple, name: str) -> None:
    """Refuse huge literals, and any sub-expression whose *value* is a constant (the same at every sample
    point, however it is spelled: ``9``, ``x-x+9``, ``Max(9,9)``, ``sign(1)*9``) that is a huge exponent
    (> :data:`MAX_EXPONENT` in magnitude) or a number that overflows float64 or is below 2**-:data:`MAX_BITS`, before
    sympy folds it exactly.  Everything is evaluated with mpmath at 15 digits, so the check itself is cheap:
    an exponent is bounded before the power is computed, and a value above the bound stops the evaluation."""
    import mpmath as mp

    if len(src) > MAX_LENGTH:
        raise InputError(f"{name} is {len(src)} characters long; at most {MAX_LENGTH} are accepted")
    try:
        tree = ast.parse(src.replace("^", "**"), mode="eval")
    except SyntaxError as e:
        raise InputError(f"{name} {text!r}: cannot parse ({e.msg})") from None
    one, many = _mp_functions()
    n = len(_SAMPLES)
    points = [{v: mp.mpf(_SAMPLES[(k + 2 * j) % n]) for j, v in enumerate(variables)} for k in range(n)]
    big, tiny = mp.mpf(2) ** 1024, mp.mpf(2) ** -MAX_BITS

    def fail(what: str):
        raise InputError(f"{name} {text!r}: {what}")

    def constant(vals):
        return vals is not None and all(v == vals[0] for v in vals[1:])

    def bounded(vals):
        """``vals`` if every value is finite and within 2**+-MAX_BITS; a constant outside fails; a
        varying one becomes None (unknown: sympy keeps it symbolic, the finiteness probe judges it)."""
        if vals is None:
            return None
        if any(v is None for v in vals):
            return None
        mags = [abs(v) for v in vals]
        large = any(not mp.isfinite(m) or m >= big for m in mags)
        small = any(m != 0 and m < tiny for m in mags)
        if not (large or small):
            return vals
        if constant(vals) or all(not mp.isfinite(m) for m in mags):
            fail("a constant part overflows float64" if large else
                 f"a constant part is below 2**-{MAX_BITS} in magnitude")
        return None

    def apply(fn, *args):
        if any(a is None for a in args):
            return None
        out = []
        for k in range(n):
            try:
                out.append(fn(*(a[k] for a in args)))
            except (ZeroDivisionError, ValueError, TypeError, OverflowError):
                return None
        return bounded(out)

    def value(node):
        """The sub-tree's values at the sample points, or None where unknown."""
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
                try:
                    v = float(node.value)
                except OverflowError:
                    fail(f"number literal too large (limit {MAX_NUMBER:g})")
                if not math.isfinite(v) or abs(v) > MAX_NUMBER:
                    fail(f"number literal {v:g} too large (limit {MAX_NUMBER:g})")
                return [mp.mpf(str(node.value))] * n
            return None
        if isinstance(node, ast.Name):
            if node.id in variables:
                return [p[node.id] for p in points]
            c = {"pi": mp.pi, "E": mp.e}.get(node.id)
            return None if c is None else [mp.mpf(c)] * n
        if isinstance(node, ast.UnaryOp):
            v = value(node.operand)
            if isinstance(node.op, ast.USub):
                return apply(lambda a: -a, v)
            return v if isinstance(node.op, ast.UAdd) else None
        if isinstance(node, ast.BinOp):
            a, b = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow):
                if b is not None and any(abs(e) > MAX_EXPONENT for e in b) and (constant(b) or constant(a)):
                    fail(f"exponent {mp.nstr(b[0], 6)} too large (limit {MAX_EXPONENT})")
                if b is not None and any(abs(e) > MAX_EXPONENT for e in b):
                    return None   # x**(2000*x): left symbolic by sympy; the finiteness probe judges it
                return apply(lambda u, w: u ** w, a, b)
            ops = {ast.Mult: lambda u, w: u * w, ast.Div: lambda u, w: u / w, ast.Add: lambda u, w: u + w,
                   ast.Sub: lambda u, w: u - w, ast.FloorDiv: lambda u, w: mp.floor(u / w)}
            fn = ops.get(type(node.op))
            return None if fn is None else apply(fn, a, b)
        if isinstance(node, ast.Call):
            args = [value(a) for a in node.args]
            fname = node.func.id if isinstance(node.func, ast.Name) else None
            if fname in one and len(args) == 1:
                return apply(one[fname], args[0])
            if fname in many and args:
                return apply(many[fname], *args)
            return None
        for child in ast.iter_child_nodes(node):
            value(child)
        return None

    with mp.workdps(15):
        value(tree)


def parse_expression(text: str, variables: tuple = ("x",), *, name: str = "--target"):
    """A sympy expression from ``text``, parsed safely and bounded by value.

    ``text`` may use numbers, the ``variables`` (real symbols), ``pi``, ``E``, ``+ - * / ** ^ ( ) ,`` and
    the functions in :data:`FUNCTIONS`; nothing else is accepted (no Python code can run).  Before sympy
    sees it, the text is at most :data:`MAX_LENGTH` characters, every literal at most :data:`MAX_NUMBER`,
    and every sub-expression whose value is a constant (however spelled) a bounded number and, as an
    exponent, at most :data:`MAX_EXPONENT` (:func:`_check_bounds`), so no spelling of a huge power hangs.
    ``name`` is the option named in error messages.

    Raises:
        InputError: empty text, a character or name not allowed, a bound exceeded, unparseable text, or an
            expression in other symbols.
    """
    import sympy as sp
    from sympy.parsing.sympy_parser import convert_xor, parse_expr, standard_transformations

    variables = tuple(variables)
    if not str(text).strip():
        raise InputError(f"{name} is empty")
    _check_tokens(text, variables, name)
    _check_bounds(text, text, variables, name)
    symbols = {v: sp.Symbol(v, real=True) for v in variables}
    local = {"pi": sp.pi, "E": sp.E, "abs": sp.Abs, **symbols}
    local.update({f: getattr(sp, f) for f in FUNCTIONS if f not in local})
    try:
        expr = parse_expr(text, local_dict=local, transformations=standard_transformations + (convert_xor,))
    except (SyntaxError, TypeError, ValueError, ZeroDivisionError, sp.SympifyError) as e:
        raise InputError(f"{name} {text!r}: cannot parse ({' '.join(str(e).split())})") from None
    if not isinstance(expr, sp.Expr) or expr.free_symbols - set(symbols.values()):
        raise InputError(f"{name} {text!r}: must be an expression in {', '.join(variables)} alone")
    if expr.has(sp.zoo, sp.nan, sp.oo):
        raise InputError(f"{name} {text!r}: not finite (it holds a division by zero or an infinity)")
    return expr


def parse_target(text: str):
    """``text`` -> (canonical string, sympy expression in ``x``, vectorised numpy function)."""
    import sympy as sp

    src = PRESETS.get(text.strip().lower(), text)
    if not src.strip():
        raise InputError("--target is empty")
    expr = parse_expression(src, ("x",), name="--target")
    x = sp.Symbol("x", real=True)
    try:
        fn = sp.lambdify(x, expr, modules="numpy")
    except (KeyError, NameError, TypeError, ValueError) as e:   # sympy has no numpy form for it
        raise InputError(f"--target {text!r}: cannot be evaluated numerically ({type(e).__name__}: {e})") from None

    def f(t):
        t = np.asarray(t, dtype=np.float64)
        return np.broadcast_to(np.asarray(fn(t), dtype=np.float64), t.shape).copy()

    with np.errstate(all="ignore"):
        probe = f(np.linspace(-1, 1, 1001))
    if not np.all(np.isfinite(probe)):
        raise InputError(f"--target {text!r}: not finite everywhere on [-1, 1]")
    return src, expr, f
