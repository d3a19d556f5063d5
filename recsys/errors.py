"""Domain errors. Each names what was wrong and where, so the CLI and the API can report it."""

from __future__ import annotations


class RecsysError(Exception):
    """Base class for errors the user can act on (the CLI prints them without a traceback)."""


class DataError(RecsysError):
    """Bad input data: names the file, the row (0-based, data rows) and the column when known."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 column: str | None = None) -> None:
        self.file, self.row, self.column = file, row, column
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")


class BundleError(RecsysError):
    """A model bundle that is missing, incomplete or fails verification."""


class NotFoundError(RecsysError):
    """An unknown item, user or model version."""
