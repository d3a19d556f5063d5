"""A disk cache of text embeddings, keyed by the encoder's weights and the exact text.

Encoding is the slowest step on a CPU (~150 short texts/s on 2 cores), so a retrain or a second
training run on the same catalogue re-encodes only the texts that changed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.atomic_files import write_parquet
from recsys.encoder import Encoder


def default_cache_dir() -> Path:
    return Path(os.environ.get("RECSYS_CACHE", Path.home() / ".cache" / "recsys")) / "embeddings"


def text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


ENCODE_CHUNK = 1024  # texts per encoder call when a step's bar reports progress


def encode_cached(encoder: Encoder, texts: Sequence[str], cache_dir: Path | None = None,
                  *, show_progress: bool | None = None,
                  progress: Callable[[int, int], Any] | None = None) -> np.ndarray:
    """Encode `texts`, reusing vectors cached for this encoder; returns float32 [n, d].

    `progress(texts, cached)`, when given, is called once the cache has been read and returns
    the bar to advance per encoded text (the encoder's own bar is then off).
    """
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    # bf16 vectors differ slightly from fp32 ones: they never share a cache file.
    suffix = "" if encoder.resolved_precision == "fp32" else f"-{encoder.resolved_precision}"
    cache_file = cache_dir / f"{encoder.fingerprint}-{encoder.max_length}{suffix}.parquet"
    keys = [text_key("" if t is None else str(t)) for t in texts]

    cached: dict[str, int] = {}
    cached_vectors = np.zeros((0, 0), dtype=np.float32)
    if cache_file.exists():
        try:
            table = pl.read_parquet(cache_file)
            cached_vectors = np.asarray(table["vector"].to_numpy(), dtype=np.float32)
            cached = {key: row for row, key in enumerate(table["key"].to_list())}
        except Exception:  # a corrupt cache is only a cache: rebuild it
            cached, cached_vectors = {}, np.zeros((0, 0), dtype=np.float32)

    missing = sorted({key: i for i, key in enumerate(keys) if key not in cached}.values())
    if progress is None:
        fresh = encoder.encode([texts[i] for i in missing], show_progress=show_progress) \
            if missing else np.zeros((0, 0), dtype=np.float32)
    else:
        fresh = _encode_with_bar(encoder, [texts[i] for i in missing],
                                 progress(len(texts), len(texts) - len(missing)))

    dim = fresh.shape[1] if missing else cached_vectors.shape[1]
    out = np.empty((len(texts), dim), dtype=np.float32)
    fresh_rows = {keys[i]: j for j, i in enumerate(missing)}
    for i, key in enumerate(keys):
        out[i] = fresh[fresh_rows[key]] if key in fresh_rows else cached_vectors[cached[key]]

    if missing:
        new_keys = [keys[i] for i in missing]
        all_keys = list(cached) + new_keys
        all_vectors = np.vstack([cached_vectors, fresh]) if cached else fresh
        vectors = pl.Series(all_vectors, dtype=pl.Array(pl.Float32, dim))
        write_parquet(pl.DataFrame({"key": all_keys, "vector": vectors}), cache_file)
    return out


def _encode_with_bar(encoder: Encoder, texts: list, bar) -> np.ndarray:
    parts = []
    try:
        for start in range(0, len(texts), ENCODE_CHUNK):
            chunk = texts[start:start + ENCODE_CHUNK]
            parts.append(encoder.encode(chunk, show_progress=False))
            bar.update(len(chunk))
    finally:
        bar.close()
    return np.vstack(parts) if parts else np.zeros((0, 0), dtype=np.float32)
