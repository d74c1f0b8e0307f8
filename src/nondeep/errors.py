"""Errors a user can act on. The CLI prints their message as one line and exits non-zero."""


class NondeepError(Exception):
    """Base class: the message says what went wrong and what to do."""


class UnknownModelError(NondeepError, KeyError):
    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class InputShapeError(NondeepError, ValueError):
    """An input tensor whose channels or size the model cannot take."""


class DatasetError(NondeepError):
    """A dataset that is missing, incomplete or corrupt; the message says where it looked and how to get it."""
