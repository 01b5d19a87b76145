"""The one exception type for user mistakes: the CLI prints it as one line and exits with status 2."""


class UserError(Exception):
    """A problem with what the user gave us (a file, a flag, a checkpoint), not a bug.

    The message names the file or option and the problem, e.g. ``scores/a.mid: not a MIDI file``.
    """
