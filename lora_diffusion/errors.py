"""The one exception type that reaches users as a single clear line."""


class UserError(Exception):
    """An input the user can fix. The message names the input and the fix.

    The CLI prints ``str(error)`` as one line on stderr and exits non-zero;
    tracebacks are only shown with ``--debug``.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, after the trainer saved what it had; the message says what and where (the CLI exits 130)."""
