"""User-facing errors.

`ConfigError` is raised for bad input (config fields, data, CLI flags) *before* anything is
compiled; the CLI turns it into exit code 2 and one line naming the field, the value and what is
allowed.
"""


class ConfigError(ValueError):
    """A bad value for a named field.

    Args:
      field: dotted config path or argument name, e.g. ``data.alpha`` or ``--clients``.
      value: the offending value.
      allowed: what would have been accepted, in words, e.g. ``"a float > 0"``.
    """

    def __init__(self, field: str, value, allowed: str):
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}={value!r} is not allowed: expected {allowed}")


class DataUnavailableError(RuntimeError):
    """A dataset that needs preparation (download) is not on this machine."""


class DivergedError(RuntimeError):
    """Training produced a non-finite loss."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is XLA's RESOURCE_EXHAUSTED: an allocation it could not make while
    compiling or running."""
    return "RESOURCE_EXHAUSTED" in str(error)
