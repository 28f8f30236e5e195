"""The one error type of pipelines' user-facing failures (bad frame, bad checkpoint, a store of another run...).

A :class:`PipelineError` is a :class:`psfsim.errors.PsfsimError`, so one ``except`` in each command line turns
any of them (and psfsim's or recon's own) into one line on stderr and exit status 2.
"""

from psfsim.errors import PsfsimError

__all__ = ["PipelineError"]


class PipelineError(PsfsimError):
    """A user error of a pipelines run: the message names the offending value and what was expected."""
