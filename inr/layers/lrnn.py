"""LRNN layers: learnable product-structured activations (Maharaj & Nair).

One layer maps h in R^{n_in} to R^r:

1. projection ``z = P h + p`` viewed as r rows of dbar entries;
2. a univariate component per entry, ``g(t) = sum_k c_k sigma(w0 (a_k t + b_k)) + c0`` (1 -> m -> 1);
3. product ``phi_l = prod_j (1 + gamma g_{l,j}(z_{l,j}))`` with ``gamma = dbar^{-1/2}``;
4. LayerNorm over the r outputs.

The components are evaluated by :class:`ComponentsFn`, which keeps only ``z`` for backward and
recomputes the ``batch x r x dbar x m`` activations one hidden unit at a time, so memory stays
near ``batch x r x dbar`` instead of m times that.  Its backward is itself written in torch ops, so
second derivatives (PDE residuals) still work.  ``memory_efficient=False`` gives the plain
autograd path (the reference the tests compare against).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .sine import SQRT_FLOOR, get_activation


def _act_and_grad(name: str, u: torch.Tensor):
    """sigma(u) and sigma'(u) for the periodic component activations (differentiable torch ops)."""
    s, c = torch.sin(u), torch.cos(u)
    if name == "sin":
        return s, c
    if name == "spder":
        au = u.abs()
        r = torch.sqrt(au.clamp_min(SQRT_FLOOR))
        # d/du sqrt|u| = sqrt|u| / (2u) above the floor; 0 below it (the clamp is flat there)
        inv2u = torch.where(au > SQRT_FLOOR, 0.5 / torch.where(au > SQRT_FLOOR, u, torch.ones_like(u)),
                            torch.zeros_like(u))
        return s * r, r * (c + s * inv2u)
    if name == "spder-atan":
        at = torch.atan(u)
        return s * at, c * at + s / (1.0 + u * u)
    raise ValueError(f"unknown component activation {name!r}")


def _act_inplace(name: str, u: torch.Tensor) -> torch.Tensor:
    """sigma(u), overwriting u (no graph)."""
    if name == "sin":
        return u.sin_()
    if name == "spder":
        r = u.abs().clamp_min_(SQRT_FLOOR).sqrt_()
        return u.sin_().mul_(r)
    at = torch.atan(u)
    return u.sin_().mul_(at)


def _act_grad_inplace(name: str, u: torch.Tensor):
    """(sigma(u), sigma'(u)) with few temporaries (no graph); u is overwritten."""
    if name == "sin":
        return torch.sin(u), u.cos_()
    s, c = torch.sin(u), torch.cos(u)
    if name == "spder":
        au = u.abs()
        r = au.clamp_min(SQRT_FLOOR).sqrt_()
        small = au <= SQRT_FLOOR
        inv2u = u.reciprocal_().mul_(0.5).masked_fill_(small, 0.0)
        ds = inv2u.mul_(s).add_(c).mul_(r)
        return s.mul_(r), ds
    at = torch.atan(u)
    ds = u.square().add_(1.0).reciprocal_().mul_(s).addcmul_(c, at)
    return s.mul_(at), ds


def _reduce_to(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a (B, r, dbar) gradient down to a parameter shape (r or 1, dbar)."""
    x = x.sum(0)
    if shape[0] == 1 and x.shape[0] != 1:
        x = x.sum(0, keepdim=True)
    return x


def components_reference(z, a, b, c, c0, w0: float, activation: str):
    """Plain autograd evaluation: z (B, r, dbar); a, b, c (R, dbar, m) with R in {1, r}; c0 (R, dbar)."""
    act = get_activation(activation)
    u = w0 * (z.unsqueeze(-1) * a + b)
    return (act(u) * c).sum(-1) + c0


CHUNK_ELEMENTS = 1 << 18  # rows per chunk so one (rows, r, dbar) temporary stays cache-sized


def _chunks(n_rows: int, row_elems: int):
    step = max(1, CHUNK_ELEMENTS // max(row_elems, 1))
    return [(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


class ComponentsFn(torch.autograd.Function):
    """Memory-light evaluation of the component MLPs.

    Keeps only z for backward and recomputes sigma(w0 (a z + b)) one hidden unit at a time,
    over batch chunks small enough to stay in cache.  When a graph of the backward is needed
    (second derivatives), backward runs in differentiable torch ops instead of in-place ones.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z, a, b, c, c0, w0, activation):
        g = torch.empty_like(z)
        a_k, b_k, c_k = a.unbind(-1), (b * 1.0).unbind(-1), c.unbind(-1)
        for lo, hi in _chunks(z.shape[0], z[0].numel()):
            zc, gc = z[lo:hi], g[lo:hi]
            gc.copy_(c0.expand_as(zc))
            for k in range(a.shape[-1]):
                u = torch.addcmul(b_k[k], zc, a_k[k]).mul_(w0)
                gc.addcmul_(_act_inplace(activation, u), c_k[k])
        return g

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, a, b, c, c0, w0, activation = inputs
        ctx.save_for_backward(z, a, b, c)
        ctx.w0, ctx.activation, ctx.c0_shape = w0, activation, c0.shape

    @staticmethod
    def backward(ctx, grad_g):
        z, a, b, c = ctx.saved_tensors
        if torch.is_grad_enabled():
            return ComponentsFn._backward_graph(ctx, grad_g, z, a, b, c)
        w0, name, m = ctx.w0, ctx.activation, a.shape[-1]
        gz = torch.empty_like(z)
        ga, gb, gc = torch.zeros_like(a), torch.zeros_like(b), torch.zeros_like(c)
        wc = (c * w0).unbind(-1)
        for lo, hi in _chunks(z.shape[0], z[0].numel()):
            zc, gg, gzc = z[lo:hi], grad_g[lo:hi], gz[lo:hi]
            gzc.zero_()
            for k in range(m):
                u = torch.addcmul(b[..., k], zc, a[..., k]).mul_(w0)
                s, ds = _act_grad_inplace(name, u)
                gc[..., k] += _reduce_to(s.mul_(gg), a.shape)
                t = ds.mul_(gg).mul_(wc[k])  # dL / d(a_k z + b_k)
                gzc.addcmul_(t, a[..., k])
                gb[..., k] += _reduce_to(t, a.shape)
                ga[..., k] += _reduce_to(t.mul_(zc), a.shape)
        return gz, ga, gb, gc, _reduce_to(grad_g, ctx.c0_shape), None, None

    @staticmethod
    def _backward_graph(ctx, grad_g, z, a, b, c):
        w0, name = ctx.w0, ctx.activation
        gz = torch.zeros_like(z)
        ga, gb, gc = [], [], []
        for k in range(a.shape[-1]):
            s, ds = _act_and_grad(name, w0 * (z * a[..., k] + b[..., k]))
            gc.append(_reduce_to(grad_g * s, a.shape))
            t = grad_g * ds * (w0 * c[..., k])
            gz = gz + t * a[..., k]
            ga.append(_reduce_to(t * z, a.shape))
            gb.append(_reduce_to(t, a.shape))
        gc0 = _reduce_to(grad_g, ctx.c0_shape)
        return gz, torch.stack(ga, -1), torch.stack(gb, -1), torch.stack(gc, -1), gc0, None, None


def _quantile_grid(n: int = 64, dtype=torch.float64) -> torch.Tensor:
    """Standard-normal quantiles at (i + 0.5) / n: a deterministic stand-in for z ~ N(0, 1)."""
    p = (torch.arange(n, dtype=dtype) + 0.5) / n
    return math.sqrt(2.0) * torch.erfinv(2 * p - 1)


class LRNNLayer(nn.Module):
    """One LRNN layer R^{n_in} -> R^{rank}.

    Args:
        in_features: n_in.
        rank: r, the number of product neurons (outputs).
        dbar: factors per product.
        width: m, hidden width of each univariate component MLP (1 -> m -> 1).
        w0: frequency factor inside the periodic component activation.
        activation: ``"sin"`` (LRNN-SIREN), ``"spder"`` (LRNN-SPDER, images) or ``"spder-atan"`` (audio).
        shared: one set of dbar components shared by all r neurons (dbar MLPs instead of r*dbar).
        is_first: the layer reads raw coordinates in [-1, 1]; sets the frequency initialisation.
        component_std: sigma_g, the standard deviation of each component at initialisation; then
            Var[phi] <= exp(sigma_g^2) - 1 whatever dbar is (Lemma 1 of the paper).
        layernorm: LayerNorm over the r outputs (the paper's deep models need it).
        memory_efficient: evaluate components with :class:`ComponentsFn` (recompute in backward).
    """

    def __init__(self, in_features: int, rank: int, dbar: int = 4, width: int = 4, w0: float = 30.0,
                 activation: str = "sin", shared: bool = False, is_first: bool = False,
                 component_std: float = 1.0, layernorm: bool = True, memory_efficient: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if min(in_features, rank, dbar, width) < 1:
            raise ValueError("in_features, rank, dbar and width must all be >= 1")
        get_activation(activation)
        fk = {"device": device, "dtype": dtype}
        self.in_features, self.rank, self.dbar, self.width = in_features, rank, dbar, width
        self.w0, self.activation, self.shared, self.is_first = float(w0), activation, bool(shared), bool(is_first)
        self.component_std, self.memory_efficient = float(component_std), bool(memory_efficient)
        self.gamma = dbar ** -0.5
        self.proj = nn.Linear(in_features, rank * dbar, **fk)
        R = 1 if shared else rank
        self.a = nn.Parameter(torch.empty(R, dbar, width, **fk))
        self.b = nn.Parameter(torch.empty(R, dbar, width, **fk))
        self.c = nn.Parameter(torch.empty(R, dbar, width, **fk))
        self.c0 = nn.Parameter(torch.empty(R, dbar, **fk))
        self.norm = nn.LayerNorm(rank, **fk) if layernorm else None
        self.reset_parameters()

    @property
    def out_features(self) -> int:
        return self.rank

    def reset_parameters(self) -> None:
        if self.a.is_meta:  # shape-only build (parameter counting)
            return
        n = self.in_features
        with torch.no_grad():
            # Projection: unit-variance z for unit-variance h (LayerNorm'd hidden features);
            # first layer: coordinates in [-1, 1] (variance 1/3) spread over the same range.
            bound = math.sqrt(3.0 / n) * (math.sqrt(3.0) if self.is_first else 1.0)
            self.proj.weight.uniform_(-bound, bound)
            self.proj.bias.uniform_(-1.0, 1.0) if self.is_first else self.proj.bias.zero_()
            # Component frequencies: first layer like SIREN's first layer (w0 * a, a ~ U(-1, 1));
            # hidden layers like SIREN's hidden layers (w0 * a ~ U(-sqrt 6, sqrt 6)).
            fa = 1.0 if self.is_first else math.sqrt(6.0) / self.w0
            self.a.uniform_(-fa, fa)
            self.b.uniform_(-math.pi / self.w0, math.pi / self.w0)  # uniform phase -> zero-mean sigma
            self.c0.zero_()
            # Choose the output weights so Var[g] = component_std^2: Var[g] = sum_k Var[c_k] E[sigma_k^2],
            # with E[sigma^2] taken over the layer's own (a, b) and z on a normal-quantile grid.
            t = _quantile_grid().to(self.a.device)
            u = self.w0 * (t[:, None] * self.a.double().reshape(1, -1) + self.b.double().reshape(1, -1))
            msq = get_activation(self.activation)(u).square().mean().item()
            var_c = self.component_std ** 2 / (self.width * max(msq, 1e-12))
            bc = math.sqrt(3.0 * var_c)
            self.c.uniform_(-bc, bc)
            if self.norm is not None:
                self.norm.reset_parameters()

    def components(self, z: torch.Tensor) -> torch.Tensor:
        """g(z) for z of shape (..., rank, dbar)."""
        lead = z.shape[:-2]
        z3 = z.reshape(-1, self.rank, self.dbar)
        if self.memory_efficient:
            g = ComponentsFn.apply(z3, self.a, self.b, self.c, self.c0, self.w0, self.activation)
        else:
            g = components_reference(z3, self.a, self.b, self.c, self.c0, self.w0, self.activation)
        return g.reshape(*lead, self.rank, self.dbar)

    def product(self, h: torch.Tensor) -> torch.Tensor:
        """phi before LayerNorm, shape (..., rank)."""
        z = self.proj(h).unflatten(-1, (self.rank, self.dbar))
        return torch.prod(1.0 + self.gamma * self.components(z), dim=-1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        phi = self.product(h)
        return self.norm(phi) if self.norm is not None else phi

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, rank={self.rank}, dbar={self.dbar}, width={self.width}, "
                f"w0={self.w0}, activation={self.activation!r}, shared={self.shared}, is_first={self.is_first}, "
                f"memory_efficient={self.memory_efficient}")

    @staticmethod
    def count(in_features: int, rank: int, dbar: int, width: int, shared: bool = False, layernorm: bool = True) -> int:
        """Parameter count: r*dbar*(n_in + 1) + R*dbar*(3m + 1) + 2r, R = 1 if shared else r."""
        R = 1 if shared else rank
        return rank * dbar * (in_features + 1) + R * dbar * (3 * width + 1) + (2 * rank if layernorm else 0)
