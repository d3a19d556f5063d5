"""The CPU-friendly fine-tuning mode: a residual adapter on top of the frozen encoder.

The transformer is frozen, so its (cached) item vectors are computed once; training reads them
through `CachedVectors` and updates only `x + tanh(W x + b)` (W starts at zero: the adapter starts
as the identity, i.e. as the zero-shot encoder). The encoder that ships is the base encoder's
modules plus the trained adapter and a final Normalize: a plain sentence-transformers directory
that turns any text, including items never clicked, into a vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers.sentence_transformer.modules import Dense, InputModule, Normalize

ADAPTER_FILE = "adapter.safetensors"


class CachedVectors(InputModule):
    """Training-time input module: a text's base-encoder vector, looked up (never saved)."""

    def __init__(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        super().__init__()
        self.rows = {text: row for row, text in enumerate(texts)}
        self.register_buffer("vectors", torch.from_numpy(np.ascontiguousarray(vectors)),
                             persistent=False)

    def preprocess(self, inputs, prompt=None, **kwargs) -> dict:
        try:
            rows = [self.rows[text] for text in inputs]
        except KeyError as exc:
            raise KeyError(f"text without a cached vector (adapter mode only reads item texts): "
                           f"{str(exc)[:80]}") from None
        # named input_ids: the trainer recognises model inputs by that suffix
        return {"input_ids": torch.tensor(rows, dtype=torch.long)}

    def forward(self, features: dict, **kwargs) -> dict:
        features["sentence_embedding"] = self.vectors[features["input_ids"].to(self.vectors.device)]
        return features

    def get_embedding_dimension(self) -> int:
        return int(self.vectors.shape[1])

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        raise RuntimeError("CachedVectors is for training only; save the servable encoder instead")


def new_adapter(dim: int, layers: int) -> list[Dense]:
    return [Dense(dim, dim, bias=True, activation_function=torch.nn.Tanh(),
                  init_weight=torch.zeros(dim, dim), init_bias=torch.zeros(dim),
                  use_residual=True) for _ in range(layers)]


def training_model(texts: Sequence[str], vectors: np.ndarray, adapter: list[Dense], device: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(modules=[CachedVectors(texts, vectors), *adapter, Normalize()],
                               device=device)


def save_adapter(adapter: list[Dense], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = {f"{i}.{name}": tensor.detach().cpu().contiguous()
             for i, layer in enumerate(adapter) for name, tensor in layer.state_dict().items()}
    save_file(state, str(directory / ADAPTER_FILE))


def load_adapter(adapter: list[Dense], directory: Path) -> None:
    state = load_file(str(directory / ADAPTER_FILE))
    for i, layer in enumerate(adapter):
        layer.load_state_dict({name[len(f"{i}."):]: t for name, t in state.items()
                               if name.startswith(f"{i}.")})


def save_servable_encoder(base_dir: Path, adapter: list[Dense], out_dir: Path,
                          max_length: int) -> None:
    """The base encoder's modules + the adapter + Normalize, saved as one encoder directory."""
    from sentence_transformers import SentenceTransformer

    base = SentenceTransformer(str(base_dir), device="cpu", local_files_only=True)
    base.max_seq_length = max_length
    layers = [layer.to("cpu") for layer in adapter]
    model = SentenceTransformer(modules=[*base, *layers, Normalize()], device="cpu")
    model.save(str(out_dir), safe_serialization=True)
