"""Reading event times: epoch numbers in any unit and ISO 8601 text, to UTC, within a sane range.

One set of rules for the importers, `recsys validate` and the API's `POST /events`:

- An epoch number's unit comes from its magnitude (below 1e11 seconds, below 1e14 milliseconds,
  below 1e17 microseconds, else nanoseconds) unless the caller names it. 1e11 seconds is the
  year 5138 and 1e11 milliseconds is 1973, so no date this engine accepts is ambiguous.
- ISO 8601 text with a zone is converted to UTC; text without one is taken as UTC (and counted,
  so the import summary can say so once).
- A time before `EARLIEST` or more than `FUTURE_SLACK` after now is refused: such values are
  almost always a unit or parsing mistake, never real clicks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl

EARLIEST = datetime(1990, 1, 1, tzinfo=UTC)
FUTURE_SLACK = timedelta(days=1)
UNITS = ("s", "ms", "us", "ns")
UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}
# The largest magnitude read as each unit when guessing (see the module docstring).
_UNIT_CEILINGS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"), (math.inf, "ns"))
_MICROS_PER = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}
_NUMBER = r"^[+-]?\d+(\.\d*)?$"
_ZONE = r"([zZ]|[+-]\d\d(:?\d\d)?)$"
UTC_MICROS = pl.Datetime("us", "UTC")
MAX_TEXT = 64  # an ISO 8601 time with fractions and a zone fits in well under this


class TimestampError(ValueError):
    """A timestamp that cannot be read safely; `row` is the first offending data row if known."""

    def __init__(self, message: str, row: int | None = None) -> None:
        super().__init__(message)
        self.row = row


@dataclass(frozen=True)
class ReadTimes:
    """A timestamp column read as Datetime("us", "UTC") (null where a value could not be read).

    `unit` is the epoch unit used for numbers (None for text or datetimes); `guessed` says it
    came from the magnitude; `assumed_utc` counts values that had no zone.
    """

    times: pl.Series
    unit: str | None = None
    guessed: bool = False
    assumed_utc: int = 0

    def describe(self) -> str | None:
        """One line for an import summary, or None when there is nothing worth saying."""
        parts = []
        if self.unit is not None:
            how = "by magnitude" if self.guessed else "as given"
            parts.append(f"epoch {UNIT_NAMES[self.unit]} ({how})")
        if self.assumed_utc:
            parts.append(f"{self.assumed_utc} times without a zone read as UTC")
        return "timestamps: " + "; ".join(parts) if parts else None


def guess_unit(value: float) -> str:
    """The epoch unit of `value` judged by its magnitude."""
    magnitude = abs(value)
    return next(unit for ceiling, unit in _UNIT_CEILINGS if magnitude < ceiling)


def check_unit(unit: str) -> str:
    if unit != "auto" and unit not in UNITS:
        raise TimestampError(f"unknown timestamp unit {unit!r}; choose auto, {', '.join(UNITS)}")
    return unit


def read_times(series: pl.Series, unit: str = "auto") -> ReadTimes:
    """`series` (numbers, digit strings, ISO text or datetimes) as UTC microseconds.

    Raises `TimestampError` when the numbers of one column look like different units (a mix of
    seconds and milliseconds cannot be read safely) or the type has no timestamp meaning.
    """
    check_unit(unit)
    dtype = series.dtype
    if isinstance(dtype, pl.Datetime):
        naive = 0 if dtype.time_zone is not None else series.drop_nulls().len()
        if dtype.time_zone is None:
            series = series.dt.replace_time_zone("UTC")
        times = series.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
        return ReadTimes(times, assumed_utc=naive)
    if dtype == pl.Date:
        times = series.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        return ReadTimes(times, assumed_utc=series.drop_nulls().len())
    if dtype.is_numeric():
        return _read_epoch(series, unit)
    if dtype == pl.String:
        stripped = series.str.strip_chars()
        present = stripped.drop_nulls().filter(stripped.drop_nulls() != "")
        if present.len() and present.str.contains(_NUMBER).all():
            numbers = stripped.replace("", None)
            as_int = numbers.cast(pl.Int64, strict=False)
            if as_int.null_count() == numbers.null_count():
                return _read_epoch(as_int, unit)
            return _read_epoch(numbers.cast(pl.Float64, strict=False), unit)
        return _read_text(stripped)
    if dtype == pl.Null:
        return ReadTimes(pl.Series(series.name, [None] * len(series), dtype=UTC_MICROS))
    raise TimestampError(f"a {dtype} column cannot hold timestamps")


def _read_epoch(numbers: pl.Series, unit: str) -> ReadTimes:
    guessed = unit == "auto"
    floats = numbers.cast(pl.Float64)
    if numbers.dtype.is_float():
        finite = floats.is_finite() | floats.is_null()
        if not finite.all():
            row = int((~finite).arg_true()[0])
            raise TimestampError(f"value {floats[row]} is not a time", row)
    if guessed:
        present = floats.drop_nulls()
        if present.len() == 0:
            unit = "s"
        else:
            smallest, largest = float(present.abs().min()), float(present.abs().max())
            units = [guess_unit(smallest), guess_unit(largest)]
            unit = units[1]
            if units[0] != units[1]:
                # A mixed column: show one value of each kind so the user can see the mistake.
                row_small = int((floats.abs() == present.abs().min()).arg_true()[0])
                row_large = int((floats.abs() == present.abs().max()).arg_true()[0])
                raise TimestampError(
                    f"epoch numbers of mixed units: {_plain(numbers[row_small])} (row "
                    f"{row_small}) looks like {UNIT_NAMES[units[0]]} and "
                    f"{_plain(numbers[row_large])} (row {row_large}) like "
                    f"{UNIT_NAMES[units[1]]}; fix the data or give the unit "
                    "(--timestamp-unit)", max(row_small, row_large))
    factor = _MICROS_PER[unit]
    largest = floats.abs().max()
    if largest is not None and float(largest) * factor >= 2**63:  # type: ignore[arg-type]
        row = int((floats.abs() == largest).arg_true()[0])
        raise TimestampError(f"{_plain(numbers[row])} is too large for epoch "
                             f"{UNIT_NAMES[unit]}", row)
    if numbers.dtype.is_integer() and factor >= 1:
        micros = numbers.cast(pl.Int64) * int(factor)
    elif numbers.dtype.is_integer():
        micros = numbers.cast(pl.Int64) // 1000
    else:
        micros = (floats * factor).round(0).cast(pl.Int64, strict=False)
    times = pl.from_epoch(micros, time_unit="us").dt.replace_time_zone("UTC")
    return ReadTimes(times.rename(numbers.name), unit=unit, guessed=guessed)


def _read_text(text: pl.Series) -> ReadTimes:
    """ISO 8601 text: the fast vectorized path first, Python's parser for whatever it missed."""
    try:
        fast = text.str.to_datetime(time_unit="us", time_zone="UTC", strict=False,
                                    ambiguous="null")
    except pl.exceptions.PolarsError:  # no format fits the first values: parse each one below
        fast = pl.Series(text.name, [None] * len(text), dtype=UTC_MICROS)
    missed = fast.is_null() & text.is_not_null() & (text != "")
    values = fast.to_list()
    for row in missed.arg_true().to_list():
        values[row] = parse_iso(text[row])
    times = pl.Series(text.name, values, dtype=UTC_MICROS)
    has_zone = text.str.contains(_ZONE)
    assumed = int((times.is_not_null() & ~has_zone.fill_null(False)).sum())
    return ReadTimes(times, assumed_utc=assumed)


def parse_iso(text: str) -> datetime | None:
    """ISO 8601 text as an aware UTC datetime (no zone: UTC), or None when it is not one."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def out_of_range(times: pl.Series, now: datetime | None = None) -> pl.Series:
    """True where a UTC time is before `EARLIEST` or more than `FUTURE_SLACK` after `now`."""
    latest = (now or datetime.now(UTC)) + FUTURE_SLACK
    return ((times < EARLIEST) | (times > latest)).fill_null(False)


def range_message(times: pl.Series, row: int, value: object = None) -> str:
    """Why the UTC time at `row` of `times` (read from `value` as written, if given) is refused.

    Works from the series, not a Python datetime: a wrong unit easily passes the year 9999.
    """
    at = times.slice(row, 1)
    read = at.dt.to_string("%Y-%m-%dT%H:%M:%S")[0] + "Z"
    shown = read if value is None else f"{_plain(value)} is {read}"
    if (at < EARLIEST).fill_null(False)[0]:
        return (f"timestamp {shown}, before {EARLIEST.date()}: a wrong unit or a "
                "placeholder? (--allow-any-time accepts it)")
    return (f"timestamp {shown}, more than {FUTURE_SLACK.days} day in the future: "
            "a wrong unit? (--timestamp-unit; --allow-any-time accepts it)")


def epoch_seconds(value: object, *, now: datetime | None = None) -> float:
    """One timestamp as the API receives it (an epoch number in any unit, or ISO 8601 text),
    as epoch seconds; raises `ValueError` with the reason when it cannot be used."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("timestamp must be an epoch number or ISO 8601 text")
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise ValueError(f"timestamp text longer than {MAX_TEXT} characters")
        stripped = value.strip()
        if re.match(_NUMBER, stripped):
            value = float(stripped) if "." in stripped else int(stripped)
    if isinstance(value, str):
        when = parse_iso(value)
        if when is None:
            raise ValueError(f"timestamp {_plain(value)} is neither an epoch number nor ISO 8601")
    else:
        if not math.isfinite(value):
            raise ValueError("timestamp must be a finite number")
        micros = value * _MICROS_PER[guess_unit(value)]
        try:
            when = datetime.fromtimestamp(0, UTC) + timedelta(microseconds=round(micros))
        except OverflowError:
            raise ValueError(f"timestamp {_plain(value)} is out of range") from None
    times = pl.Series([when], dtype=UTC_MICROS)
    if out_of_range(times, now)[0]:
        raise ValueError(range_message(times, 0, value))
    return when.timestamp()


def _plain(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = ["EARLIEST", "FUTURE_SLACK", "UNITS", "ReadTimes", "TimestampError", "epoch_seconds",
           "guess_unit", "out_of_range", "parse_iso", "range_message", "read_times"]
