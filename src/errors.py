"""Every error a user can fix from the config or the data, under one base class.

The entry points catch `UserError` alone: its message names the culprit (a config key, a file,
a directory), so one line on stderr and exit status 2 are all the user needs; anything else is
a bug and keeps its traceback. The classes are ValueErrors so that Hydra's instantiate (which
wraps what a constructor raises) and callers that expect a ValueError still see them.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix; the message names the culprit."""


class ConfigError(UserError):
    """A config value the code cannot use (the message names the key)."""


class DataError(UserError):
    """Bad or inconsistent data on disk; the message names the file."""


class ModelConfigError(ConfigError):
    """A network that cannot be built from its config for the requested input."""


class GenotypeError(ModelConfigError):
    """A genotype file or genotype that does not describe a buildable DARTS cell."""


class GenotypeFileNotFound(GenotypeError, FileNotFoundError):
    """A genotype path that names no file (a FileNotFoundError too, as callers may expect)."""


class MallocConfigError(ConfigError):
    """A bad `speed.malloc_keep_mib`."""


class SimError(UserError):
    """A simulation campaign that cannot run or complete as configured."""


class SimConfigError(SimError):
    """A simulation or campaign config value the simulation code cannot use."""


class SimStorageError(SimError):
    """The output location cannot take the data (not writable, disk full, locked)."""


class FilterError(UserError):
    """No network width/depth lands within the tolerance of the FLOPs target."""


class SearchError(UserError):
    """A bad search input: an unreadable or mismatching checkpoint, an unusable device."""


class ReportError(UserError):
    """Bad report input; the message names the offending path."""


class LaunchError(UserError):
    """A rank of a locally launched job failed; the message carries the rank's own error."""


class MemoryFitError(LaunchError):
    """A job whose ranks would not fit in the memory this machine has left for them."""


class SchedulerError(LaunchError):
    """A job the cluster's scheduler refused, or that did not start within its limit."""
