"""User-facing errors: the CLI prints these as one clear message, without a traceback."""


class HpcllmError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""


class ConfigError(HpcllmError):
    """A YAML file is malformed or does not match its schema; the message names file and key."""


class BackendError(HpcllmError):
    """The scheduler (or the local runner) refused or failed an operation."""


class LockBusy(HpcllmError):
    """A lock is held by another process (named in the message) past the time allowed to wait."""


class StorageWriteError(HpcllmError):
    """A write failed for a reason of the file system (full, read-only, a name too long, a quota)."""
