"""recon's user-facing error: a bad model argument or input, named with its value and the allowed range."""

from psfsim.errors import PsfsimError

__all__ = ["ReconError"]


class ReconError(PsfsimError):
    """A bad model configuration or input (a ``ValueError``); the CLI prints it on one line and exits 2."""
