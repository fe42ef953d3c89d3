"""High-frequency Poisson problems solved by PINNs (docs/design.md; docs/methods.md section 5).

``pde.problems`` (exact solutions), ``pde.operators`` (Laplacian residual, exact-boundary ansatz),
``pde.forward`` (the forward Laplacian),
``pde.models`` (registry models plus the ``mlp-tanh`` and ``kan`` baselines), ``pde.solve``
(the training run).  Importing ``pde`` registers ``mlp-tanh`` in :mod:`inr.models`.
"""
from . import models, operators, problems  # noqa: F401  (models registers "mlp-tanh")
from .problems import PROBLEMS, Problem, get as get_problem
from .solve import SolveConfig, solve, write_run

__all__ = ["PROBLEMS", "Problem", "get_problem", "SolveConfig", "solve", "write_run", "models", "operators",
           "problems"]
