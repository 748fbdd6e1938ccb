"""Error hierarchy of pipetune.

One root, :class:`PipetuneError`; each specific error also subclasses the
builtin it means, so callers that know nothing of pipetune still catch it
sensibly (a bad setting is a ``ValueError``, a refused cgroup write a
``PermissionError``).  OS, perf, HTTP and NVML errors are translated once, at
the backend boundary, with ``raise ... from e``.

The CLI turns any :class:`PipetuneError` into one line on stderr and the
error's :attr:`exit_code`; a traceback means a bug.
"""

from __future__ import annotations


class PipetuneError(Exception):
    """Root of every error pipetune raises on purpose."""

    #: Exit code the CLI uses when this error ends a command.
    exit_code: int = 1


class ConfigError(PipetuneError, ValueError):
    """A setting, flag, space or file has a value pipetune cannot use.

    Usage errors exit with 2, like argparse's own.
    """

    exit_code = 2


class UsageError(ConfigError):
    """A command line that names something that does not exist."""


class StoreError(PipetuneError):
    """A store could not be opened, written or queried."""


class StoreUnavailableError(StoreError, ConnectionError):
    """The store's backend cannot be reached right now (points get spooled)."""


class ProfilerError(PipetuneError):
    """perf sampling could not run."""


class PerfUnavailableError(ProfilerError, FileNotFoundError):
    """perf is missing, forbidden (perf_event_paranoid) or cannot attach."""


class ControlError(PipetuneError):
    """A system config could not be applied to a trial."""


class PrivilegeError(ControlError, PermissionError):
    """The caller may not change this cgroup, process or device."""


class GroundTruthError(PipetuneError):
    """The ground-truth model is missing, corrupt or cannot be fitted."""


class WorkloadError(PipetuneError):
    """A workload could not be built or trained with the given settings."""


class NotSupportedError(PipetuneError, NotImplementedError):
    """A feature does not apply here (a strategy to a workload, a knob to a host)."""
