"""The one exception type for mistakes a user can fix (config, data, paths), and message helpers."""

MESSAGE_VALUE_CHARS = 80  # longer values are cut in messages (a 5 MB value must not fill the terminal)


class UserError(Exception):
    """A problem the user can fix; the CLI prints its message as one line and exits non-zero."""

    exit_code = 2


def shorten(value, limit=MESSAGE_VALUE_CHARS):
    """repr(value), cut to about `limit` characters with the total length noted, for error messages."""
    text = value if isinstance(value, str) and value.startswith(("'", '"')) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters)"


def cut(text, limit=MESSAGE_VALUE_CHARS):
    """A plain string (a key name, a path) cut to about `limit` characters, unquoted, for messages."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
