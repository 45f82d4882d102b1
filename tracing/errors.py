"""The one exception type users see: a one-line message naming the problem and the fix."""


class TracingError(Exception):
    """A user-facing error. ``str(err)`` is a single line; CLIs print it and exit non-zero."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
