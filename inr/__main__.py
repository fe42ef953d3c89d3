"""`python -m inr ...` is the `inr` console script."""
import sys

from .cli import main

sys.exit(main())
