"""The one exception type for mistakes a user can fix (config, data, paths)."""


class UserError(Exception):
    """A problem the user can fix; the CLI prints its message as one line and exits non-zero."""

    exit_code = 2
