"""Exceptions and warnings that psfsim raises for user-facing problems."""

from __future__ import annotations

__all__ = ["PsfsimError", "LensError", "NyquistWarning"]


class PsfsimError(ValueError):
    """A problem with the user's input (a file, a value, an argument).

    The command line prints its message on one line and exits with status 2.
    """


class LensError(PsfsimError):
    """An invalid lens description: the message names the key, the value and what is allowed."""


class NyquistWarning(UserWarning):
    """The detector pixel pitch is coarser than the Nyquist pitch ``lambda / (4 NA)``.

    Undersampled detectors are common (astronomy, machine vision), so this is a warning, not an error:
    the PSF is still computed exactly (oversampled, then integrated over the pixels), it is just aliased.
    """
