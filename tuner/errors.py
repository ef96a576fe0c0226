"""The one exception type for problems the user can fix (bad paths, data, values)."""


class UserError(Exception):
    """A problem with the user's input; the CLI prints it as one line and exits with code 2.

    The message names the bad value and says how to fix it.
    """


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class DataError(UserError):
    """The dataset on disk cannot be used as it is."""
