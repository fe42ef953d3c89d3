import importlib


def test_packages_import():
    for name in ("inr", "inr.layers", "inr.models", "inr.train", "inr.metrics", "approx", "pde", "tomography", "classify"):
        importlib.import_module(name)
