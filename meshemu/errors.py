"""The one exception family meshemu raises for problems a user can fix.

The CLI turns any :class:`MeshemuError` into a single line on stderr and a
non-zero exit; everything else is a bug and keeps its traceback.
"""


class MeshemuError(Exception):
    """A problem the user can fix; ``str(err)`` is the whole message."""

    exit_code = 2


class InputError(MeshemuError):
    """Bad input: names the file, the line (when there is one) and the field.

    >>> str(InputError("bad checksum 7, expected 3", file="a.tle", line=4, field="line 2"))
    'a.tle:4: line 2: bad checksum 7, expected 3'
    """

    def __init__(self, message, *, file=None, line=None, field=None):
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        what = f"{field}: " if field else ""
        super().__init__(f"{where}{what}{message}")
        self.file, self.line, self.field = file, line, field
        self.detail = message  # the message without where it happened, to re-raise it elsewhere


class CapabilityError(MeshemuError):
    """The machine lacks something a feature needs (root, a kernel module, a tool)."""
