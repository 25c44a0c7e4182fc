"""The one exception type for problems in a user's input, configuration or files."""


class UserError(Exception):
    """A problem in the user's input, config or files; run.py prints it as one line and exits 2."""
