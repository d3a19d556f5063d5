"""A user's history as the model reads it: item rows, oldest first, and the last event time."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class History:
    items: list[int] = field(default_factory=list)   # item rows, oldest first
    last_time: float = math.nan                        # epoch seconds of the last event


__all__ = ["History"]
