"""The project's own error class for input a user can get wrong.

Every tool's command line (:func:`inr.cliutil.run_main`) turns an :class:`InputError` into one line on
stderr and exit code 2.  Anything else is a bug in the toolkit and keeps its traceback.
"""
from __future__ import annotations


class InputError(ValueError):
    """A bad option, file, run folder or expression; the message names it and says what was expected."""
