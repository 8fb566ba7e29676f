"""Error types. Every message is one line that names the file and the problem."""


class BsrnError(Exception):
    """Base class for errors that the CLI prints as one line (no traceback)."""


class CheckpointError(BsrnError):
    """A weights file that cannot be read or matched to an architecture."""


class ImageError(BsrnError):
    """An image file that cannot be read, decoded or written."""


class ConfigError(BsrnError):
    """An invalid configuration value or key."""


class MissingDependencyError(BsrnError):
    """An optional package a command needs is not installed (the message names the extra)."""
