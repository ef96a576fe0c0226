"""The one exception type for problems the user can fix (bad paths, data, values)."""


class UserError(Exception):
    """A problem with the user's input; the CLI prints it as one line and exits with code 2.

    The message names the bad value and says how to fix it.
    """


class DataError(UserError):
    """The dataset on disk cannot be used as it is."""
