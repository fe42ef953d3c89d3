"""LRNN layers: learnable product-structured activations (Maharaj & Nair).

One layer maps h in R^{n_in} to R^r:

1. projection ``z = P h + p`` viewed as r rows of dbar entries;
2. a univariate component per entry, ``g(t) = sum_k c_k sigma(w0 (a_k t + b_k)) + c0`` (1 -> m -> 1);
3. product ``phi_l = prod_j (1 + gamma g_{l,j}(z_{l,j}))`` with ``gamma = dbar^{-1/2}``;
4. LayerNorm over the r outputs.

Steps 2-3 run in :class:`ProductFn`, which keeps only ``z`` for backward and recomputes the
``batch x r x dbar x m`` activations one hidden unit at a time over cache-sized batch chunks, so
memory stays near ``batch x r x dbar`` instead of m times that.  Second derivatives (PDE
residuals) go through the plain graph and stay exact.  ``memory_efficient=False`` gives the plain
autograd path (the reference the tests compare against).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .sine import SQRT_FLOOR, get_activation


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


def _components_chunk(zc, wa, wb, c, c0, activation):
    """g = c0 + sum_k c_k sigma(wa_k z + wb_k) for one chunk, in place (wa = w0 a, wb = w0 b)."""
    g = c0.expand_as(zc).clone()
    for k in range(wa.shape[-1]):
        u = torch.addcmul(wb[..., k], zc, wa[..., k])
        g.addcmul_(_act_inplace(activation, u), c[..., k])
    return g


def _exclusive_prod(f: torch.Tensor) -> torch.Tensor:
    """prod_{i != j} f_i along the last axis (no division, so exact zeros are fine)."""
    ones = torch.ones_like(f[..., :1])
    left = torch.cumprod(torch.cat([ones, f[..., :-1]], -1), -1)
    right = torch.cumprod(torch.cat([ones, f[..., 1:].flip(-1)], -1), -1).flip(-1)
    return left * right


def product_reference(z, a, b, c, c0, w0: float, activation: str, gamma: float):
    """phi = prod_j (1 + gamma g_j(z_j)) by plain autograd (the reference; also the double-backward path)."""
    return torch.prod(1.0 + gamma * components_reference(z, a, b, c, c0, w0, activation), dim=-1)


class ProductFn(torch.autograd.Function):
    """phi(z) = prod_j (1 + gamma g_j(z_j)) without storing the component activations.

    Keeps only z (batch x r x dbar) for backward; recomputes g and the product there, one hidden
    unit k at a time, over batch chunks small enough to stay in cache.  When a graph of the
    backward is requested (second derivatives, e.g. PDE residuals), backward differentiates
    :func:`product_reference` instead, so higher derivatives are exact.
    """

    @staticmethod
    def forward(z, a, b, c, c0, w0, activation, gamma):
        phi = z.new_empty(z.shape[:-1])
        wa, wb = a * w0, b * w0
        for lo, hi in _chunks(z.shape[0], z[0].numel()):
            g = _components_chunk(z[lo:hi], wa, wb, c, c0, activation)
            torch.prod(g.mul_(gamma).add_(1.0), dim=-1, out=phi[lo:hi])
        return phi

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, a, b, c, c0, w0, activation, gamma = inputs
        ctx.save_for_backward(z, a, b, c, c0)
        ctx.w0, ctx.activation, ctx.gamma = w0, activation, gamma

    @staticmethod
    def backward(ctx, grad_phi):
        z, a, b, c, c0 = ctx.saved_tensors
        w0, name, gamma = ctx.w0, ctx.activation, ctx.gamma
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain graph
            with torch.enable_grad():
                phi = product_reference(z, a, b, c, c0, w0, name, gamma)
                return (*torch.autograd.grad(phi, (z, a, b, c, c0), grad_phi, create_graph=True), None, None, None)
        wa, wb = a * w0, b * w0
        wc = (c * w0).unbind(-1)
        gz = torch.empty_like(z)
        ga, gb, gc, gc0 = torch.zeros_like(a), torch.zeros_like(b), torch.zeros_like(c), torch.zeros_like(c0)
        for lo, hi in _chunks(z.shape[0], z[0].numel()):
            zc, gzc = z[lo:hi], gz[lo:hi]
            f = _components_chunk(zc, wa, wb, c, c0, name).mul_(gamma).add_(1.0)
            gg = _exclusive_prod(f).mul_(grad_phi[lo:hi].unsqueeze(-1) * gamma)  # dL/dg
            gc0 += _reduce_to(gg, c0.shape)
            gzc.zero_()
            for k in range(a.shape[-1]):
                u = torch.addcmul(wb[..., k], zc, wa[..., k])
                s, ds = _act_grad_inplace(name, u)
                gc[..., k] += _reduce_to(s.mul_(gg), a.shape)
                t = ds.mul_(gg).mul_(wc[k])  # dL / d(a_k z + b_k)
                gzc.addcmul_(t, a[..., k])
                gb[..., k] += _reduce_to(t, a.shape)
                ga[..., k] += _reduce_to(t.mul_(zc), a.shape)
        return gz, ga, gb, gc, gc0, None, None, None


# ----------------------------------------------------------------------------------------------
# Compiled kernel pair (the GPU speed path): the same recompute-in-backward contract as ProductFn,
# written as pure tensor expressions so torch.compile can fuse each into a few kernels (Triton on
# CUDA, C++/OpenMP on the CPU) without materialising the batch x r x dbar x m activations.


def _act_and_grad(name: str, u: torch.Tensor):
    """(sigma(u), sigma'(u)) as pure expressions (compile-friendly twin of :func:`_act_grad_inplace`)."""
    s, c = torch.sin(u), torch.cos(u)
    if name == "sin":
        return s, c
    if name == "spder":
        r = u.abs().clamp_min(SQRT_FLOOR).sqrt()
        inv2u = torch.where(u.abs() <= SQRT_FLOOR, torch.zeros_like(u), 0.5 / u)
        return s * r, (c + s * inv2u) * r
    at = torch.atan(u)
    return s * at, c * at + s / (1.0 + u * u)


def _compiled_backward_impl(z, a, b, c, c0, grad_phi, w0: float, activation: str, gamma: float):
    u = w0 * (z.unsqueeze(-1) * a + b)                                     # (B, r, dbar, m), once
    s, ds = _act_and_grad(activation, u)
    f = 1.0 + gamma * ((s * c).sum(-1) + c0)                               # factors, as product_reference
    gg = _exclusive_prod(f) * (grad_phi.unsqueeze(-1) * gamma)            # dL/dg, (B, r, dbar)
    g4 = gg.unsqueeze(-1)
    t = ds * g4 * (c * w0)                                                 # dL/d(a z + b), (B, r, dbar, m)
    shared = a.shape[0] == 1 and z.shape[1] != 1
    red = (lambda x: x.sum((0, 1)).unsqueeze(0)) if shared else (lambda x: x.sum(0))
    return (t * a).sum(-1), red(t * z.unsqueeze(-1)), red(t), red(s * g4), red(gg)


_COMPILED: dict = {}


def _compiled(which: str):
    """torch.compile'd forward / backward, built on first use (dynamic batch size)."""
    if which not in _COMPILED:
        fn = product_reference if which == "forward" else _compiled_backward_impl
        _COMPILED[which] = torch.compile(fn, dynamic=True)
    return _COMPILED[which]


class CompiledProductFn(ProductFn):
    """:class:`ProductFn` with a torch.compile'd forward and backward (``kernel="compiled"``).

    Saves only z (ProductFn's ``setup_context``); the backward recomputes the components inside one
    compiled graph.  Double backward goes through :func:`product_reference`, as in ProductFn.
    Verified against the plain autograd path to 1e-5 in float32 on the CPU (tests); on CUDA,
    Inductor emits Triton kernels.
    """

    @staticmethod
    def forward(z, a, b, c, c0, w0, activation, gamma):
        return _compiled("forward")(z, a, b, c, c0, w0, activation, gamma)

    @staticmethod
    def backward(ctx, grad_phi):
        if torch.is_grad_enabled():  # create_graph=True: ProductFn differentiates the plain graph
            return ProductFn.backward(ctx, grad_phi)
        z, a, b, c, c0 = ctx.saved_tensors
        grads = _compiled("backward")(z, a, b, c, c0, grad_phi.contiguous(), ctx.w0, ctx.activation, ctx.gamma)
        return (*grads, None, None, None)


KERNELS = ("fused", "compiled", "plain")
PRECISIONS = ("fp32", "bf16")


def _quantile_grid(n: int = 128, dtype=torch.float64) -> torch.Tensor:
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
        memory_efficient: evaluate steps 2-3 with a recomputing kernel (False: plain autograd,
            ``kernel="plain"``).
        kernel: ``"fused"`` (:class:`ProductFn`, chunked eager recompute, fastest on the CPU),
            ``"compiled"`` (:class:`CompiledProductFn`, torch.compile; the GPU speed path) or ``"plain"``.
        precision: ``"bf16"`` runs the projection of a hidden layer (not the first, whose raw
            coordinates are multiplied by w0) in bfloat16 with a float32 result; components, product and
            LayerNorm stay float32.  ``"fp32"``: everything float32.
    """

    def __init__(self, in_features: int, rank: int, dbar: int = 4, width: int = 4, w0: float = 30.0,
                 activation: str = "sin", shared: bool = False, is_first: bool = False,
                 component_std: float = 1.0, layernorm: bool = True, memory_efficient: bool = True,
                 kernel: str = "fused", precision: str = "fp32", device=None, dtype=None):
        super().__init__()
        if min(in_features, rank, dbar, width) < 1:
            raise ValueError("in_features, rank, dbar and width must all be >= 1")
        get_activation(activation)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        fk = {"device": device, "dtype": dtype}
        self.in_features, self.rank, self.dbar, self.width = in_features, rank, dbar, width
        self.w0, self.activation, self.shared, self.is_first = float(w0), activation, bool(shared), bool(is_first)
        self.component_std = float(component_std)
        self.kernel = kernel if memory_efficient else "plain"
        self.memory_efficient = self.kernel != "plain"
        self.precision = precision
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
            # Lemma 1 wants zero-mean components of variance component_std^2.  Centre and scale each
            # component over its input distribution: z is ~N(0, 1) by construction (LayerNorm'd h and
            # the projection bound above), stood in for by a deterministic normal-quantile grid.
            self.c.uniform_(-1.0, 1.0)
            t = _quantile_grid().to(self.a.device)
            u = self.w0 * (t[:, None, None, None] * self.a.double() + self.b.double())   # (T, R, dbar, m)
            G = (get_activation(self.activation)(u) * self.c.double()).sum(-1)          # (T, R, dbar)
            scale = self.component_std / G.var(0, unbiased=False).mean().clamp_min(1e-12).sqrt()
            self.c.mul_(scale.to(self.c.dtype))
            self.c0.copy_(-G.mean(0) * scale)
            if self.norm is not None:
                self.norm.reset_parameters()

    def components(self, z: torch.Tensor) -> torch.Tensor:
        """g(z) for z of shape (..., rank, dbar) (plain autograd; for inspection and tests)."""
        return components_reference(z, self.a, self.b, self.c, self.c0, self.w0, self.activation)

    def product(self, h: torch.Tensor) -> torch.Tensor:
        """phi before LayerNorm, shape (..., rank)."""
        z = self.project(h).unflatten(-1, (self.rank, self.dbar))
        # torch.func transforms (vmap, jvp, grad) wrap tensors; the in-place fused path is not
        # transform-safe, so those go through the plain graph (exact, m times the memory).
        if not self.memory_efficient or torch._C._functorch.is_functorch_wrapped_tensor(z):
            return product_reference(z, self.a, self.b, self.c, self.c0, self.w0, self.activation, self.gamma)
        lead = z.shape[:-2]
        fn = CompiledProductFn if self.kernel == "compiled" else ProductFn
        phi = fn.apply(z.reshape(-1, self.rank, self.dbar), self.a, self.b, self.c, self.c0,
                       self.w0, self.activation, self.gamma)
        return phi.reshape(*lead, self.rank)

    @property
    def low_precision(self) -> bool:
        """Whether the projection runs in bfloat16 (``precision="bf16"`` on a hidden layer)."""
        return self.precision == "bf16" and not self.is_first

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """z = P h + p (flat, ``(..., rank * dbar)``), in bfloat16 if :attr:`low_precision`."""
        if self.low_precision:
            bf = torch.bfloat16
            return nn.functional.linear(h.to(bf), self.proj.weight.to(bf), self.proj.bias.to(bf)).to(h.dtype)
        return self.proj(h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        phi = self.product(h)
        return self.norm(phi) if self.norm is not None else phi

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, rank={self.rank}, dbar={self.dbar}, width={self.width}, "
                f"w0={self.w0}, activation={self.activation!r}, shared={self.shared}, is_first={self.is_first}, "
                f"kernel={self.kernel!r}, precision={self.precision!r}")

    @staticmethod
    def count(in_features: int, rank: int, dbar: int, width: int, shared: bool = False, layernorm: bool = True) -> int:
        """Parameter count: r*dbar*(n_in + 1) + R*dbar*(3m + 1) + 2r, R = 1 if shared else r."""
        R = 1 if shared else rank
        return rank * dbar * (in_features + 1) + R * dbar * (3 * width + 1) + (2 * rank if layernorm else 0)
