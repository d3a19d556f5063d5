"""Encode speed and quality of each precision path (fp32, bf16 autocast) of `Encoder`, on CPU or
a CUDA GPU.

    python benchmarks/encode_speed.py DATASET [--device cpu|cuda] [--sample 512] [--repeats 5]
                                      [--json OUT.json]

Speed: texts/s on a fixed sample of item texts, the precisions interleaved in each repeat so
machine noise hits them alike; medians, and the ratio to fp32 from the same run. Quality: the
whole catalogue encoded in each precision, then semantic retrieval (recency-weighted profile, full
ranking, unmasked) on valid and test, and the cosine between fp32 and other vectors.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys.atomic_files import write_json  # noqa: E402
from recsys.data.dataset import load_dataset  # noqa: E402
from recsys.embedding_cache import encode_cached  # noqa: E402
from recsys.encoder import Encoder, bf16_supported  # noqa: E402
from recsys.retrieval import user_profiles  # noqa: E402
from recsys.splits import Split  # noqa: E402
from training.finetune import retrieval_metrics  # noqa: E402
from training.pipeline import item_texts  # noqa: E402


def retrieval(vectors: np.ndarray, split: Split, which: str) -> dict:
    cases = [c for c in split.cases(which) if c.history]
    profiles = user_profiles([c.history for c in cases], vectors)
    return {k: round(v, 4) for k, v in retrieval_metrics(profiles, vectors, cases).items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--model", default=None, help="encoder directory (default: MiniLM)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="where to encode (bf16 is measured where it runs natively)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sample", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-quality", action="store_true",
                        help="speed and sample cosines only (skip encoding the whole catalogue)")
    args = parser.parse_args(argv)

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("encode_speed: --device cuda but no CUDA device (torch.cuda.is_available() is "
                  "False)", file=sys.stderr)
            return 2
    dataset = load_dataset(args.dataset)
    texts = item_texts(dataset.items)
    split = Split.of(dataset, dataset.items["item_id"].to_list())
    precisions = ["fp32"] + (["bf16"] if bf16_supported(args.device) else [])
    encoders = {p: Encoder(args.model, device=args.device, precision=p,
                           max_length=args.max_length, batch_size=args.batch_size)
                for p in precisions}
    sample = [texts[i] for i in np.random.default_rng(0).choice(len(texts), args.sample,
                                                                replace=False)]
    for encoder in encoders.values():
        encoder.encode(sample[:64])                          # load and warm up
    seconds = {p: [] for p in precisions}
    sample_vectors = {}
    for _ in range(args.repeats):
        for p, encoder in encoders.items():
            started = time.perf_counter()
            sample_vectors[p] = encoder.encode(sample, show_progress=False)
            seconds[p].append(time.perf_counter() - started)
    report = {"dataset": dataset.name, "device": args.device, "sample": args.sample,
              "repeats": args.repeats, "batch_size": args.batch_size,
              "max_length": args.max_length, "rows": {}}
    reference = None
    for p, encoder in encoders.items():
        median = statistics.median(seconds[p])
        row = {"texts_per_s": round(args.sample / median, 1),
               "speedup_vs_fp32": round(statistics.median(seconds["fp32"]) / median, 2),
               "seconds": [round(x, 2) for x in seconds[p]],
               "sample_cosine_to_fp32_min": round(float(
                   (sample_vectors[p] * sample_vectors["fp32"]).sum(1).min()), 5)}
        if not args.no_quality:
            vectors = encode_cached(encoder, texts)
            reference = vectors if reference is None else reference
            row.update({"cosine_to_fp32_min": round(float((vectors * reference).sum(1).min()), 5),
                        "valid": retrieval(vectors, split, "valid"),
                        "test": retrieval(vectors, split, "test")})
        report["rows"][p] = row
        print(p, row, flush=True)
    if args.json:
        write_json(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
