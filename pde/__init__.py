"""PDEs solved by PINNs (docs/design.md; docs/methods.md section 5).

``pde.problems`` (built-in problems with exact solutions), ``pde.equations`` (Poisson, Helmholtz and heat
problems written down: expressions or callables on boxes), ``pde.expr`` (the safe expression parser),
``pde.reference`` (finite-difference reference solutions), ``pde.operators`` (residual, exact-boundary
ansatz), ``pde.forward`` (the forward Laplacian), ``pde.models`` (registry models plus the ``mlp-tanh`` and
``kan`` baselines), ``pde.solve`` (the training run; ``solve(...) -> Solution``).  Importing ``pde``
registers ``mlp-tanh`` in :mod:`inr.models`.
"""
from . import models, operators, problems  # noqa: F401  (models registers "mlp-tanh")
from .equations import EquationSpec, BoxProblem
from .problems import PROBLEMS, Problem, get as get_problem
from .solve import Solution, SolveConfig, solve, write_run

__all__ = ["PROBLEMS", "Problem", "get_problem", "EquationSpec", "BoxProblem", "Solution", "SolveConfig", "solve",
           "write_run", "models", "operators", "problems"]
