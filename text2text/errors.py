"""The one exception type for problems in a user's input, configuration or files."""
import re


class UserError(Exception):
    """A problem in the user's input, config or files; run.py prints it as one line and exits 2."""


def wrapped_user_error(exc: BaseException) -> str | None:
    """The message of a UserError raised inside tf.data (a tf.py_function, e.g. `tasks.preprocessors.validate`),
    which reaches the caller wrapped in a TensorFlow error with the Python traceback as text; None otherwise."""
    if not any(cls.__name__ == "OpError" for cls in type(exc).__mro__):
        return None
    match = re.search(r"\bUserError: ([^\n]+)", str(exc))
    return match.group(1) if match else None
