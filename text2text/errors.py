"""The one exception type for problems in a user's input, configuration or files, and its way out of tf.data."""
from __future__ import annotations

import codecs
import re
from typing import Optional, Tuple

_START, _END = "<text2text-user-error>", "</text2text-user-error>"
# tf.debugging.Assert prints its data as "[item] [item] ...": the message sits between the two tags.
_EMBEDDED = re.compile(re.escape(_START) + r"\] \[(.*)\] \[" + re.escape(_END))


class UserError(Exception):
    """A problem in the user's input, config or files; run.py prints it as one line and exits 2."""


def user_error_tags() -> Tuple[str, str]:
    """The two strings to put around a user-error message given to `tf.debugging.Assert` inside tf.data.

    A Python exception cannot cross a tf.data pipeline (TensorFlow re-raises it as an OpError whose message
    also holds a traceback); `embedded_user_error` finds the tagged line again.
    """
    return _START, _END


def embedded_user_error(exc: BaseException) -> Optional[UserError]:
    """The UserError that a TensorFlow error carries out of tf.data, or None: a message between
    `user_error_tags()` (tf.debugging.Assert), or a UserError raised inside a tf.py_function (e.g.
    `tasks.preprocessors.validate`), whose message TensorFlow quotes in its traceback text.
    """
    text = str(exc)
    match = _EMBEDDED.search(text)
    if match:
        # Assert writes strings C-escaped (quotes, backslashes, control characters); UTF-8 text stays as it is.
        return UserError(codecs.escape_decode(match.group(1).encode("utf-8"))[0].decode("utf-8", "replace"))
    if any(cls.__name__ == "OpError" for cls in type(exc).__mro__):
        match = re.search(r"\bUserError: ([^\n]+)", text)
        if match:
            return UserError(match.group(1))
    return None
