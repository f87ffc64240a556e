"""User-facing errors: each becomes one line on stderr and exit code 2."""


class UserError(Exception):
    """Bad input from the user (config, flags, data, cluster address)."""


class ConfigError(UserError):
    """A config key, type or value is invalid."""


class DataError(UserError):
    """A dataset is missing or malformed."""
