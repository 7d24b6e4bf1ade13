"""Exceptions that name the bad value and where it came from."""


class MargoError(Exception):
    """Base class for errors the CLI reports without a traceback."""


class ConfigError(MargoError):
    """A configuration key, value or file is wrong."""


class DataError(MargoError):
    """A dataset file is malformed; the message names the file, row and field."""


class FetchError(MargoError):
    """A dataset to download is unknown, its download failed, or it is not what was expected."""
