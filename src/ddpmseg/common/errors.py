"""The errors that mean the user's input is wrong, gathered for the command-line tools."""
from __future__ import annotations

from guided_diffusion.checkpoint import CheckpointError

from .config import ConfigError
from .numerics import NumericalError
from .runlock import RunLockError


class DataError(ValueError):
    """A dataset folder is unusable; the message says what is wrong and how to fix it."""


# Errors that mean the user's input is wrong (or another run holds the folder, or the numbers went
# NaN): the command-line tools print them as one line.
INPUT_ERRORS = (ConfigError, DataError, CheckpointError, RunLockError, NumericalError)
