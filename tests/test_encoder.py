"""The encoder: any Hugging Face encoder directory works, precisions, and the embedding cache."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from recsys.embedding_cache import encode_cached
from recsys.encoder import Encoder, bf16_supported, default_model_dir
from recsys.errors import RecsysError

TEXTS = ["Digital caliper, stainless steel, 150 mm. Tools. Neiko.",
         "Nitrile gloves, powder free, box of 100. Lab supplies. Generic.",
         "Digital vernier caliper with LCD, 6 inch. Measuring tools. Neiko."]


@pytest.fixture(scope="module")
def fp32_encoder() -> Encoder:
    return Encoder(None, device="cpu", precision="fp32")


def test_vectors_are_normalised_and_meaningful(fp32_encoder):
    vectors = fp32_encoder.encode(TEXTS)
    assert vectors.shape == (3, fp32_encoder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # the two calipers are closer to each other than either is to the gloves
    assert vectors[0] @ vectors[2] > max(vectors[0] @ vectors[1], vectors[2] @ vectors[1])
    assert fp32_encoder.encode([]).shape == (0, fp32_encoder.dim)


def test_plain_hugging_face_directory_works(tmp_path, fp32_encoder):
    """A bare transformers directory (no sentence-transformers files) loads with mean pooling."""
    source = default_model_dir()
    plain = tmp_path / "plain-hf"
    plain.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "vocab.txt", "special_tokens_map.json"):
        if (source / name).exists():
            shutil.copy(source / name, plain / name)
    assert not (plain / "modules.json").exists()
    encoder = Encoder(plain, device="cpu", precision="fp32")
    vectors = encoder.encode(TEXTS)
    # MiniLM is a mean-pooling model, so the bare weights give the same vectors
    np.testing.assert_allclose(vectors, fp32_encoder.encode(TEXTS), atol=1e-4)


def test_saved_encoder_round_trips(tmp_path, fp32_encoder):
    fp32_encoder.save(tmp_path / "encoder")
    loaded = Encoder.load(tmp_path / "encoder", device="cpu")
    assert loaded.precision == "fp32" and loaded.fingerprint == fp32_encoder.fingerprint
    np.testing.assert_allclose(loaded.encode(TEXTS), fp32_encoder.encode(TEXTS), atol=1e-6)


def test_bad_model_arguments():
    with pytest.raises(RecsysError, match="config.json"):
        Encoder("/nonexistent/encoder")
    with pytest.raises(RecsysError, match="precision"):
        Encoder(None, precision="int4")


@pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16")
def test_bf16_path_is_close_to_fp32_and_cached_apart(tmp_path, fp32_encoder):
    bf16 = Encoder(None, device="cpu", precision="bf16")
    assert bf16.resolved_precision == "bf16"
    cosine = (bf16.encode(TEXTS) * fp32_encoder.encode(TEXTS)).sum(axis=1)
    assert cosine.min() > 0.98
    encode_cached(bf16, TEXTS, tmp_path)
    encode_cached(fp32_encoder, TEXTS, tmp_path)
    assert len(list(tmp_path.glob("*.parquet"))) == 2                 # never one shared file


def test_auto_precision_on_cpu_is_bf16_only_where_native(monkeypatch):
    """"auto" is bf16 on a CPU with native bf16 (measured faster, same quality), else fp32."""
    import recsys.encoder as encoder_module

    monkeypatch.delenv(encoder_module.PRECISION_ENV, raising=False)   # conftest pins fp32
    monkeypatch.setattr(encoder_module, "bf16_supported", lambda device: True)
    assert Encoder(None, device="cpu").resolved_precision == "bf16"
    monkeypatch.setattr(encoder_module, "bf16_supported", lambda device: False)
    assert Encoder(None, device="cpu").resolved_precision == "fp32"
    assert Encoder(None, device="cpu", precision="bf16").resolved_precision == "fp32"


def test_the_environment_sets_what_auto_means(monkeypatch):
    import recsys.encoder as encoder_module

    monkeypatch.setattr(encoder_module, "bf16_supported", lambda device: True)
    monkeypatch.setenv(encoder_module.PRECISION_ENV, "fp32")
    assert Encoder(None, device="cpu").resolved_precision == "fp32"
    assert Encoder(None, device="cpu", precision="bf16").resolved_precision == "bf16"
    monkeypatch.setenv(encoder_module.PRECISION_ENV, "bf16")
    assert Encoder(None, device="cpu").resolved_precision == "bf16"
    monkeypatch.setenv(encoder_module.PRECISION_ENV, "int8")
    with pytest.raises(RecsysError, match="RECSYS_PRECISION"):
        assert Encoder(None, device="cpu").resolved_precision


def test_cache_reuses_and_extends(tmp_path, fp32_encoder, monkeypatch):
    first = encode_cached(fp32_encoder, TEXTS[:2], tmp_path)
    calls = []
    original = fp32_encoder.encode
    monkeypatch.setattr(fp32_encoder, "encode",
                        lambda texts, **kw: calls.append(list(texts)) or original(texts, **kw))
    both = encode_cached(fp32_encoder, TEXTS, tmp_path)
    assert calls == [[TEXTS[2]]]                                       # only the new text
    np.testing.assert_allclose(both[:2], first, atol=1e-6)
