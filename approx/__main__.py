"""``python -m approx {runge,pieces} ...``: see :mod:`approx.cli`."""
import sys

from approx.cli import main

sys.exit(main())
