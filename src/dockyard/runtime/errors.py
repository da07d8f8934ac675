"""The runtime's one error type: a message a user can act on."""


class RuntimeFailure(Exception):
    """A failure the user can cause or fix; printed as one line, never as a traceback."""
