"""The GPU path check (`benchmarks/gpu_check.sh` runs it): check for a CUDA device, run the steps
(import, fine-tune + train, GPU encoding speed, test evaluation) timing each, and assemble one JSON.

    python benchmarks/gpu_check.py run [--dry-run] [--data DIR] [--work DIR] [--out JSON]
                                       [--budget SECONDS]
    python benchmarks/gpu_check.py assemble --work DIR --out OUT.json [--cpu-reference JSON]

Without a CUDA device `run` exits 2 with one line before any step. `assemble` reads, from the
work folder the steps filled: `timings.json` (seconds per step and the commands), the trained
bundle's `manifest.json` (fine-tuning report: mode, bf16, device, steps, valid selection),
`encode.json` (`benchmarks/encode_speed.py --device cuda`) and `evaluate.json` (`recsys evaluate
--json`), and puts beside them the CPU adapter's committed test evaluation, so time and quality
can be read against it. A missing or unreadable input is one line and exit 2.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recsys.atomic_files import write_json  # noqa: E402

EXIT_BAD_INPUT = 2
# The CPU adapter's `recsys train --finetune` bundle evaluated on amazon-scientific test.
CPU_REFERENCE = Path(__file__).resolve().parent / "results" / "finetune_rep_test.json"
HEADLINE = ("ndcg@10", "recall@10", "ndcg@50", "recall@50")
FINETUNE_KEYS = ("base", "device", "mode", "loss", "steps", "planned_steps", "epochs_done",
                 "best_step", "stop_reason", "seconds", "valid")
FINETUNE_CONFIG_KEYS = ("user_side", "bf16", "max_length", "batch_size", "learning_rate", "epochs",
                        "train_layers", "time_budget_s")


ROOT = Path(__file__).resolve().parent.parent
VERSION = "gpu"


class CheckError(Exception):
    """An input the assembly cannot use: the message names the file."""


def cuda_device() -> str:
    """The CUDA device's name; CheckError saying why there is none."""
    try:
        import torch
    except ImportError as exc:   # pragma: no cover - torch is a dependency
        raise CheckError(f"torch is not importable ({exc})") from exc
    if not torch.cuda.is_available():
        raise CheckError("no CUDA device (torch.cuda.is_available() is False): the GPU path "
                         "check needs one")
    return torch.cuda.get_device_name(0)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckError(f"{path}: missing (did its step run?)") from exc
    except (OSError, ValueError) as exc:
        raise CheckError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckError(f"{path}: expected a JSON object")
    return data


def headline(metrics: dict, methods=("pipeline", "semantic")) -> dict:
    return {m: {k: round(float(metrics[m][k]), 4) for k in HEADLINE if k in metrics.get(m, {})}
            for m in methods if m in metrics}


def assemble(work: Path, cpu_reference: Path | None = CPU_REFERENCE) -> dict:
    """The check's one JSON, from the files its steps wrote into `work`."""
    timings = read_json(work / "timings.json")
    evaluation = read_json(work / "evaluate.json")
    encode = read_json(work / "encode.json")
    manifest_path = Path(timings.get("bundle", work / "models" / "gpu")) / "manifest.json"
    manifest = read_json(manifest_path)
    finetune = manifest.get("encoder", {}).get("finetune")
    if not finetune:
        raise CheckError(f"{manifest_path}: the bundle was not fine-tuned (no encoder.finetune)")
    if "metrics" not in evaluation:
        raise CheckError(f"{work / 'evaluate.json'}: no metrics (not `recsys evaluate --json`)")
    report = {
        "check": "gpu_path",
        "device": timings.get("device"),
        "host": platform.node(),
        "dataset": evaluation.get("dataset"), "split": evaluation.get("split"),
        "model_version": evaluation.get("model_version"),
        "seconds": timings.get("seconds", {}),
        "commands": timings.get("commands", []),
        "finetune": {**{k: finetune[k] for k in FINETUNE_KEYS if k in finetune},
                     **{k: finetune.get("config", {})[k] for k in FINETUNE_CONFIG_KEYS
                        if k in finetune.get("config", {})},
                     "pairs": finetune.get("data", {}).get("pairs")},
        "train_timings_s": manifest.get("timings_s", {}),
        "encode": {"device": encode.get("device"), "sample": encode.get("sample"),
                   "rows": {p: {k: v for k, v in row.items() if k != "seconds"}
                            for p, row in encode.get("rows", {}).items()}},
        "evaluate": {"metrics": headline(evaluation["metrics"]),
                     "slices": {name: {"cases": part.get("cases"),
                                       "metrics": headline(part.get("metrics", {}))}
                                for name, part in evaluation.get("slices", {}).items()}},
    }
    if cpu_reference is not None:
        reference = read_json(cpu_reference)
        report["cpu_reference"] = {"file": str(cpu_reference),
                                   "model_version": reference.get("model_version"),
                                   "metrics": headline(reference.get("metrics", {}))}
        gpu, cpu = report["evaluate"]["metrics"], report["cpu_reference"]["metrics"]
        report["gpu_minus_cpu"] = {m: {k: round(gpu[m][k] - cpu[m][k], 4) for k in gpu[m]
                                       if k in cpu.get(m, {})} for m in gpu if m in cpu}
    return report


def steps(data: Path, work: Path, budget: float) -> list[tuple[str, list[str]]]:
    """The check's commands, in order: (step name, argv)."""
    recsys = [sys.executable, "-m", "recsys.cli"]
    return [
        ("import", [*recsys, "import", "recbole", str(data), "--out", str(work / "amazon")]),
        ("train", [*recsys, "train", str(work / "amazon"), "--out", str(work / "models"),
                   "--version", VERSION, "--no-promote", "--finetune", "--device", "cuda",
                   "--finetune-budget", f"{budget:g}"]),
        ("encode", [sys.executable, "benchmarks/encode_speed.py", str(work / "amazon"),
                    "--device", "cuda", "--sample", "4096", "--repeats", "3",
                    "--batch-size", "256", "--json", str(work / "encode.json")]),
        ("evaluate", [*recsys, "evaluate", str(work / "models" / VERSION), str(work / "amazon"),
                      "--split", "test", "--json", str(work / "evaluate.json")]),
    ]


def run(args) -> int:
    data, work, out = Path(args.data), Path(args.work), Path(args.out)
    if args.budget <= 0:
        raise CheckError(f"--budget must be a positive number of seconds, got {args.budget}")
    plan = steps(data, work, args.budget)
    if args.dry_run:
        for name, argv in plan:
            print(f"{name}: {' '.join(argv)}")
        print(f"assemble: {work} -> {out}")
        return 0
    device = cuda_device()
    if not data.is_dir():
        raise CheckError(f"{data}: no such folder (--data: the amazon-scientific RecBole files)")
    if work.exists() and any(work.iterdir()):
        raise CheckError(f"{work}: not empty (choose a new --work)")
    work.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check on {device} -> {out}", flush=True)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    for name, argv in plan:
        print(f"== {name}: {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        code = subprocess.run(argv, cwd=ROOT).returncode
        seconds[name] = round(time.perf_counter() - t0, 1)
        if code != 0:
            raise CheckError(f"step {name} failed (exit {code}) after {seconds[name]} s")
    seconds["total"] = round(time.perf_counter() - started, 1)
    write_json({"device": device, "bundle": str(work / "models" / VERSION), "seconds": seconds,
                "commands": [" ".join(argv) for _, argv in plan]}, work / "timings.json")
    write_json(assemble(work, Path(args.cpu_reference) if args.cpu_reference else None), out)
    print(f"wrote {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("cuda", help="print the CUDA device, or exit 2 saying there is none")
    p = sub.add_parser("run", help="check for CUDA, run every step, write the JSON")
    p.add_argument("--dry-run", action="store_true", help="print the steps, run none")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "amazon-scientific"))
    p.add_argument("--work", default="/tmp/gpu-check")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    p.add_argument("--budget", type=float, default=300.0,
                   help="fine-tuning seconds, both runs together (default 300)")
    p.add_argument("--cpu-reference", default=str(CPU_REFERENCE))
    p = sub.add_parser("assemble", help="one JSON from the step outputs in --work")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cpu-reference", default=str(CPU_REFERENCE),
                   help="a `recsys evaluate --json` of the CPU fine-tuned bundle ('' for none)")
    args = parser.parse_args(argv)
    try:
        if args.action == "cuda":
            print(cuda_device())
            return 0
        if args.action == "run":
            return run(args)
        report = assemble(Path(args.work),
                          Path(args.cpu_reference) if args.cpu_reference else None)
    except CheckError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    write_json(report, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
