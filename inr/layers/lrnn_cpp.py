"""The C++ CPU kernel for harmonic LRNN components and their product (``kernel="cpp"``).

A functional twin of :func:`inr.layers.lrnn.harmonic_product_reference`:
:func:`harmonic_product_cpp` takes ``z (B, r, dbar)``, the component parameters and the configuration and
returns ``phi (B, r)`` with a custom backward.  Forward and backward are one pass over each batch row
(``lrnn_harmonic.cpp``): one sin and cos per element, the K harmonics by the Chebyshev recurrence in
registers, the product and its division-free partial products, and the parameter gradients summed in
blocks per thread.  Rows are split over ``torch.get_num_threads()`` OpenMP threads (the same libgomp as
torch's own).  The backward saves only z and the parameters.

The library is compiled on first use with the system C++ compiler (``$CXX``, else ``g++``/``c++``;
~5 s of compiler time) into ``$INR_KERNEL_CACHE`` (default ``~/.cache/inr/kernels``), one file per source, flags and CPU
capability, written atomically; later processes load it.  It uses no torch headers, so it builds in
seconds rather than the ~30 s of a ``torch.utils.cpp_extension`` module, and is called through ctypes
(which releases the GIL).  :func:`available` says whether it built (``INR_CPP_KERNEL=0`` turns it off);
when it did not, or for unsupported inputs (see :func:`supports`), callers use the eager kernel.

Double backward (``create_graph=True``, e.g. reverse-mode PDE Laplacians) differentiates the reference
expression, as the other LRNN kernels do; the forward-mode Laplacian of :mod:`pde.forward` never calls a
kernel.  float32 uses a Cody-Waite reduction and Cephes polynomials for sin/cos (and arctan), accurate
to a few float32 ulps; a row with ``|theta| > 65536`` is evaluated with libm.  float64 uses libm.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from .sine import SQRT_FLOOR

SOURCE = Path(__file__).with_name("lrnn_harmonic.cpp")
MAX_HARMONICS = 8
ACTIVATIONS = {"sin": 0, "spder": 1, "spder-atan": 2}
_FLAGS = {  # by torch's CPU capability (ATEN_CPU_CAPABILITY), so a cached build never outruns the CPU
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mavx2", "-mfma", "-mprefer-vector-width=512"],
    "AVX2": ["-mavx2", "-mfma"],
}
_BASE_FLAGS = ["-O3", "-shared", "-fPIC", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-std=c++17"]

_state: dict = {}


def _compiler() -> str | None:
    for c in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if c and shutil.which(c):
            return shutil.which(c)
    return None


def _cache_dir() -> Path:
    return Path(os.environ.get("INR_KERNEL_CACHE") or Path.home() / ".cache" / "inr" / "kernels")


def _build() -> ctypes.CDLL:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler on the PATH (set CXX)")
    cap = torch.backends.cpu.get_cpu_capability()
    flags = _BASE_FLAGS + _FLAGS.get(cap, [])
    src = SOURCE.read_bytes()
    tag = hashlib.sha256(src + " ".join([cxx, *flags]).encode()).hexdigest()[:16]
    lib = _cache_dir() / f"lrnn_harmonic_{cap.lower()}_{tag}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
        os.close(fd)
        try:
            proc = subprocess.run([cxx, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{cxx} failed: {proc.stderr.strip()[-2000:]}")
            os.replace(tmp, lib)   # atomic: concurrent builders each write their own file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    dll = ctypes.CDLL(str(lib))
    i64, i32, f64, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_void_p
    for name in ("lrnn_harmonic_forward_f32", "lrnn_harmonic_forward_f64"):
        fn = getattr(dll, name)
        fn.restype = i32
        fn.argtypes = [ptr] * 7 + [i64, i64, i64, i32, i32, f64, i32]
    for name in ("lrnn_harmonic_backward_f32", "lrnn_harmonic_backward_f64"):
        fn = getattr(dll, name)
        fn.restype = i32
        fn.argtypes = [ptr] * 9 + [i64, i64, i64, i32, i32, f64, i32]
    return dll


def library() -> ctypes.CDLL | None:
    """The compiled library, built on first use; None where it cannot be built (reason: :func:`build_error`)."""
    if "lib" not in _state:
        if os.environ.get("INR_CPP_KERNEL", "1") == "0":
            _state["lib"], _state["error"] = None, "INR_CPP_KERNEL=0"
        else:
            try:
                _state["lib"], _state["error"] = _build(), None
            except (OSError, RuntimeError, AttributeError) as e:
                _state["lib"], _state["error"] = None, str(e)
    return _state["lib"]


def available() -> bool:
    """Whether the C++ kernel is built (building it now if needed)."""
    return library() is not None


def build_error() -> str | None:
    """Why the kernel is not available (None when it is, or has not been tried)."""
    return _state.get("error")


def supports(z: torch.Tensor, alpha: torch.Tensor, activation: str) -> bool:
    """Whether :func:`harmonic_product_cpp` handles these inputs: CPU, float32/float64, K <= 8, a known
    activation, and a built library."""
    return (z.device.type == "cpu" and z.dtype in (torch.float32, torch.float64)
            and 1 <= alpha.shape[-1] <= MAX_HARMONICS and activation in ACTIVATIONS and available())


def harmonic_product_plain(z, omega, phase, alpha, beta, c0, activation: str, gamma: float) -> torch.Tensor:
    """The same phi by plain autograd (cos k theta and sin k theta directly): the double-backward path."""
    th = z * omega + phase
    kt = th.unsqueeze(-1) * torch.arange(1, alpha.shape[-1] + 1, dtype=z.dtype, device=z.device)
    g = (alpha * torch.cos(kt) + beta * torch.sin(kt)).sum(-1)
    if activation == "spder":
        g = th.abs().clamp_min(SQRT_FLOOR).sqrt() * g
    elif activation == "spder-atan":
        g = torch.atan(th) * g
    return torch.prod(1.0 + gamma * (g + c0), dim=-1)


def _flat(z, omega, phase, alpha, beta, c0):
    """Contiguous (E,) / (K, E) parameter arrays in z's dtype (shared components expanded to r rows)."""
    B, r, dbar = z.shape
    dt = z.dtype
    ex = lambda t: t.detach().to(dt).expand(r, dbar).contiguous().view(-1)
    exk = lambda t: t.detach().to(dt).expand(r, dbar, t.shape[-1]).permute(2, 0, 1).contiguous().view(t.shape[-1], -1)
    return ex(omega), ex(phase), exk(alpha), exk(beta), ex(c0)


def _threads(work: int) -> int:
    return max(1, min(torch.get_num_threads(), work // 32768 or 1))


def _check(rc: int):
    if rc != 0:
        raise RuntimeError(f"lrnn_harmonic kernel returned {rc}")


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


class CppHarmonicFn(torch.autograd.Function):
    """Autograd wrapper around the C++ kernel: saves z and the parameters; double backward differentiates
    the reference expression."""

    @staticmethod
    def forward(z, omega, phase, alpha, beta, c0, activation, gamma):
        z = z.detach().contiguous()
        B, r, dbar = z.shape
        om, ph, al, be, cc = _flat(z, omega, phase, alpha, beta, c0)
        phi = z.new_empty(B, r)
        fn = library().lrnn_harmonic_forward_f32 if z.dtype == torch.float32 else library().lrnn_harmonic_forward_f64
        _check(fn(_ptr(z), _ptr(om), _ptr(ph), _ptr(al), _ptr(be), _ptr(cc), _ptr(phi), B, r, dbar,
                  alpha.shape[-1], ACTIVATIONS[activation], float(gamma), _threads(z.numel())))
        return phi

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, omega, phase, alpha, beta, c0, activation, gamma = inputs
        ctx.save_for_backward(z, omega, phase, alpha, beta, c0)
        ctx.activation, ctx.gamma = activation, gamma

    @staticmethod
    def backward(ctx, grad_phi):
        z, omega, phase, alpha, beta, c0 = ctx.saved_tensors
        name, gamma = ctx.activation, ctx.gamma
        if torch.is_grad_enabled():  # create_graph=True (second derivatives): differentiate the plain graph
            with torch.enable_grad():
                phi = harmonic_product_plain(z, omega, phase, alpha, beta, c0, name, gamma)
                return (*torch.autograd.grad(phi, (z, omega, phase, alpha, beta, c0), grad_phi, create_graph=True),
                        None, None)
        zc = z.detach().contiguous()
        B, r, dbar = zc.shape
        K = alpha.shape[-1]
        om, ph, al, be, cc = _flat(zc, omega, phase, alpha, beta, c0)
        gphi = grad_phi.to(zc.dtype).contiguous()
        gz = torch.empty_like(zc)
        grads = zc.new_empty(2 * K + 3, r, dbar)
        fn = library().lrnn_harmonic_backward_f32 if zc.dtype == torch.float32 else library().lrnn_harmonic_backward_f64
        _check(fn(_ptr(zc), _ptr(om), _ptr(ph), _ptr(al), _ptr(be), _ptr(cc), _ptr(gphi), _ptr(gz), _ptr(grads),
                  B, r, dbar, K, ACTIVATIONS[name], float(gamma), _threads(zc.numel())))
        if c0.shape[0] == 1 and r != 1:   # shared components: also sum over the r neurons
            grads = grads.sum(1, keepdim=True)
        g_alpha = grads[2:2 + K].permute(1, 2, 0).contiguous()
        g_beta = grads[2 + K:2 + 2 * K].permute(1, 2, 0).contiguous()
        dt = omega.dtype
        return (gz, grads[0].to(dt), grads[1].to(dt), g_alpha.to(dt), g_beta.to(dt), grads[-1].to(dt), None, None)


def harmonic_product_cpp(z, omega, phase, alpha, beta, c0, activation: str, gamma: float) -> torch.Tensor:
    """phi = prod_j (1 + gamma g_j(z_j)) with harmonic components, by the C++ kernel.

    z: (B, r, dbar); omega, phase, c0: (R, dbar); alpha, beta: (R, dbar, K), R in {1, r}.  Callers check
    :func:`supports` first (or use :func:`inr.layers.lrnn.harmonic_product`, which falls back)."""
    return CppHarmonicFn.apply(z, omega, phase, alpha, beta, c0, activation, gamma)
