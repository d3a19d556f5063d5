"""The GPU path check's CPU side: it refuses to start without CUDA, its plan, and the one JSON it
assembles from its steps' outputs (a tiny made-up work folder; the GPU run itself is not here)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("bench_gpu_check",
                                                  ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metrics(ndcg: float, recall: float) -> dict:
    return {"ndcg@10": ndcg, "recall@10": ndcg * 1.4, "ndcg@50": ndcg * 1.2,
            "recall@50": recall, "mrr": ndcg * 0.9}


@pytest.fixture()
def work(tmp_path) -> Path:
    """What the steps write, in small: timings, the bundle manifest, encode and evaluate JSON."""
    work = tmp_path / "work"
    bundle = work / "models" / "gpu"
    bundle.mkdir(parents=True)
    (work / "timings.json").write_text(json.dumps({
        "device": "NVIDIA H100", "bundle": str(bundle),
        "seconds": {"import": 1.0, "train": 200.0, "encode": 30.0, "evaluate": 40.0,
                    "total": 271.0},
        "commands": ["recsys train ... --finetune --device cuda"]}))
    (bundle / "manifest.json").write_text(json.dumps({
        "encoder": {"finetune": {"device": "cuda", "mode": "transformer", "steps": 400,
                                 "best_step": 300, "stop_reason": "epochs done",
                                 "seconds": {"training": 120.0, "total": 150.0},
                                 "valid": {"metric": "recall@50", "base": 0.18, "best": 0.25},
                                 "data": {"pairs": 34101},
                                 "config": {"bf16": True, "max_length": 128,
                                            "batch_size": 256, "train_layers": 0}}},
        "timings_s": {"embed": 160.0, "ranker_fit": 30.0}}))
    (work / "encode.json").write_text(json.dumps({
        "device": "cuda", "sample": 4096,
        "rows": {"fp32": {"texts_per_s": 9000.0, "seconds": [0.5, 0.4]},
                 "bf16": {"texts_per_s": 20000.0, "speedup_vs_fp32": 2.2, "seconds": [0.2]}}}))
    (work / "evaluate.json").write_text(json.dumps({
        "dataset": "amazon-scientific", "split": "test", "model_version": "gpu",
        "metrics": {"pipeline": metrics(0.11, 0.28), "semantic": metrics(0.09, 0.25),
                    "popularity": metrics(0.02, 0.09)},
        "slices": {"cold_items": {"cases": 37, "metrics": {"pipeline": metrics(0.05, 0.2)}},
                   "warm_items": {"cases": 8405, "metrics": {"pipeline": metrics(0.11, 0.28)}}}}))
    (work / "cpu.json").write_text(json.dumps({
        "model_version": "rep", "metrics": {"pipeline": metrics(0.1033, 0.2636),
                                            "semantic": metrics(0.0872, 0.22)}}))
    return work


def test_assemble_puts_time_finetuning_encoding_and_quality_in_one_json(gpu_check, work,
                                                                        tmp_path):
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["assemble", "--work", str(work), "--out", str(out),
                           "--cpu-reference", str(work / "cpu.json")]) == 0
    report = json.loads(out.read_text())
    assert report["device"] == "NVIDIA H100" and report["seconds"]["total"] == 271.0
    finetune = report["finetune"]
    assert finetune["mode"] == "transformer" and finetune["bf16"] is True
    assert finetune["device"] == "cuda" and finetune["pairs"] == 34101
    assert report["encode"]["rows"]["bf16"] == {"texts_per_s": 20000.0, "speedup_vs_fp32": 2.2}
    assert report["evaluate"]["metrics"]["pipeline"]["ndcg@10"] == 0.11
    assert set(report["evaluate"]["metrics"]) == {"pipeline", "semantic"}
    assert report["evaluate"]["slices"]["cold_items"]["cases"] == 37
    assert report["gpu_minus_cpu"]["pipeline"]["ndcg@10"] == pytest.approx(0.11 - 0.1033,
                                                                           abs=1e-4)
    assert report["cpu_reference"]["model_version"] == "rep"


def test_assemble_names_a_missing_step_output(gpu_check, work, tmp_path, capsys):
    (work / "encode.json").unlink()
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["assemble", "--work", str(work), "--out", str(out),
                           "--cpu-reference", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "encode.json" in err and "missing" in err
    assert not out.exists()


def test_assemble_refuses_a_bundle_that_was_not_fine_tuned(gpu_check, work, tmp_path, capsys):
    manifest = work / "models" / "gpu" / "manifest.json"
    manifest.write_text(json.dumps({"encoder": {}}))
    assert gpu_check.main(["assemble", "--work", str(work), "--out", str(tmp_path / "o.json"),
                           "--cpu-reference", ""]) == 2
    assert "not fine-tuned" in capsys.readouterr().err


def test_run_without_cuda_exits_2_in_one_line_before_any_step(gpu_check, tmp_path, capsys,
                                                              monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    work = tmp_path / "work"
    assert gpu_check.main(["run", "--work", str(work), "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA device" in err
    assert not work.exists() and not (tmp_path / "o.json").exists()


def test_the_script_s_plan_fine_tunes_and_encodes_on_cuda(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run",
                           "--work", str(tmp_path / "w"), "--budget", "240"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    plan = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    assert list(plan) == ["import", "train", "encode", "evaluate", "assemble"]
    assert "--finetune --device cuda --finetune-budget 240" in plan["train"]
    assert "--device cuda" in plan["encode"]
    assert "--split test" in plan["evaluate"]
    assert not (tmp_path / "w").exists(), "a dry run writes nothing"
