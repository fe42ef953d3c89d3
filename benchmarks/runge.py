"""Runge study benchmark: writes results/runge/ (metrics.json, table.md, fits.png, coefficients.png,
curves.png, and every trained model under models/).

    python benchmarks/runge.py            # the full study (5 strategies x 5 seeds)
    python benchmarks/runge.py --quick    # tiny smoke setting

All options of ``python -m approx runge`` are accepted (``--help``).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from approx.cli import main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        argv += ["--out", "results/runge"]
    sys.exit(main(["runge", *argv]))
