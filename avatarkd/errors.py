"""Exceptions the CLI turns into one readable line and a non-zero exit code.

Every error a user can cause by their input (config, data, checkpoint) derives from
``AvatarKDError`` so the command line can tell "your input is wrong" from "our bug".
"""

import warnings


class AvatarKDError(Exception):
    """Base class for errors caused by user input."""


class ConfigError(AvatarKDError, ValueError):
    """A configuration value is missing, misspelt or of the wrong type."""


class DataError(AvatarKDError, ValueError):
    """A dataset file is missing, unreadable or inconsistent."""


class CheckpointError(AvatarKDError, ValueError):
    """A checkpoint is missing, corrupted or belongs to another architecture."""


class DistillationError(AvatarKDError, RuntimeError):
    """A distillation point cannot be computed (bad module name, shapes, non-finite values)."""


def message_of(err: BaseException) -> str:
    """The one line an error was raised with, also when a DataLoader worker raised it.

    torch re-raises a worker's exception in the main process as the same type, but with the
    worker's whole traceback as its text ("Caught DataError in DataLoader worker process 0.
    Original Traceback ..."), which ends in ``module.Type: message``: that last part is the line.
    """
    text = str(err)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        name, sep, message = last.partition(": ")
        if sep and name.rsplit(".", 1)[-1] == type(err).__name__:
            return message
    return text


class AvatarKDDeprecationWarning(DeprecationWarning):
    """An old name that still works (e.g. a loss hyperparameter renamed for consistency)."""


# Python hides DeprecationWarning outside __main__; config users would never see ours.
warnings.simplefilter("default", AvatarKDDeprecationWarning)
