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
autograd path (the reference the tests compare against).  Harmonic components on the CPU default to the
C++ kernel of :mod:`inr.layers.lrnn_cpp`; :func:`lrnn_product` dispatches between the kernels
(:func:`resolve_kernel`).
"""
from __future__ import annotations

import importlib.util
import math
import os

import torch
from torch import nn

from . import lrnn_cpp
from .sine import SQRT_FLOOR, activation_jet, atan_envelope_jet, get_activation, sqrt_envelope_jet
from ..errors import InputError


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


def _compiled_backward_impl(z, weights: tuple, grad_phi, w0: float, activation: str, gamma: float):
    """The MLP-component product's backward; ``weights`` = (a, b, c, c0)."""
    a, b, c, c0 = weights
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


def _compiled(fn):
    """``torch.compile(fn)``, built on first use and cached (dynamic batch size)."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn]


class CompiledProductFn(ProductFn):
    """:class:`ProductFn` with a torch.compile'd forward and backward (``kernel="compiled"``).

    Saves only z (ProductFn's ``setup_context``); the backward recomputes the components inside one
    compiled graph.  Double backward goes through :func:`product_reference`, as in ProductFn.
    Verified against the plain autograd path to 1e-5 in float32 on the CPU (tests); on CUDA,
    Inductor emits Triton kernels.
    """

    @staticmethod
    def forward(z, a, b, c, c0, w0, activation, gamma):
        return _compiled(product_reference)(z, a, b, c, c0, w0, activation, gamma)

    @staticmethod
    def backward(ctx, grad_phi):
        if torch.is_grad_enabled():  # create_graph=True: ProductFn differentiates the plain graph
            return ProductFn.backward(ctx, grad_phi)
        z, a, b, c, c0 = ctx.saved_tensors
        grads = _compiled(_compiled_backward_impl)(z, (a, b, c, c0), grad_phi.contiguous(), ctx.w0, ctx.activation,
                                                   ctx.gamma)
        return (*grads, None, None, None)


# ----------------------------------------------------------------------------------------------
# Harmonic components: g(t) = c0 + env(theta) * sum_k (alpha_k cos k theta + beta_k sin k theta),
# theta = omega t + phase.  One sin and one cos per element; the higher harmonics come from the
# Chebyshev recurrence cos((k+1) th) = 2 cos th cos k th - cos (k-1) th (same for sin), so K harmonics
# cost a few multiply-adds each instead of K transcendental calls.  env is 1 for sin (LRNN-SIREN),
# sqrt(|theta|) for SPDER and arctan(theta) for SPDER's audio form, so K = 1, alpha = 0 is exactly the
# SPDER activation of theta.


def _envelope(name: str, th: torch.Tensor):
    """(env(theta), env'(theta)) for the harmonic component; None for the plain sine (env = 1)."""
    if name == "sin":
        return None, None
    if name == "spder":
        a = th.abs()
        env = a.clamp_min(SQRT_FLOOR).sqrt()
        d = torch.where(a <= SQRT_FLOOR, torch.zeros_like(th), 0.5 * torch.sign(th) / env)
        return env, d
    return torch.atan(th), 1.0 / (1.0 + th * th)


def harmonic_reference(z, omega, phase, alpha, beta, c0, activation: str):
    """Plain autograd: z (B, r, dbar); omega, phase, c0 (R, dbar); alpha, beta (R, dbar, K)."""
    get_activation(activation)
    th = z * omega + phase
    k = torch.arange(1, alpha.shape[-1] + 1, dtype=z.dtype, device=z.device)
    kt = th.unsqueeze(-1) * k
    s = (alpha * torch.cos(kt) + beta * torch.sin(kt)).sum(-1)
    if activation == "sin":
        return s + c0
    env = (th.abs().clamp_min(SQRT_FLOOR).sqrt() if activation == "spder" else torch.atan(th))
    return env * s + c0


def harmonic_product_reference(z, omega, phase, alpha, beta, c0, activation: str, gamma: float):
    return torch.prod(1.0 + gamma * harmonic_reference(z, omega, phase, alpha, beta, c0, activation), dim=-1)


SAVE_TRIG_ELEMENTS = 1 << 22  # save sin/cos of theta (2 tensors) below this many elements, else recompute


def _harmonics(s1, c1, K):
    """Yield (k, cos k th, sin k th) for k = 1..K by the Chebyshev recurrence."""
    ck, sk = c1, s1
    cp, sp = torch.ones_like(c1), torch.zeros_like(s1)
    two_c = 2.0 * c1 if K > 1 else None
    for k in range(1, K + 1):
        yield k, ck, sk
        if k < K:
            ck, cp = two_c * ck - cp, ck
            sk, sp = two_c * sk - sp, sk


class HarmonicProductFn(torch.autograd.Function):
    """phi(z) = prod_j (1 + gamma g_j(z_j)) with harmonic components, saving z and, for small
    inputs (< :data:`SAVE_TRIG_ELEMENTS` elements), sin/cos of theta; otherwise recomputing them.
    Double backward differentiates :func:`harmonic_product_reference`."""

    @staticmethod
    def forward(z, omega, phase, alpha, beta, c0, activation, gamma):
        th = torch.addcmul(phase, z, omega)
        s1, c1 = torch.sin(th), torch.cos(th)
        S = torch.zeros_like(z)
        for k, ck, sk in _harmonics(s1, c1, alpha.shape[-1]):
            S.addcmul_(ck, alpha[..., k - 1]).addcmul_(sk, beta[..., k - 1])
        env, _ = _envelope(activation, th)
        g = S.mul_(env) if env is not None else S
        f = g.add_(c0).mul_(gamma).add_(1.0)
        phi = torch.prod(f, dim=-1)
        return phi, s1, c1

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, omega, phase, alpha, beta, c0, activation, gamma = inputs
        _, s1, c1 = output
        ctx.save_trig = z.numel() < SAVE_TRIG_ELEMENTS
        if ctx.save_trig:
            ctx.save_for_backward(z, omega, phase, alpha, beta, c0, s1, c1)
        else:
            ctx.save_for_backward(z, omega, phase, alpha, beta, c0)
        ctx.activation, ctx.gamma = activation, gamma
        ctx.mark_non_differentiable(s1, c1)

    @staticmethod
    def backward(ctx, grad_phi, _gs, _gc):
        z, omega, phase, alpha, beta, c0 = ctx.saved_tensors[:6]
        name, gamma = ctx.activation, ctx.gamma
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain graph
            with torch.enable_grad():
                phi = harmonic_product_reference(z, omega, phase, alpha, beta, c0, name, gamma)
                return (*torch.autograd.grad(phi, (z, omega, phase, alpha, beta, c0), grad_phi, create_graph=True),
                        None, None)
        th = torch.addcmul(phase, z, omega)
        if ctx.save_trig:
            s1, c1 = ctx.saved_tensors[6:]
        else:
            s1, c1 = torch.sin(th), torch.cos(th)
        K = alpha.shape[-1]
        S, dS = torch.zeros_like(z), torch.zeros_like(z)
        cks, sks = [], []
        for k, ck, sk in _harmonics(s1, c1, K):
            a_k, b_k = alpha[..., k - 1], beta[..., k - 1]
            S.addcmul_(ck, a_k).addcmul_(sk, b_k)
            dS.addcmul_(ck, b_k * k).addcmul_(sk, a_k * -k)
            cks.append(ck)
            sks.append(sk)
        env, denv = _envelope(name, th)
        g = S * env if env is not None else S
        f = g.add_(c0).mul_(gamma).add_(1.0)
        gg = _exclusive_prod(f).mul_(grad_phi.unsqueeze(-1) * gamma)          # dL/dg, (B, r, dbar)
        gc0 = _reduce_to(gg, c0.shape)
        ge = gg * env if env is not None else gg                                # dL/dS
        galpha = torch.stack([_reduce_to(ge * ck, c0.shape) for ck in cks], -1)
        gbeta = torch.stack([_reduce_to(ge * sk, c0.shape) for sk in sks], -1)
        dth = dS.mul_(ge)                                                       # dL/dtheta
        if env is not None:
            dth.addcmul_(gg, denv.mul_(S))
        gz = dth * omega
        gphase = _reduce_to(dth, c0.shape)
        gomega = _reduce_to(dth.mul_(z), c0.shape)
        return gz, gomega, gphase, galpha, gbeta, gc0, None, None


def _exclusive_prod_unrolled(f: torch.Tensor) -> torch.Tensor:
    """prod_{i != j} f_i along the last axis by explicit products (dbar <= 4: fuses under torch.compile)."""
    d = f.shape[-1]
    if d > 4:
        return _exclusive_prod(f)
    cols = [f[..., i] for i in range(d)]
    out = []
    for j in range(d):
        others = [cols[i] for i in range(d) if i != j]
        p = others[0] if others else torch.ones_like(cols[0])
        for o in others[1:]:
            p = p * o
        out.append(p)
    return torch.stack(out, -1)


def _harmonic_terms(th, alpha, beta, activation: str):
    """cos k th, sin k th (k = 1..K, by recurrence), S = sum alpha_k cos + beta_k sin, dS/dth, env, env'."""
    s1, c1 = torch.sin(th), torch.cos(th)
    cs, ss = [c1], [s1]
    for _ in range(1, alpha.shape[-1]):
        cs.append(2.0 * c1 * cs[-1] - (cs[-2] if len(cs) > 1 else 1.0))
        ss.append(2.0 * c1 * ss[-1] - (ss[-2] if len(ss) > 1 else 0.0))
    S = sum(alpha[..., k] * cs[k] + beta[..., k] * ss[k] for k in range(len(cs)))
    dS = sum((k + 1) * (beta[..., k] * cs[k] - alpha[..., k] * ss[k]) for k in range(len(cs)))
    return (cs, ss, S, dS, *_envelope(activation, th))


def _harmonic_forward_impl(z, omega, phase, alpha, beta, c0, activation: str, gamma: float):
    th = z * omega + phase
    _, _, S, _, env, _ = _harmonic_terms(th, alpha, beta, activation)
    f = 1.0 + gamma * ((S if env is None else env * S) + c0)
    p = f[..., 0]
    for j in range(1, f.shape[-1]):
        p = p * f[..., j]
    return p


PARTIAL_ROWS = 64  # the compiled backward sums its per-element terms over blocks of this many batch rows


def _harmonic_backward_impl(z, weights: tuple, grad_phi, activation: str, gamma: float):
    """``weights`` = (omega, phase, alpha, beta, c0).  dL/dz, and the parameter-gradient terms summed over blocks of :data:`PARTIAL_ROWS` batch rows
    (the batch must be a multiple of it), in the order omega, phase, alpha_1..K, beta_1..K, c0.
    Separate outputs and in-kernel block sums: a stacked output, or full batch reductions, compile to
    much slower kernels on the CPU; the remaining (B / 64)-row sums are left to eager code."""
    omega, phase, alpha, beta, c0 = weights
    th = z * omega + phase
    cs, ss, S, dS, env, denv = _harmonic_terms(th, alpha, beta, activation)
    f = 1.0 + gamma * ((S if env is None else env * S) + c0)
    gg = _exclusive_prod_unrolled(f) * (grad_phi.unsqueeze(-1) * gamma)    # dL/dg
    ge = gg if env is None else gg * env                                    # dL/dS
    dth = ge * dS if env is None else ge * dS + gg * denv * S               # dL/dtheta
    terms = (dth * z, dth, *[ge * c for c in cs], *[ge * s for s in ss], gg)
    return (dth * omega, *[t.view(-1, PARTIAL_ROWS, *t.shape[1:]).sum(1) for t in terms])


BACKWARD_ROWS = 8192  # batch rows per compiled backward call (a multiple of PARTIAL_ROWS; bounds the temporaries)


class CompiledHarmonicFn(torch.autograd.Function):
    """Harmonic-component product with torch.compile'd forward and backward: each is one fused loop over
    the (batch, rank, dbar) elements (C++/OpenMP on the CPU, Triton on CUDA), so the ~20 elementwise
    operations per element read and write memory once instead of once each.  Saves only z; the
    backward recomputes sin/cos.  Double backward differentiates :func:`harmonic_product_reference`."""

    @staticmethod
    def forward(z, omega, phase, alpha, beta, c0, activation, gamma):
        return _compiled(_harmonic_forward_impl)(z, omega, phase, alpha, beta, c0, activation, gamma)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, omega, phase, alpha, beta, c0, activation, gamma = inputs
        ctx.save_for_backward(z, omega, phase, alpha, beta, c0)
        ctx.activation, ctx.gamma = activation, gamma

    @staticmethod
    def backward(ctx, grad_phi):
        z, omega, phase, alpha, beta, c0 = ctx.saved_tensors
        name, gamma = ctx.activation, ctx.gamma
        if torch.is_grad_enabled():
            with torch.enable_grad():
                phi = harmonic_product_reference(z, omega, phase, alpha, beta, c0, name, gamma)
                return (*torch.autograd.grad(phi, (z, omega, phase, alpha, beta, c0), grad_phi, create_graph=True),
                        None, None)
        K = alpha.shape[-1]
        n = z.shape[0]
        pad = -n % PARTIAL_ROWS
        if pad:  # zero rows of grad_phi add nothing to any gradient
            z = torch.cat([z, z.new_zeros(pad, *z.shape[1:])])
            grad_phi = torch.cat([grad_phi, grad_phi.new_zeros(pad, *grad_phi.shape[1:])])
        grad_phi = grad_phi.contiguous()
        parts, sums = [], None
        for lo in range(0, z.shape[0], BACKWARD_ROWS):
            hi = min(lo + BACKWARD_ROWS, z.shape[0])
            gzc, *per = _compiled(_harmonic_backward_impl)(z[lo:hi], (omega, phase, alpha, beta, c0),
                                                           grad_phi[lo:hi], name, gamma)
            parts.append(gzc)
            part = torch.stack([t.sum(0) for t in per])                        # (2K + 3, r, dbar)
            sums = part if sums is None else sums + part
        gz = (parts[0] if len(parts) == 1 else torch.cat(parts))[:n]
        if c0.shape[0] == 1 and z.shape[1] != 1:   # shared components: also sum over the r neurons
            sums = sums.sum(1, keepdim=True)
        g_omega, g_phase = sums[0], sums[1]
        g_alpha = sums[2:2 + K].permute(1, 2, 0)
        g_beta = sums[2 + K:2 + 2 * K].permute(1, 2, 0)
        return gz, g_omega, g_phase, g_alpha.contiguous(), g_beta.contiguous(), sums[-1], None, None


KERNELS = ("auto", "cpp", "fused", "compiled", "plain")


def resolve_kernel(kernel: str, component: str, z: torch.Tensor, alpha: torch.Tensor | None = None,
                   activation: str = "sin") -> str:
    """The kernel that evaluates a layer's components and product for this input.

    ``"auto"``: on the CPU, the C++ kernel for harmonic components where it builds and supports the input
    (:func:`inr.layers.lrnn_cpp.supports`), else ``"fused"``; on CUDA, ``"compiled"`` (Triton) where
    Triton is installed and ``INR_COMPILE`` is not ``0``, else ``"fused"``.  ``"cpp"`` falls back the same
    way on inputs it does not support (MLP components, CUDA, other dtypes, K > 8, no compiler).  Under
    torch.func transforms every kernel gives way to ``"plain"``."""
    if torch._C._functorch.is_functorch_wrapped_tensor(z):  # vmap / jvp / grad: only the plain graph is safe
        return "plain"
    if kernel not in ("auto", "cpp"):
        return kernel
    if component == "harmonic" and lrnn_cpp.supports(z, alpha, activation):
        return "cpp"
    if kernel == "auto" and z.device.type == "cuda" and os.environ.get("INR_COMPILE", "1") != "0" \
            and importlib.util.find_spec("triton") is not None:
        return "compiled"
    return "fused"


def lrnn_product(z: torch.Tensor, params, component: str, kernel: str, activation: str, gamma: float,
                 comp_w0: float = 1.0) -> torch.Tensor:
    """phi = prod_j (1 + gamma g_j(z_j)) for z (B, r, dbar) with the given kernel (after
    :func:`resolve_kernel`).  params: (a, b, c, c0) for ``component="mlp"`` (comp_w0 is their w0),
    (omega, phase, alpha, beta, c0) for ``"harmonic"``.  The functional entry point for the layer and
    for the stacked models of :mod:`inr.batched`."""
    mlp = component == "mlp"
    kernel = resolve_kernel(kernel, component, z, None if mlp else params[2], activation)
    if kernel == "plain":
        if mlp:
            return product_reference(z, *params, comp_w0, activation, gamma)
        return harmonic_product_reference(z, *params, activation, gamma)
    if mlp:
        fn = CompiledProductFn if kernel == "compiled" else ProductFn
        return fn.apply(z, *params, comp_w0, activation, gamma)
    if kernel == "cpp":
        return lrnn_cpp.harmonic_product_cpp(z, *params, activation, gamma)
    if kernel == "compiled":
        return CompiledHarmonicFn.apply(z, *params, activation, gamma)
    return HarmonicProductFn.apply(z, *params, activation, gamma)[0]


COMPONENTS = ("mlp", "harmonic")
STEP_SCALE = 30.0  # band="projection": the first layer's fixed projection multiplier (SIREN's image w0)
BANDS = ("component", "projection")
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
        width: m, hidden width of each univariate component MLP (1 -> m -> 1); ``component="mlp"`` only.
        w0: frequency factor.  MLP components: inside the component activation.  With
            ``band="projection"`` on the first layer it sets the projection's band instead (SIREN-style,
            ``z = s (P x + p)`` with ``s P ~ U(-w0/n, w0/n)`` and a fixed ``s = STEP_SCALE = 30``, so the
            size of an Adam step on the band does not grow with w0), and the components run at unit
            frequency.
        activation: ``"sin"`` (LRNN-SIREN), ``"spder"`` (LRNN-SPDER, images) or ``"spder-atan"`` (audio).
        shared: one set of dbar components shared by all r neurons (dbar components instead of r*dbar).
        is_first: the layer reads raw coordinates in [-1, 1]; sets the frequency initialisation.
        component: ``"mlp"`` (the paper's 1 -> m -> 1 MLP, the reference) or ``"harmonic"``
            (``g = c0 + env(theta) sum_k alpha_k cos k theta + beta_k sin k theta``, ``theta = omega t + phase``,
            env = 1 for sin, sqrt|theta| for spder, arctan for spder-atan; one sin and cos per element).
        harmonics: K, the number of harmonics of a harmonic component.
        band: first layer only. ``"component"``: the band comes from the component frequencies (w0 * a,
            the original choice); ``"projection"``: from the projection (see w0), as SIREN's first
            layer, so the band is a single uniform draw rather than a product of two random factors and
            Adam's steps on the components and the projection do not scale with w0.
        component_std: sigma_g, the standard deviation of each component at initialisation; then
            Var[phi] <= exp(sigma_g^2) - 1 whatever dbar is (Lemma 1 of the paper).
        layernorm: LayerNorm over the r outputs (the paper's deep models need it).
        memory_efficient: evaluate steps 2-3 with a recomputing kernel (False: plain autograd,
            ``kernel="plain"``).
        kernel: ``"auto"`` (default; :func:`resolve_kernel`: the C++ kernel for harmonic components on the
            CPU, the compiled one on CUDA), ``"cpp"`` (:mod:`inr.layers.lrnn_cpp`, harmonic components on the
            CPU; others fall back to fused), ``"fused"`` (chunked eager recompute), ``"compiled"``
            (:class:`CompiledProductFn` / :class:`CompiledHarmonicFn`, torch.compile; Triton on CUDA) or
            ``"plain"``.
        precision: ``"bf16"`` runs the projection of a hidden layer (not the first, whose raw
            coordinates are multiplied by w0) in bfloat16 with a float32 result; components, product and
            LayerNorm stay float32.  ``"fp32"``: everything float32.
    """

    def __init__(self, in_features: int, rank: int, dbar: int = 4, width: int = 4, w0: float = 30.0,
                 activation: str = "sin", shared: bool = False, is_first: bool = False,
                 component_std: float = 1.0, layernorm: bool = True, memory_efficient: bool = True,
                 kernel: str = "auto", precision: str = "fp32", component: str = "mlp", harmonics: int = 2,
                 band: str = "component", device=None, dtype=None):
        super().__init__()
        if min(in_features, rank, dbar, width, harmonics) < 1:
            raise InputError("in_features, rank, dbar, width and harmonics must all be >= 1")
        if not (math.isfinite(w0) and w0 > 0):
            raise InputError(f"w0 must be a finite positive number, got {w0}")
        get_activation(activation)
        for name, val, allowed in (("kernel", kernel, KERNELS), ("precision", precision, PRECISIONS),
                                   ("component", component, COMPONENTS), ("band", band, BANDS)):
            if val not in allowed:
                raise InputError(f"{name} must be one of {', '.join(allowed)}, got {val!r}")
        fk = {"device": device, "dtype": dtype}
        self.in_features, self.rank, self.dbar, self.width = in_features, rank, dbar, width
        self.w0, self.activation, self.shared, self.is_first = float(w0), activation, bool(shared), bool(is_first)
        self.component, self.harmonics, self.band = component, int(harmonics), band
        self.component_std = float(component_std)
        self.kernel = kernel if memory_efficient else "plain"
        self.memory_efficient = self.kernel != "plain"
        self.precision = precision
        self.gamma = dbar ** -0.5
        # band="projection" moves w0 from the components (first layer) to the projection: z = s (P x + p)
        # with a FIXED s = STEP_SCALE and P ~ U(-w0/(s n), w0/(s n)), so w0 sets the band and s alone sets
        # how far one Adam step moves a first-layer frequency (s * lr), whatever the band (audio w0 ~ 3000)
        self.scale = STEP_SCALE if (self.is_first and band == "projection") else 1.0
        self.comp_w0 = 1.0 if self.scale != 1.0 else self.w0
        self.proj = nn.Linear(in_features, rank * dbar, **fk)
        R = 1 if shared else rank
        if component == "mlp":
            self.a = nn.Parameter(torch.empty(R, dbar, width, **fk))
            self.b = nn.Parameter(torch.empty(R, dbar, width, **fk))
            self.c = nn.Parameter(torch.empty(R, dbar, width, **fk))
        else:
            self.omega = nn.Parameter(torch.empty(R, dbar, **fk))
            self.phase = nn.Parameter(torch.empty(R, dbar, **fk))
            self.alpha = nn.Parameter(torch.empty(R, dbar, harmonics, **fk))
            self.beta = nn.Parameter(torch.empty(R, dbar, harmonics, **fk))
        self.c0 = nn.Parameter(torch.empty(R, dbar, **fk))
        self.norm = nn.LayerNorm(rank, **fk) if layernorm else None
        self.reset_parameters()

    @property
    def out_features(self) -> int:
        return self.rank

    def _init_grid(self) -> torch.Tensor:
        """Points standing in for the distribution of z at initialisation (float64)."""
        if self.scale != 1.0:  # first layer, band="projection": z spans about w0 * [-1, 1]
            return self.w0 * torch.linspace(-1.0, 1.0, 2048, dtype=torch.float64)  # spacing need not resolve a period
        return _quantile_grid()  # z ~ N(0, 1): LayerNorm'd h and the projection bound below

    def reset_parameters(self) -> None:
        if self.c0.is_meta:  # shape-only build (parameter counting)
            return
        n = self.in_features
        with torch.no_grad():
            if self.scale != 1.0:
                # SIREN's first layer: z = w0 P x + s p with w0 P ~ U(-w0/n, w0/n); a uniform phase spread.
                self.proj.weight.uniform_(-1.0 / n, 1.0 / n).mul_(self.w0 / self.scale)
                self.proj.bias.uniform_(-1.0 / math.sqrt(n), 1.0 / math.sqrt(n))
            else:
                # Projection: unit-variance z for unit-variance h (LayerNorm'd hidden features);
                # first layer: coordinates in [-1, 1] (variance 1/3) spread over the same range.
                bound = math.sqrt(3.0 / n) * (math.sqrt(3.0) if self.is_first else 1.0)
                self.proj.weight.uniform_(-bound, bound)
                self.proj.bias.uniform_(-1.0, 1.0) if self.is_first else self.proj.bias.zero_()
            t = self._init_grid().to(self.c0.device)
            if self.component == "mlp":
                G = self._init_mlp(t)
                params = (self.c,)
            else:
                G = self._init_harmonic(t)
                params = (self.alpha, self.beta)
            # Lemma 1 wants zero-mean components of variance component_std^2: centre and scale each
            # component over the stand-in grid of its inputs.
            scale = self.component_std / G.var(0, unbiased=False).mean().clamp_min(1e-12).sqrt()
            for p in params:
                p.mul_(scale.to(p.dtype))
            self.c0.copy_(-G.mean(0) * scale)
            if self.norm is not None:
                self.norm.reset_parameters()

    def _init_mlp(self, t: torch.Tensor) -> torch.Tensor:
        w = self.comp_w0
        if self.scale != 1.0:
            # unit-frequency components on a w0-scaled projection: unit k starts at frequency k
            k = torch.arange(1, self.width + 1, dtype=self.a.dtype, device=self.a.device)
            self.a.copy_(k.expand_as(self.a))
        else:
            # first layer like SIREN's first layer (w0 * a, a ~ U(-1, 1)); hidden layers like
            # SIREN's hidden layers (w0 * a ~ U(-sqrt 6, sqrt 6)).
            fa = 1.0 if self.is_first else math.sqrt(6.0) / w
            self.a.uniform_(-fa, fa)
        self.b.uniform_(-math.pi / w, math.pi / w)  # uniform phase -> zero-mean sigma
        self.c.uniform_(-1.0, 1.0)
        u = w * (t[:, None, None, None] * self.a.double() + self.b.double())   # (T, R, dbar, m)
        return (get_activation(self.activation)(u) * self.c.double()).sum(-1)  # (T, R, dbar)

    def _init_harmonic(self, t: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            self.omega.fill_(1.0)
        elif self.is_first:
            self.omega.uniform_(-self.w0, self.w0)
        else:
            self.omega.uniform_(-math.sqrt(6.0), math.sqrt(6.0))
        self.phase.uniform_(-math.pi, math.pi)
        k = torch.arange(1, self.harmonics + 1, dtype=self.alpha.dtype, device=self.alpha.device)
        self.alpha.uniform_(-1.0, 1.0).div_(k)   # a 1/k spectrum: the fundamental dominates at init
        self.beta.uniform_(-1.0, 1.0).div_(k)
        zeros = torch.zeros_like(self.c0, dtype=torch.float64)
        return harmonic_reference(t[:, None, None], self.omega.double(), self.phase.double(), self.alpha.double(),
                                  self.beta.double(), zeros, self.activation)

    def _component_params(self):
        if self.component == "mlp":
            return self.a, self.b, self.c, self.c0
        return self.omega, self.phase, self.alpha, self.beta, self.c0

    def components(self, z: torch.Tensor) -> torch.Tensor:
        """g(z) for z of shape (..., rank, dbar) (plain autograd; for inspection and tests)."""
        if self.component == "mlp":
            return components_reference(z, self.a, self.b, self.c, self.c0, self.comp_w0, self.activation)
        return harmonic_reference(z, *self._component_params(), self.activation)

    def component_jet(self, t: torch.Tensor):
        """(g, g', g'') of every component at its input ``t`` (..., rank, dbar): the value and its first
        two derivatives in t, in plain torch operations (forward-mode Laplacians, :mod:`pde.forward`)."""
        if self.component == "mlp":
            wa, wb = self.comp_w0 * self.a, self.comp_w0 * self.b                  # (R, dbar, m)
            u = t.unsqueeze(-1) * wa + wb                                          # (..., r, dbar, m)
            s, ds, dds = activation_jet(self.activation, u)
            c = self.c
            return (s * c).sum(-1) + self.c0, (ds * (c * wa)).sum(-1), (dds * (c * wa * wa)).sum(-1)
        om = self.omega
        th = t * om + self.phase
        k = torch.arange(1, self.alpha.shape[-1] + 1, dtype=t.dtype, device=t.device)
        kt = th.unsqueeze(-1) * k
        cs, sn = torch.cos(kt), torch.sin(kt)
        A, B = self.alpha, self.beta
        S0 = (A * cs + B * sn).sum(-1)
        S1 = ((B * cs - A * sn) * k).sum(-1)
        S2 = -((A * cs + B * sn) * (k * k)).sum(-1)
        if self.activation == "sin":
            G, G1, G2 = S0, S1, S2
        else:
            e, de, dde = sqrt_envelope_jet(th) if self.activation == "spder" else atan_envelope_jet(th)
            G, G1, G2 = e * S0, de * S0 + e * S1, dde * S0 + 2.0 * de * S1 + e * S2
        return G + self.c0, G1 * om, G2 * (om * om)

    def product(self, h: torch.Tensor) -> torch.Tensor:
        """phi before LayerNorm, shape (..., rank)."""
        z = self.project(h).unflatten(-1, (self.rank, self.dbar))
        mlp = self.component == "mlp"
        # torch.func transforms (vmap, jvp, grad) wrap tensors; the in-place fused path is not
        # transform-safe, so those go through the plain graph (exact, m times the memory).
        if not self.memory_efficient or torch._C._functorch.is_functorch_wrapped_tensor(z):
            if mlp:
                return product_reference(z, self.a, self.b, self.c, self.c0, self.comp_w0, self.activation, self.gamma)
            return harmonic_product_reference(z, *self._component_params(), self.activation, self.gamma)
        lead = z.shape[:-2]
        z = z.reshape(-1, self.rank, self.dbar)
        phi = lrnn_product(z, self._component_params(), self.component, self.kernel, self.activation, self.gamma,
                           self.comp_w0)
        return phi.reshape(*lead, self.rank)

    @property
    def low_precision(self) -> bool:
        """Whether the projection runs in bfloat16 (``precision="bf16"`` on a hidden layer)."""
        return self.precision == "bf16" and not self.is_first

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """z = scale (P h + p) (flat, ``(..., rank * dbar)``), in bfloat16 if :attr:`low_precision`."""
        if self.low_precision:
            bf = torch.bfloat16
            return nn.functional.linear(h.to(bf), self.proj.weight.to(bf), self.proj.bias.to(bf)).to(h.dtype)
        z = self.proj(h)
        return z * self.scale if self.scale != 1.0 else z

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        phi = self.product(h)
        return self.norm(phi) if self.norm is not None else phi

    def extra_repr(self) -> str:
        comp = (f"width={self.width}" if self.component == "mlp" else f"component='harmonic', harmonics={self.harmonics}")
        return (f"in_features={self.in_features}, rank={self.rank}, dbar={self.dbar}, {comp}, "
                f"w0={self.w0}, activation={self.activation!r}, shared={self.shared}, is_first={self.is_first}, "
                f"band={self.band!r}, kernel={self.kernel!r}, precision={self.precision!r}")

    @staticmethod
    def count(in_features: int, rank: int, dbar: int, width: int, shared: bool = False, layernorm: bool = True,
              component: str = "mlp", harmonics: int = 2) -> int:
        """Parameter count: r*dbar*(n_in + 1) + R*dbar*(per-component) + 2r, R = 1 if shared else r;
        per component 3m + 1 (MLP) or 2K + 3 (harmonic)."""
        R = 1 if shared else rank
        per = 3 * width + 1 if component == "mlp" else 2 * harmonics + 3
        return rank * dbar * (in_features + 1) + R * dbar * per + (2 * rank if layernorm else 0)
