"""Reading and writing the parts of a bundle (what each file holds is listed in `recsys.bundle`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from safetensors.numpy import load_file, save_file

from features.build import FEATURES
from features.state import BehaviourState
from recsys.errors import BundleError
from recsys.index import ItemIndex
from recsys.interest import INTEREST_FILE, InterestModel
from recsys.ranker import Ranker
from recsys.retrieval import RetrievalConfig

if TYPE_CHECKING:
    from recsys.encoder import Encoder
    from recsys.recommender import Recommender

ITEM_FIELDS = ("item_id", "title", "category")


def write_parts(path: Path, *, items: pl.DataFrame, vectors: np.ndarray, index: ItemIndex,
                state: BehaviourState, ranker: Ranker, users: pl.DataFrame,
                encoder: "Encoder", interest: InterestModel | None = None) -> None:
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


def read_bundle(cls: type["Recommender"], bundle: Path, manifest: dict[str, Any], *,
                threads: int = 0) -> "Recommender":
    from recsys.recommender import History

    try:
        items = pl.read_parquet(bundle / "items.parquet")
        vectors = load_file(str(bundle / "item_vectors.safetensors"))["vectors"]
        index = ItemIndex.load(bundle / "index.faiss", **manifest.get("config", {}).get("index", {}))
        state = BehaviourState.from_tables(
            json.loads((bundle / "features" / "state.json").read_text()),
            pl.read_parquet(bundle / "features" / "items.parquet"),
            pl.read_parquet(bundle / "features" / "covisitation.parquet"))
        users_frame = pl.read_parquet(bundle / "features" / "users.parquet")
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
    users: dict[str, History] = {
        user: History(list(rows), float(last) if last is not None else float("nan"))
        for user, rows, last in users_frame.iter_rows()
    }
    retrieval = RetrievalConfig(**manifest.get("config", {}).get("retrieval", {}))
    return cls(version=manifest["version"], manifest=manifest, item_table=items,
               item_vectors=vectors, index=index, state=state, ranker=ranker, users=users,
               retrieval=retrieval, interest=interest, path=bundle)
