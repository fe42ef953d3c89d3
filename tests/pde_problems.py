"""Test-only PDE problems shared by test_pde.py and test_pde_forward.py."""
import torch

from pde import problems


class HarmonicProblem(problems.Problem):
    """Laplace(u) = 0 with nonzero boundary values, u* = exp(x) sin(y) + x^2 - y^2: a 2-D Coons lift with a
    nonzero Laplacian."""
    name, dim, sign = "harmonic", 2, -1.0

    def exact(self, x):
        return (torch.exp(x[:, 0]) * torch.sin(x[:, 1]) + x[:, 0] ** 2 - x[:, 1] ** 2).unsqueeze(1)

    def source(self, x):
        return torch.zeros(x.shape[0], 1, dtype=x.dtype)
