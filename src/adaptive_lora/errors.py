"""The one exception type for mistakes a user can fix.

The CLI catches `UserError` at the boundary and prints its message on one line
with a non-zero exit; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem in the user's input (path, field, budget, data) with a one-line fix."""


def one_line(error: BaseException) -> str:
    """`Type: first line of the message` (at most 300 characters): a failure, said in one line."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300]}" if text else type(error).__name__
