"""Fan-beam CT against independent references: closed-form line integrals of an ellipse and of a
Gaussian, a dense float64 ray-sampling integral of the same analytic functions, the adjoint identity,
and the weighted fan FBP of a closed-form sinogram.  (astra-toolbox's 2.5.0 wheel for this Python links
the CUDA runtime and cuFFT even for its CPU projectors, so it is not used here.)"""
import math

import numpy as np
import pytest
import torch

from tomography import Projector, fan_geometry
from tomography.baselines import fbp, matrix_sart


def _rays(g):
    """Source points and unit directions ``(views, detectors)`` of every ray, from the documented geometry."""
    b = np.deg2rad(np.asarray(g.theta))[:, None]
    u = g.detector_positions()[None, :]
    D, S = g.source_distance, g.detector_distance
    sx, sy = D * np.cos(b) + 0 * u, D * np.sin(b) + 0 * u
    px, py = sx - S * np.cos(b) - u * np.sin(b), sy - S * np.sin(b) + u * np.cos(b)
    n = np.hypot(px - sx, py - sy)
    return sx, sy, (px - sx) / n, (py - sy) / n


def _ellipse(cx, cy, a, b, phi):
    c, s = math.cos(phi), math.sin(phi)
    return lambda X, Y: ((c * (X - cx) + s * (Y - cy)) / a) ** 2 + ((-s * (X - cx) + c * (Y - cy)) / b) ** 2 <= 1


def _ellipse_integrals(g, cx, cy, a, b, phi):
    """Chord lengths of the rays through the ellipse (closed form: the roots of a quadratic)."""
    sx, sy, dx, dy = _rays(g)
    c, s = math.cos(phi), math.sin(phi)
    pu, pv = (c * (sx - cx) + s * (sy - cy)) / a, (-s * (sx - cx) + c * (sy - cy)) / b
    qu, qv = (c * dx + s * dy) / a, (-s * dx + c * dy) / b
    A, B, C = qu * qu + qv * qv, pu * qu + pv * qv, pu * pu + pv * pv - 1
    disc = B * B - A * C
    return np.where(disc > 0, 2 * np.sqrt(np.maximum(disc, 0)) / A, 0.0)


def _dense(g, f, h=0.02):
    """Line integrals by sampling ``f`` every ``h`` pixels along each ray (float64)."""
    sx, sy, dx, dy = _rays(g)
    R = 0.5 * math.hypot(*g.shape) + 1
    t = np.arange(g.source_distance - R, g.source_distance + R, h)
    out = np.zeros(sx.shape)
    for k in range(sx.shape[0]):
        X = sx[k][:, None] + t[None, :] * dx[k][:, None]
        Y = sy[k][:, None] + t[None, :] * dy[k][:, None]
        out[k] = f(X, Y).sum(1) * h
    return out


def _centred(shape):
    H, W = shape
    Y, X = np.mgrid[:H, :W].astype(np.float64)
    return X - (W - 1) / 2, Y - (H - 1) / 2


def test_fan_projector_matches_closed_form_and_dense_sampling_of_a_gaussian():
    g = fan_geometry((64, 80), np.linspace(0, 360, 24, endpoint=False), det_offset=3.0)
    x0, y0, sig = -7.0, 9.0, 5.0                      # off centre, so a mirrored or shifted geometry fails
    f = lambda X, Y: np.exp(-((X - x0) ** 2 + (Y - y0) ** 2) / (2 * sig ** 2))
    sx, sy, dx, dy = _rays(g)
    dist = np.abs((x0 - sx) * dy - (y0 - sy) * dx)
    closed = math.sqrt(2 * math.pi) * sig * np.exp(-dist ** 2 / (2 * sig ** 2))
    dense = _dense(g, f)
    np.testing.assert_allclose(dense, closed, atol=1e-9 * closed.max())        # the reference itself
    P = Projector.for_geometry(g, dtype=torch.float64)
    ours = P.forward(torch.from_numpy(f(*_centred(g.shape)))).numpy()        # the pixel-sampled Gaussian
    assert np.linalg.norm(ours - dense) / np.linalg.norm(dense) < 5e-3      # bilinear error ~ (1 / sigma)^2 / 8
    assert np.abs(ours - dense).max() < 8e-3 * dense.max()


def test_fan_projector_of_an_ellipse_against_its_chord_lengths():
    g = fan_geometry((64, 64), np.linspace(0, 360, 30, endpoint=False), det_offset=2.5)
    ell = (4.0, -6.0, 20.0, 11.0, 0.4)
    closed = _ellipse_integrals(g, *ell)
    assert np.abs(_dense(g, _ellipse(*ell), h=0.01) - closed).max() < 0.025   # step function: error <= 2 h
    ss = 8                                                                    # 8 x 8 supersampled pixels
    H, W = g.shape
    Y, X = np.mgrid[:H * ss, :W * ss].astype(np.float64)
    X, Y = (X + 0.5) / ss - 0.5 - (W - 1) / 2, (Y + 0.5) / ss - 0.5 - (H - 1) / 2
    img = _ellipse(*ell)(X, Y).reshape(H, ss, W, ss).mean((1, 3))
    ours = Projector.for_geometry(g, dtype=torch.float64).forward(torch.from_numpy(img)).numpy()
    assert np.linalg.norm(ours - closed) / np.linalg.norm(closed) < 0.03


@pytest.mark.parametrize("circle", [True, False])
def test_fan_adjoint_identity_float64(circle):
    g = fan_geometry((20, 26), np.linspace(0, 300, 7, endpoint=False), source_distance=40.0,
                     detector_distance=70.0, pitch=1.3, det_offset=-1.5, circle=circle)
    P = Projector.for_geometry(g, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(g.shape, generator=gen, dtype=torch.float64)
    y = torch.rand(P.sinogram_shape, generator=gen, dtype=torch.float64)
    lhs, rhs = float((P.forward(x) * y).sum()), float((x * P.adjoint(y)).sum())
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    xr = x.clone().requires_grad_(True)                       # the autograd backward is the same adjoint
    (g1,) = torch.autograd.grad((P.forward(xr) * y).sum(), xr)
    torch.testing.assert_close(g1, P.adjoint(y), rtol=1e-12, atol=1e-12)


def test_fan_fbp_of_a_closed_form_sinogram_reconstructs_the_ellipse():
    g = fan_geometry((64, 64), np.linspace(0, 360, 360, endpoint=False), det_offset=2.5)
    ell = (4.0, -6.0, 20.0, 11.0, 0.4)
    rec = fbp(_ellipse_integrals(g, *ell), g)
    X, Y = _centred(g.shape)
    cx, cy, a, b, phi = ell
    core = _ellipse(cx, cy, a - 3, b - 3, phi)(X, Y)
    outside = ~_ellipse(cx, cy, a + 3, b + 3, phi)(X, Y) & g.support()
    assert abs(rec[core].mean() - 1.0) < 5e-3 and rec[core].std() < 5e-3
    assert np.abs(rec[outside]).mean() < 1e-2


def test_fan_geometry_checks_and_support():
    with pytest.raises(ValueError, match="source-distance"):
        fan_geometry((32, 32), [0.0, 90.0], source_distance=10.0)
    with pytest.raises(ValueError, match="detector-distance"):
        fan_geometry((32, 32), [0.0], source_distance=60.0, detector_distance=50.0)
    with pytest.raises(ValueError, match="offset"):
        fan_geometry((32, 32), [0.0], n_det=10, det_offset=100.0)
    g = fan_geometry((33, 33), [0.0])
    X, Y = _centred(g.shape)
    np.testing.assert_array_equal(g.support(), X ** 2 + Y ** 2 <= g.fov_radius ** 2)
    assert g.fov_radius >= 16.5                               # the default detector covers the inscribed disc


def test_matrix_sart_solves_a_consistent_fan_scan():
    g = fan_geometry((16, 16), np.linspace(0, 360, 40, endpoint=False))
    X, Y = _centred(g.shape)
    truth = (0.3 + 0.5 * _ellipse(1.0, -2.0, 5.0, 3.0, 0.3)(X, Y)) * g.support()
    y = Projector.for_geometry(g, dtype=torch.float64).forward(torch.from_numpy(truth)).numpy()
    rec = matrix_sart(y, g, iterations=200, relaxation=1.0)
    assert np.sqrt(np.mean((rec - truth)[g.support()] ** 2)) < 0.02
