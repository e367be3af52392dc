"""Exceptions fedge raises for problems a user can fix.

Each also subclasses the builtin a caller would expect, as scikit-learn's
``NotFittedError(ValueError, AttributeError)`` does, so generic handlers work.
"""


class FedgeError(Exception):
    """Base class for every error fedge raises on purpose."""


class ConfigError(FedgeError, ValueError):
    """The run configuration is invalid; the message lists every problem found.

    ``problems`` holds them one by one, for callers that show or test each.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]


class DataError(FedgeError, ValueError):
    """A data file or partition cannot be used; the message names file and column."""


class ModelError(FedgeError, ValueError):
    """A model spec or a set of weights does not match what was expected."""


class RunFailedError(FedgeError, RuntimeError):
    """A run started but ended failed; its ``status.json`` says why.

    Not the user's typing: command lines exit with 1 for it, not 2.
    """
