"""Exceptions for mistakes a user can make; scripts turn them into one-line errors (exit status 2)."""


class UserError(Exception):
    """A problem with the user's input (a file, a flag, a dataset) rather than a bug in the code."""


class ConfigError(UserError):
    """A flag or a configuration value is invalid."""


class DatasetError(UserError):
    """A dataset root, list file, image or label is missing, empty, corrupt or inconsistent."""


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable, unsafe to unpickle, or does not fit the network."""


class OutputError(UserError):
    """An output file cannot be written: a full disk, a read-only or vanished folder, no permission."""
