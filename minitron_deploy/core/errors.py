"""The one exception type users see: a clear, one-line reason for refusing work."""


class MinitronError(Exception):
    """Bad input or an impossible request; the CLI prints it as one line and exits non-zero."""
