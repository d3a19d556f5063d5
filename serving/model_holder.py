"""Hot reload: one Recommender reference, replaced only by a bundle that loaded, verified and
warmed.

A request reads `holder.current` once and uses that object to the end, so it never mixes two
versions. Loading happens beside the serving model; a bundle that fails anywhere is refused and
the old one keeps serving. Cold-start item changes are copy-on-write swaps of the same reference.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from features.build import FEATURES
from recsys.bundle_versions import (
    CURRENT,
    check_version_name,
    current_version,
    read_manifest,
    set_current,
)
from recsys.errors import BundleError, NotFoundError, RecsysError
from recsys.live_state import LiveClock, apply_item_changes
from recsys.recommender import Filters, History, Recommender
from recsys.store import EventStore, StoreUnavailable

log = logging.getLogger(__name__)

Loader = Callable[..., Recommender]

# After a swap, once requests still holding the old model are done with it (they take
# milliseconds), the memory it freed is handed back to the OS.
RELEASE_AFTER_SWAP_S = 1.0


def return_freed_memory() -> None:
    """Collect the old model's cycles and give the heap pages it freed back to the OS. glibc's
    malloc keeps them otherwise, and the server's RSS would grow with every swap
    (benchmarks/soak_long.py checks it stays flat). A no-op where libc has no malloc_trim."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# A compiled ranker that scores this many rows (more than a full batch of requests holds:
# 32 x ~250 candidates) in under this share of its time budget predicts on the model thread.
PROBE_ROWS = 10_000
PROBE_SHARE = 0.1


def predicts_well_within(ranker, timeout_s: float) -> bool:
    """Whether `ranker` is compiled trees that score PROBE_ROWS rows in PROBE_SHARE of
    `timeout_s`. Such a ranker then predicts on the model thread itself: its cost is a fixed
    walk of each tree per row, it cannot hang, and handing each batch to the deadline thread
    and back costs more server CPU than the prediction. Any other ranker (LightGBM's predict, a
    loader's own) keeps its deadline thread."""
    if not getattr(ranker, "compiled", False):
        return False
    # the block the engine hands over (features.build.feature_matrix): FEATURES columns
    rows = np.asfortranarray(np.random.default_rng(0).standard_normal(
        (PROBE_ROWS, len(FEATURES)), dtype=np.float32))
    started = time.perf_counter()
    try:
        ranker.predict(rows)
    except Exception:  # noqa: BLE001 - a ranker that cannot take the block keeps the thread
        return False
    return time.perf_counter() - started < PROBE_SHARE * timeout_s


class DeadlineRanker:
    """Runs the ranker with a time budget; past it, raises so the Recommender serves the
    retrieval order marked degraded (the late prediction finishes in the background)."""

    def __init__(self, ranker, timeout_s: float, pool: ThreadPoolExecutor) -> None:
        self.ranker = ranker
        self.timeout_s = timeout_s
        self.pool = pool
        self.features = ranker.features
        self.compiled = getattr(ranker, "compiled", False)

    def predict(self, rows):
        return self.pool.submit(self.ranker.predict, rows).result(timeout=self.timeout_s)

    def contributions(self, rows):
        return self.ranker.contributions(rows)


def check_encoder_files(directory: Path) -> None:
    """Refuse an encoder whose files cannot load, without loading its weights (~490 MB): the
    configs parse, the tokenizer loads, and every weights file's header covers the file."""
    import json

    from safetensors import safe_open

    from recsys import multilingual_encoder

    try:
        if multilingual_encoder.is_model_dir(directory):
            weights = [directory / multilingual_encoder.WEIGHTS_FILE]
            if not weights[0].is_file() or weights[0].stat().st_size == 0:
                raise BundleError(f"missing or empty {weights[0].name}")
            return
        for name in ("config.json", "modules.json"):
            json.loads((directory / name).read_text())
        from tokenizers import Tokenizer

        Tokenizer.from_file(str(directory / "tokenizer.json"))
        weights = sorted(directory.glob("*.safetensors"))
        if not weights:
            raise BundleError("no model.safetensors weights")
        for path in weights:
            with safe_open(str(path), framework="numpy") as handle:
                handle.keys()
    except BundleError as exc:
        raise BundleError(f"encoder cannot load: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any unreadable file means it cannot load
        raise BundleError(f"encoder cannot load ({type(exc).__name__}: {exc})") from exc


class ModelHolder:
    def __init__(self, models_dir: Path | None, *, store: EventStore | None = None,
                 threads: int = 1, ranker_timeout_s: float | None = 0.2,
                 compiled_ranker: bool = False, load_encoder: bool = False,
                 loader: Loader | None = None,
                 on_change: Callable[[str | None], None] = None,
                 on_refused: Callable[[str], None] = None) -> None:
        self.models_dir = None if models_dir is None else Path(models_dir)
        self.clock = LiveClock()   # live events' time, kept across swaps; each call's `now`
        self.store = store
        self.threads = threads
        self.ranker_timeout_s = ranker_timeout_s
        self.compiled_ranker = compiled_ranker
        self.load_encoder = load_encoder
        self.loader = loader or Recommender.load
        self.on_change = on_change or (lambda version: None)
        self.on_refused = on_refused or (lambda version: None)
        self._current: Recommender | None = None
        self._items_seq = 0                     # the last cold-start item change in _current
        self._swap_lock = threading.Lock()      # serialises swaps (reload, item changes)
        self._ranker_pool = ThreadPoolExecutor(max(2, threads), thread_name_prefix="ranker")
        # Every load runs on this one long-lived thread, so loads never overlap. A load on the
        # thread that asked (the admin route's worker threads end after 10 s idle) leaves some
        # of the freed model's memory behind in the server: an RSS step at every swap.
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="model-loader")
        self._encoders: dict[str, object] = {}
        self.refused: dict[str, str] = {}       # version -> why it was refused
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._follower: threading.Thread | None = None
        self._synced_at: float | None = None    # epoch seconds of the last store check that worked
        self._store_seq = 0                     # the latest item change the store had then
        self.store_error: str | None = None     # why the last store check failed

    @property
    def current(self) -> Recommender | None:
        return self._current

    # -- loading --------------------------------------------------------------------------------
    def load_current(self, *, waiting: bool = False) -> None:
        """At start: serve CURRENT if there is one; otherwise run without a model (not ready).
        `waiting`: a missing CURRENT is expected (the poller loads it when it appears)."""
        if self.models_dir is None:
            self.last_error = "no models directory configured"
            return
        if waiting and not (self.models_dir / CURRENT).is_file():
            self.last_error = f"waiting for a model: no {CURRENT} in {self.models_dir} yet"
            log.info("%s", self.last_error)
            return
        try:
            self.reload()
        except RecsysError as exc:
            self.last_error = str(exc)
            log.error("no model loaded: %s", exc)

    def reload(self, version: str | None = None, *, promote: bool = False) -> Recommender:
        """Load `version` (default: CURRENT), verify, warm, then swap it in; raise if refused.

        With `promote`, CURRENT is pointed at it once it has loaded, so a poll never undoes it.
        """
        return self._loader.submit(self._reload, version, promote).result()

    def _reload(self, version: str | None, promote: bool) -> Recommender:
        if self.models_dir is None:
            raise NotFoundError("the server has no models directory")
        version = check_version_name(version or current_version(self.models_dir))
        bundle = self.models_dir / version
        if not bundle.is_dir():
            raise NotFoundError(f"no model version {version} in {self.models_dir}")
        started = time.perf_counter()
        try:
            manifest = read_manifest(bundle, verify=True)  # checksums of every file first
            if manifest.get("version") != version:
                # served under one name, reported under another: refused (once: the poller
                # skips refused versions) so /health never names a version it is not
                raise BundleError(f"manifest version {manifest.get('version')!r} differs from "
                                  f"its folder name {version!r} (a copied bundle? publish it "
                                  "with `recsys models promote` from a real training run)")
            loaded = self.loader(bundle, verify=False, threads=self.threads)
            prepared = self._prepare(loaded)
            self._warm(prepared)
            encoder = self._check_encoder(bundle / "encoder")
            with self._swap_lock:
                # cold-start items, read under the lock so none added meanwhile is missed
                prepared, items_seq = self._apply_stored_items(prepared)
                if promote:
                    set_current(self.models_dir, version)
                self._current, self._items_seq = prepared, items_seq
                if encoder is not None:
                    self._encoders = {prepared.version: encoder}
        except Exception as exc:  # any failure refuses the bundle; the old keeps serving
            reason = str(exc) if isinstance(exc, RecsysError) else \
                f"{type(exc).__name__}: {exc}"
            self.refused[version] = reason
            log.error("model %s refused: %s", version, reason)
            self.on_refused(version)
            raise BundleError(f"model {version} refused: {reason}") from exc
        self.refused.pop(version, None)
        self.last_error = None
        log.info("serving model %s (loaded in %.2fs; ranker: %s, %s)", version,
                 time.perf_counter() - started,
                 "compiled trees" if getattr(prepared.ranker, "compiled", False)
                 else "LightGBM predict",
                 "deadline thread" if isinstance(prepared.ranker, DeadlineRanker)
                 else "on the model thread")
        self.on_change(version)
        release = threading.Timer(RELEASE_AFTER_SWAP_S, return_freed_memory)
        release.daemon = True
        release.start()
        return prepared

    def _prepare(self, recommender: Recommender) -> Recommender:
        # a loader may hand over a ranker of its own kind (tests do): it predicts as it is
        if self.compiled_ranker:
            recommender = recommender.with_compiled_ranker(lambda why: log.warning(
                "model %s: serving with LightGBM's predict: %s", recommender.version, why))
        if self.ranker_timeout_s and not predicts_well_within(recommender.ranker,
                                                              self.ranker_timeout_s):
            recommender = recommender.with_ranker(
                DeadlineRanker(recommender.ranker, self.ranker_timeout_s, self._ranker_pool))
        return recommender

    def _warm(self, recommender: Recommender) -> None:
        """One request of each kind, so the first user never pays for lazy initialisation."""
        rows = [r for r in recommender.state.popular_rows_[:3].tolist()]
        recommender.recommend_histories([History(rows), History()], 10, Filters())
        if rows:
            recommender.similar_items(recommender.item_ids[rows[0]], 10)

    def _check_encoder(self, directory: Path):
        """A bundle whose encoder cannot load is refused here, not at its first PUT /items (500
        each). With `load_encoder` the encoder is loaded and tried now, and returned for use."""
        check_encoder_files(directory)
        if not self.load_encoder:
            return None
        from recsys.encoder import Encoder

        encoder = Encoder.load(directory, device="cpu")
        encoder.encode(["warm-up"], show_progress=False)
        return encoder

    # -- cold-start items -----------------------------------------------------------------------
    def encoder(self, recommender: Recommender):
        """The bundle's text encoder, loaded on first use."""
        from recsys.encoder import Encoder

        key = recommender.version
        if key not in self._encoders:
            if recommender.path is None:
                raise BundleError("this model has no bundle directory to load an encoder from")
            self._encoders = {key: Encoder.load(recommender.path / "encoder", device="cpu")}
        return self._encoders[key]

    def _apply_stored_items(self, recommender: Recommender,
                            since_seq: int = 0) -> tuple[Recommender, int]:
        """`recommender` with the cold-start item changes stored after `since_seq` applied (by
        the rules batch scoring uses too), and the sequence number of the last change applied."""
        if self.store is None:
            return recommender, since_seq
        changes = self.store.items(since_seq)
        if not changes:
            return recommender, since_seq
        return apply_item_changes(recommender, changes, self._encode_with(recommender)), \
            changes[-1][0]

    def _encode_with(self, recommender: Recommender):
        # no progress bar: the server's stderr is its log stream
        return lambda texts: self.encoder(recommender).encode(texts, show_progress=False)

    def refresh_items(self) -> Recommender | None:
        """The serving model with the item changes stored by any replica applied: kept so by the
        follower thread when it runs (within RECSYS_FOLLOW_STORE_S), else checked here."""
        if self._follower is not None:
            return self._current
        return self.apply_item_changes()

    def apply_item_changes(self) -> Recommender | None:
        """The serving model, with item changes stored since it was made (by this process or
        another replica sharing the store) applied first: one cheap query when nothing changed."""
        current = self._current
        if current is None or self.store is None:
            return current
        if self.store.items_seq() <= self._items_seq:
            return current
        with self._swap_lock:
            self._current, self._items_seq = self._apply_stored_items(self._current,
                                                                      self._items_seq)
            return self._current

    # -- following the store --------------------------------------------------------------------
    def start_following(self, every_s: float) -> None:
        """Apply item changes other replicas store, checking every `every_s` seconds."""
        if every_s <= 0 or self.store is None:
            return
        self.sync_store()
        self._follower = threading.Thread(target=self._follow, args=(every_s,), daemon=True,
                                          name="store-follower")
        self._follower.start()

    def _follow(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.sync_store()

    def sync_store(self) -> None:
        """One check of the store; a failure is remembered for /health, never raised: the
        replica keeps serving what it has and catches up on the next check that works."""
        try:
            seq = self.store.items_seq()
            if seq > self._items_seq and self._current is not None:
                self.apply_item_changes()
            self._store_seq, self._synced_at, self.store_error = seq, time.time(), None
        except StoreUnavailable as exc:
            self.store_error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a follower that dies would silently go stale
            log.exception("applying stored item changes failed")
            self.store_error = f"{type(exc).__name__}: {exc}"

    def store_lag(self) -> dict:
        """How far behind the store this replica is, for /health."""
        return {"reachable": self.store_error is None,
                "seconds_since_sync": None if self._synced_at is None
                else round(max(0.0, time.time() - self._synced_at), 3),
                "item_changes_behind": max(0, self._store_seq - self._items_seq),
                "error": self.store_error}

    def _require(self) -> Recommender:
        if self._current is None:
            raise NotFoundError("no model is loaded")
        return self._current

    # -- following CURRENT ----------------------------------------------------------------------
    def start_polling(self, every_s: float) -> None:
        if every_s <= 0 or self.models_dir is None:
            return
        self._poller = threading.Thread(target=self._poll, args=(every_s,), daemon=True,
                                        name="current-poller")
        self._poller.start()

    def _poll(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                wanted = current_version(self.models_dir)
            except RecsysError:
                continue
            served = self._current.version if self._current is not None else None
            if wanted != served and wanted not in self.refused:
                try:
                    self.reload(wanted)
                except RecsysError:
                    pass  # logged and remembered in `refused`; the old model keeps serving

    def close(self) -> None:
        self._stop.set()
        for thread in (self._poller, self._follower):
            if thread is not None:
                thread.join(timeout=5)
        self._ranker_pool.shutdown(wait=False, cancel_futures=True)
        self._loader.shutdown(wait=False, cancel_futures=True)


__all__ = ["DeadlineRanker", "ModelHolder"]
