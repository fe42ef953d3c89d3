"""The peer for benchmarks/poisson.py: DeepXDE's documented Poisson example on our problem.

DeepXDE's Poisson examples (Dirichlet problem on a rectangle / L-shaped domain) build
``dde.data.PDE(geometry, pde, bc, num_domain, num_boundary)``, a ``dde.nn.FNN([d] + [50] * 4 + [1],
"tanh", "Glorot uniform")``, compile Adam at lr 1e-3 and train for a number of iterations.  Adapted to
``-Laplace(u) = 2 (n pi)^2 sin(n pi x) sin(n pi y)`` on the unit square with u = 0 on the boundary (our
``poisson2d``): the residual is DeepXDE's unscaled one, as in its examples, with its Dirichlet
boundary loss; collocation points come from DeepXDE's own sampler.  The error is measured by us on
the same dense grid as our runs (``pde.solve.eval_grid``).

Runs in its own process (``python benchmarks/poisson_peer.py '<json spec>'``), because DeepXDE picks
its backend and global state at import.  Prints one JSON line.  Needs ``pip install -e ".[peer]"``
(DeepXDE, run on its PyTorch backend); with
DeepXDE absent it prints ``{"skipped": ...}`` and exits 0.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time


def available() -> bool:
    import importlib.util
    return importlib.util.find_spec("deepxde") is not None


def run(spec: dict) -> dict:
    os.environ.setdefault("DDE_BACKEND", "pytorch")
    import numpy as np
    import torch

    torch.set_num_threads(spec.get("threads", 1))
    import deepxde as dde

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from pde import problems
    from pde.solve import eval_grid

    n, seed = spec["n"], spec.get("seed", 0)
    dde.config.set_random_seed(seed)
    k = n * math.pi

    def pde(x, y):
        dy_xx = dde.grad.hessian(y, x, i=0, j=0)
        dy_yy = dde.grad.hessian(y, x, i=1, j=1)
        f = 2 * k ** 2 * torch.sin(k * x[:, 0:1]) * torch.sin(k * x[:, 1:2])
        return -dy_xx - dy_yy - f

    geom = dde.geometry.Rectangle([0, 0], [1, 1])
    bc = dde.icbc.DirichletBC(geom, lambda x: 0, lambda _, on_boundary: on_boundary)
    data = dde.data.PDE(geom, pde, bc, num_domain=spec.get("points", 1024),
                        num_boundary=spec.get("boundary_points", 256))
    net = dde.nn.FNN([2] + [spec.get("width", 50)] * spec.get("layers", 4) + [1], "tanh", "Glorot uniform")
    model = dde.Model(data, net)
    model.compile("adam", lr=spec.get("lr", 1e-3))
    iterations, seconds = spec.get("iterations", 5000), spec.get("seconds")
    chunk = 100   # train in chunks so a wall budget can stop it (DeepXDE has no time limit of its own)
    clock = time.process_time if spec.get("clock") == "cpu" else time.perf_counter
    t0, w0, done = clock(), time.perf_counter(), 0
    while done < iterations and (seconds is None or clock() - t0 < seconds):
        step = min(chunk, iterations - done)
        model.train(iterations=step, display_every=10 ** 9, verbose=0)
        done += step
    train_s, wall_s = clock() - t0, time.perf_counter() - w0
    problem = problems.get("poisson2d", n)
    grid = eval_grid(problem, spec.get("eval_res", 256), torch.float64).numpy()
    pred = model.predict(grid).ravel().astype(np.float64)
    truth = problem.exact(torch.from_numpy(grid)).numpy().ravel()
    err = pred - truth
    params = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return {"model": "deepxde", "n": n, "params": params, "iterations": done, "seconds": round(train_s, 2), "wall_seconds": round(wall_s, 2),
            "clock": spec.get("clock", "wall"),
            "rel_l2": float(np.linalg.norm(err) / np.linalg.norm(truth)), "max_error": float(np.abs(err).max()),
            "deepxde": dde.__version__, "settings": spec}


if __name__ == "__main__":
    spec = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {"n": 4}
    if not available():
        print(json.dumps({"skipped": "DeepXDE not installed (pip install -e '.[peer]')"}))
        sys.exit(0)
    print(json.dumps(run(spec)))
