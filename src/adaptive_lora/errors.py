"""The one exception type for mistakes a user can fix.

The CLI catches `UserError` at the boundary and prints its message on one line
with a non-zero exit; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem in the user's input (path, field, budget, data) with a one-line fix."""
