"""``python -m tomography recon ...`` (see :mod:`tomography.cli`)."""
import sys

from .cli import main

sys.exit(main())
