"""Reading and writing the files of one bundle (what each holds: `recsys.bundle_versions`)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from safetensors.numpy import load_file, save_file

from features.build import FEATURES
from features.item_item import ItemItem
from features.state import BehaviourState
from recsys.errors import BundleError
from recsys.index import ItemIndex, shared_vectors
from recsys.interest import INTEREST_FILE, InterestModel
from recsys.ranker_model import Ranker
from recsys.retrieval import RetrievalConfig
from recsys.user_history import History

if TYPE_CHECKING:
    from recsys.encoder import Encoder

ITEM_FIELDS = ("item_id", "title", "category")
ITEM_ITEM_FILE = "features/item_item.safetensors"


def write_parts(path: Path, *, items: pl.DataFrame, vectors: np.ndarray, index: ItemIndex,
                state: BehaviourState, ranker: Ranker, users: pl.DataFrame,
                encoder: Encoder, interest: InterestModel | None = None) -> None:
    """Write every file of a bundle into the (temporary) bundle directory `path`."""
    items.select(ITEM_FIELDS).write_parquet(path / "items.parquet")
    save_file({"vectors": np.ascontiguousarray(vectors, dtype=np.float32)},
              str(path / "item_vectors.safetensors"))
    index.save(path / "index.faiss")
    ranker.save(path / "ranker.txt")
    features = path / "features"
    features.mkdir(exist_ok=True)
    (features / "state.json").write_text(json.dumps(state.meta(), indent=2))
    state.item_table().write_parquet(features / "items.parquet")
    state.covisitation.table().write_parquet(features / "covisitation.parquet")
    users.write_parquet(features / "users.parquet")
    if state.item_item_ is not None:
        state.item_item_.save(path / ITEM_ITEM_FILE)
    encoder.save(path / "encoder")
    if interest is not None:
        interest.save(path / INTEREST_FILE)


def users_table(histories: dict[str, list[int]], last_times: dict[str, float]) -> pl.DataFrame:
    ids = sorted(histories)
    return pl.DataFrame({
        "user_id": ids,
        "items": pl.Series([histories[u] for u in ids], dtype=pl.List(pl.Int32)),
        "last_time": pl.Series([last_times.get(u, float("nan")) for u in ids], dtype=pl.Float64),
    })


class UserHistories(Mapping[str, "History"]):
    """The bundle's user histories, user id -> History, kept as arrays: one flat array of item
    rows with an offset per user. A History is made when a user is looked up.

    Why not a dict of Histories: that made one Python object per history item (330k item rows for
    the 20k users of the 100k-item benchmark bundle, 450k small objects in all). Such objects live
    in pymalloc's 1 MiB arenas, and an arena is handed back only when every object in it is gone,
    so objects made by requests while a bundle was loading could pin the old bundle's arenas after
    a swap. (Native memory freed at a swap is handed back by
    `serving.model_holder.return_freed_memory`.)
    """

    def __init__(self, user_ids: list[str], offsets: np.ndarray, items: np.ndarray,
                 last_times: np.ndarray) -> None:
        if not (len(user_ids) + 1 == offsets.shape[0] == last_times.shape[0] + 1) \
                or int(offsets[-1]) != items.shape[0]:
            raise ValueError("user ids, offsets, items and last times do not line up")
        self._position = {user: i for i, user in enumerate(user_ids)}
        if len(self._position) != len(user_ids):
            raise ValueError("user ids are not unique")
        self._offsets = offsets
        self._items = items
        self._last_times = last_times

    @classmethod
    def from_frame(cls, frame: pl.DataFrame) -> UserHistories:
        """From the bundle's features/users.parquet (user_id, items: list of item rows,
        last_time)."""
        lists = frame["items"]
        lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
        items = lists.explode().drop_nulls().to_numpy().astype(np.int64)
        if items.shape[0] != int(lengths.sum()):
            raise BundleError("a user history in features/users.parquet has a null item row")
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        last_times = frame["last_time"].cast(pl.Float64).fill_null(float("nan")).to_numpy()
        return cls(frame["user_id"].to_list(), offsets, items, last_times.astype(np.float64))

    def __getitem__(self, user: str) -> History:
        i = self._position[user]
        rows = self._items[self._offsets[i]:self._offsets[i + 1]].tolist()
        return History(rows, float(self._last_times[i]))

    def get(self, user, default=None):
        return self[user] if user in self._position else default

    def __contains__(self, user: object) -> bool:
        return user in self._position

    def __iter__(self) -> Iterator[str]:
        return iter(self._position)

    def __len__(self) -> int:
        return len(self._position)


@dataclass
class BundleParts:
    """What a bundle holds, read and checked: the `Recommender`'s constructor arguments."""

    version: str
    manifest: dict[str, Any]
    item_table: pl.DataFrame
    item_vectors: np.ndarray
    index: ItemIndex
    state: BehaviourState
    ranker: Ranker
    users: UserHistories
    retrieval: RetrievalConfig
    interest: InterestModel | None
    path: Path


def read_bundle(bundle: Path, manifest: dict[str, Any], *, threads: int = 0) -> BundleParts:
    """Every part of the bundle directory `bundle`; a BundleError names the part that is
    missing, unreadable or inconsistent with the others."""
    try:
        items = pl.read_parquet(bundle / "items.parquet")
        vectors = load_file(str(bundle / "item_vectors.safetensors"))["vectors"]
        index_settings = manifest.get("config", {}).get("index", {})
        index = ItemIndex.load(bundle / "index.faiss", **index_settings)
        state = BehaviourState.from_tables(
            json.loads((bundle / "features" / "state.json").read_text()),
            pl.read_parquet(bundle / "features" / "items.parquet"),
            pl.read_parquet(bundle / "features" / "covisitation.parquet"))
        if ITEM_ITEM_FILE in manifest.get("files", {}):
            state.item_item_ = ItemItem.load(bundle / ITEM_ITEM_FILE, state.n_items)
        users = UserHistories.from_frame(pl.read_parquet(bundle / "features" / "users.parquet"))
        ranker = Ranker.load(bundle / "ranker.txt", manifest.get("features", list(FEATURES)),
                             threads=threads)
        # listed in the sealed file list: a bundle trained with it cannot silently lose it
        interest = (InterestModel.load(bundle / INTEREST_FILE, vectors.shape[1])
                    if INTEREST_FILE in manifest.get("files", {}) else None)
    except BundleError:
        raise
    except Exception as exc:  # any unreadable part means the bundle is broken, say which
        raise BundleError(f"{bundle}: cannot read bundle ({type(exc).__name__}: {exc})") from exc

    n = items.height
    expected_dim = manifest.get("embedding_dim")
    if vectors.shape[0] != n or index.size != n or state.n_items != n:
        raise BundleError(f"{bundle}: item count mismatch (items {n}, vectors {vectors.shape[0]}, "
                          f"index {index.size}, state {state.n_items})")
    if vectors.shape[1] != index.dim or (expected_dim and vectors.shape[1] != expected_dim):
        raise BundleError(f"{bundle}: vector dimension mismatch (vectors {vectors.shape[1]}, "
                          f"index {index.dim}, manifest {expected_dim})")
    vectors = shared_vectors(index, vectors)
    settings = dict(manifest.get("config", {}).get("retrieval", {}))
    # a bundle made before the item-item source retrieves as it did when it was trained
    settings.setdefault("n_item_item", 0)
    retrieval = RetrievalConfig(**settings)
    return BundleParts(version=manifest["version"], manifest=manifest, item_table=items,
                       item_vectors=vectors, index=index, state=state, ranker=ranker,
                       users=users, retrieval=retrieval, interest=interest, path=bundle)
