"""The server's data clock (recsys.live_state.LiveClock): live events move it forward only, and
the Recommender it measures for stays as loaded."""

from __future__ import annotations

import math
from types import SimpleNamespace

from recsys.live_state import LiveClock


def _bundle(data_end: float):
    return SimpleNamespace(clock=lambda: data_end)


def test_the_clock_moves_forward_only_and_never_before_the_bundles_data_end():
    clock = LiveClock()
    bundle = _bundle(1000.0)
    assert clock.now(bundle) == 1000.0
    clock.observe(900.0)                 # older than the bundle's data: the bundle's end counts
    assert clock.now(bundle) == 1000.0
    clock.observe(2000.0)
    clock.observe(1500.0)                # a late event does not move it back
    clock.observe(math.nan)
    clock.observe(math.inf)
    assert clock.now(bundle) == 2000.0
    assert clock.now(_bundle(3000.0)) == 3000.0   # a newer bundle swapped in
    assert bundle.clock() == 1000.0
