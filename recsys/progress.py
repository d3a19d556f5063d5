"""Named steps, with at most one progress bar each, for the long commands (train, evaluate,
retrain): "[2/6] embedding 15,514 items (12,000 cached)", as the quickstart prints its steps.

Bars are drawn on stderr only when it is a terminal; in tests, CI and pipes only the step lines
are printed. Third-party bars (the encoder's "Batches:", model loading) are switched off, so
what a step shows is its own bar.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from tqdm import tqdm


class Steps:
    """Numbered step lines through `log`; `bar` gives the current step's progress bar."""

    def __init__(self, total: int, log: Callable[[str], None] = print, *,
                 bars: bool | None = None) -> None:
        self.total = total
        self.number = 0
        self.log = log
        self.bars = terminal() if bars is None else bars

    def start(self, text: str) -> None:
        self.number += 1
        self.log(f"[{self.number}/{self.total}] {text}")

    def bar(self, total: int | None = None, unit: str = "it",
            iterable: Iterable | None = None) -> tqdm:
        """The step's bar (update(n), close(), or iterate it); a silent one off a terminal."""
        return tqdm(iterable, total=total, unit=unit, desc=f"[{self.number}/{self.total}]",
                    file=sys.stderr, disable=not self.bars, leave=False, dynamic_ncols=True)


def terminal() -> bool:
    return sys.stderr.isatty()


def silence_library_bars() -> None:
    """Turn off the progress bars transformers and huggingface_hub draw while loading models."""
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass
