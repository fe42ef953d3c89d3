"""Forward Laplacian: value, gradient and Laplacian carried through a network together, layer by layer.

A :class:`Jet` holds, for N points and features of any shape ``F``,

- ``v``  (N, *F): the value,
- ``g``  (N, D, *F): the gradient with respect to the D input coordinates,
- ``l``  (N, *F): the Laplacian (sum of the D pure second derivatives).

Rules (all plain differentiable torch ops, so ``loss.backward()`` trains through them):

- linear map ``y = W x + b``: ``v = W v + b``, ``g = W g``, ``l = W l``;
- elementwise function ``s``: ``v = s(v)``, ``g = s'(v) g``, ``l = s'(v) l + s''(v) |g|^2`` (``|g|^2`` summed
  over the D input directions);
- product: ``Laplace(f h) = f Laplace(h) + h Laplace(f) + 2 grad f . grad h`` (LRNN's product of dbar
  factors is a fold of this rule);
- LayerNorm over the features: mean and variance carried exactly through value, gradient and Laplacian;
- hash-grid encoding: the d-linear interpolation's first derivatives; its pure second derivatives vanish
  inside a cell, and its mixed ones (constant per cell) enter only where the input directions are not
  orthogonal (never for the ansatz's ``2x - 1`` map, kept for completeness).

One forward pass gives the PDE residual; reverse-over-reverse autograd needs d + 1 backward passes
(:func:`pde.operators.laplacian`).  :func:`model_jet` covers every :class:`inr.models.INR` that ``pde`` can
build (SIREN/SPDER, Gauss, ReLU with positional encoding, ``mlp-tanh``, LRNN with MLP or harmonic components,
the hash grid) and :class:`pde.operators.Ansatz`; :func:`unsupported` names what has no rule (KAN, WIRE,
LRNN with a bfloat16 projection), for which :func:`pde.operators.residual` falls back to reverse mode.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from inr.layers.encoding import PositionalEncoding
from inr.layers.gauss import GaussLayer
from inr.layers.hashgrid import HashGridEncoding
from inr.layers.lrnn import LRNNLayer
from inr.layers.sine import SineLayer, activation_jet
from inr.models import INR


class Jet(NamedTuple):
    """Value (N, *F), gradient (N, D, *F) and Laplacian (N, *F) of features with respect to D coordinates."""
    v: torch.Tensor
    g: torch.Tensor
    l: torch.Tensor


def identity(x: torch.Tensor, scale: float = 1.0, shift: float = 0.0) -> Jet:
    """The jet of ``scale * x + shift`` for coordinates x (N, d): gradient ``scale * I``, Laplacian 0."""
    n, d = x.shape
    eye = torch.eye(d, dtype=x.dtype, device=x.device).mul_(scale).expand(n, d, d)
    return Jet(scale * x + shift if (scale != 1.0 or shift != 0.0) else x, eye, torch.zeros_like(x))


# -- generic rules ---------------------------------------------------------------------------------------

def _sq(g: torch.Tensor) -> torch.Tensor:
    """|grad|^2 summed over the D input directions: (N, D, *F) -> (N, *F)."""
    return g.square().sum(1)


def linear(j: Jet, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Jet:
    """``y = x W^T + b`` on the last feature axis."""
    return Jet(nn.functional.linear(j.v, weight, bias), j.g @ weight.t(), j.l @ weight.t())


def scale(j: Jet, c: float) -> Jet:
    return j if c == 1.0 else Jet(j.v * c, j.g * c, j.l * c)


def elementwise(j: Jet, s: torch.Tensor, ds: torch.Tensor, dds: torch.Tensor) -> Jet:
    """Apply a univariate function whose value and first two derivatives at ``j.v`` are s, ds, dds."""
    return Jet(s, ds.unsqueeze(1) * j.g, ds * j.l + dds * _sq(j.g))


def mul(a: Jet, b: Jet) -> Jet:
    """Product rule (features broadcast): ``Laplace(ab) = a Laplace(b) + b Laplace(a) + 2 grad a . grad b``."""
    return Jet(a.v * b.v, a.g * b.v.unsqueeze(1) + a.v.unsqueeze(1) * b.g,
               a.l * b.v + a.v * b.l + 2.0 * (a.g * b.g).sum(1))


def add(a: Jet, b: Jet) -> Jet:
    return Jet(a.v + b.v, a.g + b.g, a.l + b.l)


# -- activations: (s, s', s'') ------------------------------------------------------------------------

periodic = activation_jet   # (sigma, sigma', sigma'') of the periodic activations, inr.layers.sine


def _tanh(z):
    t = torch.tanh(z)
    d = 1.0 - t * t
    return t, d, -2.0 * t * d


def _relu(z):
    d = (z > 0).to(z.dtype)
    return torch.relu(z), d, torch.zeros_like(z)


# -- layers ---------------------------------------------------------------------------------------------

def _sine_layer(m: SineLayer, j: Jet) -> Jet:
    z = scale(linear(j, m.linear.weight, m.linear.bias), m.w0)
    return elementwise(z, *periodic(m.activation, z.v))


def _gauss_layer(m: GaussLayer, j: Jet) -> Jet:
    z = linear(j, m.linear.weight, m.linear.bias)
    s2 = m.scale * m.scale
    f = torch.exp(-s2 * z.v.square())
    d = -2.0 * s2 * z.v * f
    dd = (4.0 * s2 * s2 * z.v.square() - 2.0 * s2) * f
    return elementwise(z, f, d, dd)


def _positional(m: PositionalEncoding, j: Jet) -> Jet:
    f = m.freqs
    xf = Jet(j.v.unsqueeze(-1) * f, j.g.unsqueeze(-1) * f, j.l.unsqueeze(-1) * f)   # (N, [D,] d, L)
    s, c = torch.sin(xf.v), torch.cos(xf.v)
    sj = elementwise(xf, s, c, -s)
    cj = elementwise(xf, c, -s, -c)
    parts = [sj, cj]
    if m.include_input:
        parts.insert(0, j)
    return Jet(torch.cat([p.v.flatten(-2) if p is not j else p.v for p in parts], -1),
               torch.cat([p.g.flatten(-2) if p is not j else p.g for p in parts], -1),
               torch.cat([p.l.flatten(-2) if p is not j else p.l for p in parts], -1))


def layer_norm(m: nn.LayerNorm, j: Jet) -> Jet:
    """LayerNorm over the last axis: ``y = (v - mean) / sqrt(var + eps) * w + b``, exactly."""
    if len(m.normalized_shape) != 1:
        raise NotImplementedError("forward Laplacian: LayerNorm over more than one axis")
    c = Jet(j.v - j.v.mean(-1, keepdim=True), j.g - j.g.mean(-1, keepdim=True), j.l - j.l.mean(-1, keepdim=True))
    # s = var + eps: grad s = 2 mean(c grad c), Laplace s = 2 mean(|grad c|^2 + c Laplace c)
    s = c.v.square().mean(-1, keepdim=True) + m.eps
    gs = 2.0 * (c.g * c.v.unsqueeze(1)).mean(-1, keepdim=True)
    ls = 2.0 * (_sq(c.g) + c.v * c.l).mean(-1, keepdim=True)
    # q = s^(-1/2): q' = -q^3 / 2, q'' = 3 q^5 / 4
    q = torch.rsqrt(s)
    q3 = q * q * q
    qj = elementwise(Jet(s, gs, ls), q, -0.5 * q3, 0.75 * q3 * q * q)
    y = mul(c, qj)
    if m.weight is not None:
        w = m.weight
        y = Jet(y.v * w, y.g * w, y.l * w)
    if m.bias is not None:
        y = Jet(y.v + m.bias, y.g, y.l)
    return y


def _lrnn_layer(m: LRNNLayer, j: Jet) -> Jet:
    if m.low_precision:
        raise NotImplementedError("forward Laplacian: LRNN bfloat16 projection")
    z = scale(linear(j, m.proj.weight, m.proj.bias), m.scale)
    r, dbar = m.rank, m.dbar
    z = Jet(z.v.unflatten(-1, (r, dbar)), z.g.unflatten(-1, (r, dbar)), z.l.unflatten(-1, (r, dbar)))
    G, G1, G2 = m.component_jet(z.v)
    gm = m.gamma
    f = elementwise(z, 1.0 + gm * G, gm * G1, gm * G2)               # factors 1 + gamma g_j, (N, [D,] r, dbar)
    phi = Jet(f.v[..., 0], f.g[..., 0], f.l[..., 0])
    for i in range(1, dbar):
        phi = mul(phi, Jet(f.v[..., i], f.g[..., i], f.l[..., i]))
    return layer_norm(m.norm, phi) if m.norm is not None else phi


def _corner_weights(w: torch.Tensor, bits, skip=()) -> torch.Tensor:
    """prod_i (w_i if bit_i else 1 - w_i), with the factors of the dimensions in ``skip`` replaced by their
    derivatives (+1 / -1): w (d, L, B) -> (L, B, 2^d)."""
    d = w.shape[0]
    cols = []
    for b in bits:
        o = None
        sign = 1.0
        for i in range(d):
            if i in skip:
                sign = sign if b[i] else -sign
                continue
            f = w[i] if b[i] else 1.0 - w[i]
            o = f if o is None else o * f
        o = torch.full_like(w[0], sign) if o is None else o * sign
        cols.append(o)
    return torch.stack(cols, -1)


def _bag(idx, wts, table):
    L, B, C = idx.shape
    out = nn.functional.embedding_bag(idx.reshape(L * B, C), table, per_sample_weights=wts.reshape(L * B, C),
                                      mode="sum")
    F = table.shape[1]
    return out.reshape(L, B, F).transpose(0, 1).reshape(B, L * F)


def _hash(m: HashGridEncoding, j: Jet) -> Jet:
    """d-linear interpolation: derivative ``N_l / 2 * sum_o table * d weight / d w_i`` (the corner cell as
    :class:`HashGridEncoding` picks it); pure second derivatives vanish, mixed ones are constant per cell."""
    x = j.v.detach()
    d = m.in_features
    c, w = m.positions(x)
    idx, _ = m.corners(c, w)
    w = w.to(m.embeddings.dtype)
    bits = m.corner_bits()
    table = m.embeddings
    half_n = (0.5 * m.scale.to(table.dtype)).repeat_interleave(m.features)   # (L F,) dp/dx per output
    v = _bag(idx, _corner_weights(w, bits), table).to(j.v.dtype)
    dx = torch.stack([_bag(idx, _corner_weights(w, bits, (i,)), table) * half_n for i in range(d)], 1)  # (N, d, LF)
    dx = dx.to(j.v.dtype)
    # chain rule for an input jet: grad = sum_i df/dx_i grad x_i, Laplace = sum_i df/dx_i Laplace x_i
    # + sum_{i != k} d2f/dx_i dx_k grad x_i . grad x_k (the pure terms d2f/dx_i^2 are 0 inside a cell)
    g = torch.einsum("nif,nDi->nDf", dx, j.g)
    lap = torch.einsum("nif,ni->nf", dx, j.l)
    for i in range(d):
        for k in range(i + 1, d):
            dot = (j.g[:, :, i] * j.g[:, :, k]).sum(1, keepdim=True)      # (N, 1)
            if bool((dot != 0).any()):
                dxx = _bag(idx, _corner_weights(w, bits, (i, k)), table) * (half_n * half_n)
                lap = lap + 2.0 * dxx.to(j.v.dtype) * dot
    return Jet(v, g, lap)


def _mlp_tanh_act(m, j):
    return elementwise(j, *_tanh(j.v))


def _relu_act(m, j):
    return elementwise(j, *_relu(j.v))


def _linear(m: nn.Linear, j: Jet) -> Jet:
    return linear(j, m.weight, m.bias)


RULES = {
    nn.Linear: _linear,
    nn.Tanh: _mlp_tanh_act,
    nn.ReLU: _relu_act,
    SineLayer: _sine_layer,
    GaussLayer: _gauss_layer,
    PositionalEncoding: _positional,
    nn.LayerNorm: layer_norm,
    LRNNLayer: _lrnn_layer,
    HashGridEncoding: _hash,
}


def unsupported(model: nn.Module) -> list[str]:
    """Names of the parts of ``model`` (an INR or an Ansatz around one) without a forward rule; [] if none."""
    from .operators import Ansatz

    net = model.net if isinstance(model, Ansatz) else model
    if not isinstance(net, INR):
        return [getattr(type(net), "__name__", str(net))]
    if net.complex_out:
        return [f"{type(net).__name__} (complex output)"]
    bad = [type(m).__name__ for m in [*net.body, net.head] if type(m) not in RULES]
    bad += [f"{type(m).__name__} (bf16 projection)" for m in net.body if isinstance(m, LRNNLayer) and m.low_precision]
    return bad


def model_jet(net: INR, j: Jet) -> Jet:
    """Carry a jet through an :class:`inr.models.INR` (body then head)."""
    for m in [*net.body, net.head]:
        rule = RULES.get(type(m))
        if rule is None:
            raise NotImplementedError(f"forward Laplacian: no rule for {type(m).__name__}")
        j = rule(m, j)
    return j


def input_jet(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, dims: int) -> Jet:
    """The jet of ``scale * x + shift`` (per-axis scale and shift) in the first ``dims`` coordinates:
    gradient rows ``scale_i e_i`` for i < dims, Laplacian 0."""
    n, d = x.shape
    eye = torch.diag(scale)[:dims].expand(n, dims, d)
    return Jet(scale * x + shift, eye, torch.zeros_like(x))


def bubble_jet(x: torch.Tensor, scale: torch.Tensor | None = None, dims: int | None = None,
               time_axis: int | None = None) -> Jet:
    """``prod_i 4 xi_i (1 - xi_i)`` over the first ``dims`` axes, xi = scale * (x - lo) already applied by
    the caller as ``x`` (normalised coordinates), ``scale`` = 1 / (hi - lo) (see
    :func:`pde.operators.distance_factor`), as a jet in the first ``dims`` problem coordinates; times
    ``xi_t`` (constant along those directions) when ``time_axis`` is given."""
    n, d = x.shape
    dims = d if dims is None else dims
    out = None
    for i in range(dims):
        xi = x[:, i:i + 1]
        c = 1.0 if scale is None else scale[i]
        gi = torch.zeros(n, dims, 1, dtype=x.dtype, device=x.device)
        gi[:, i, 0] = ((4.0 - 8.0 * xi) * c)[:, 0]
        bi = Jet(4.0 * xi * (1.0 - xi), gi, (-8.0 * c * c) * torch.ones_like(xi))
        out = bi if out is None else mul(out, bi)
    if time_axis is not None:
        t = x[:, time_axis:time_axis + 1]
        out = mul(out, Jet(t, torch.zeros(n, dims, 1, dtype=x.dtype, device=x.device), torch.zeros_like(t)))
    return out


def ansatz_jet(ansatz, x: torch.Tensor, dims: int | None = None) -> Jet:
    """Jet of :class:`pde.operators.Ansatz` in the first ``dims`` coordinates (default all):
    ``u = lift(x) + D(x) net(2 xi - 1)`` (exact boundary) or ``net(2 xi - 1)``, xi = (x - lo) / (hi - lo): the
    map gives the network's gradient a factor 2 / (hi - lo) and its Laplacian that factor squared (through
    the input jet).  The lift has no parameters: its value and Laplacian are constants of x, taken by
    reverse-mode autograd of the lift alone (it is zero for ``poisson2d``).  ``x`` is used as given (with
    ``requires_grad`` the value's graph reaches it, for u_t)."""
    from .operators import laplacian, lift

    problem = ansatz.problem
    x = x if x.requires_grad else x.detach()
    d = x.shape[1]
    dims = d if dims is None else dims
    if problem.bounds is None and dims == d:
        j_in = identity(x, 2.0, -1.0)
        xi, scale = x, None
    else:
        lo, hi = problem.lo_hi(x)
        scale = 1.0 / (hi - lo)
        j_in = input_jet(x, 2.0 * scale, -2.0 * lo * scale - 1.0, dims)
        xi = (x - lo) * scale
    u = model_jet(ansatz.net, j_in)
    if ansatz.boundary != "exact":
        return u
    u = mul(bubble_jet(xi, scale, problem.dim if problem.time_dependent else dims,
                       problem.dim if problem.time_dependent else None), u)
    if getattr(problem, "zero_boundary", False):
        return u
    with torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        L = lift(problem, xr)
        (gL,) = torch.autograd.grad(L.sum(), xr, create_graph=True)
        lapL = laplacian(L, xr, create_graph=False, dims=dims) if gL.requires_grad else torch.zeros_like(L)
    v = u.v + (lift(problem, x) if x.requires_grad else L.detach())
    return Jet(v, u.g + gL[:, :dims].detach().unsqueeze(-1), u.l + lapL.detach())


def jet(model: nn.Module, x: torch.Tensor, dims: int | None = None) -> Jet:
    """Value (N, 1), gradient (N, dims, 1) and Laplacian (N, 1) of ``model`` (an Ansatz or an INR) at x (N, d),
    in the first ``dims`` coordinates (default all d)."""
    from .operators import Ansatz

    if isinstance(model, Ansatz):
        return ansatz_jet(model, x, dims)
    if isinstance(model, INR):
        xx = x if x.requires_grad else x.detach()
        if dims is None or dims == x.shape[1]:
            return model_jet(model, identity(xx))
        one = torch.ones(x.shape[1], dtype=x.dtype, device=x.device)
        return model_jet(model, input_jet(xx, one, torch.zeros_like(one), dims))
    raise NotImplementedError(f"forward Laplacian: no rule for {type(model).__name__}")
