"""InputError: a mistake in a file or argument the user gave; `str()` is one line naming the file,
the field and what is allowed. probe-check's HypothesisError and the log readers' LogError are
kinds of it, so every command turns it into one line and exit code 2."""
from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """One line: `<file>: field '<field>': <msg>` (the field part only when there is one)."""

    def __init__(self, file: str, field_: str, msg: str):
        self.file, self.field, self.msg = str(file), field_, msg
        where = f"field '{field_}': " if field_ else ""
        super().__init__(f"{self.file}: {where}{msg}")
