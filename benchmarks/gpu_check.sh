#!/usr/bin/env bash
# The GPU path, run (issue 24 item 4), in under 10 minutes on one H100: transformer fine-tuning in
# bf16 on amazon-scientific (`recsys train --finetune --device cuda`), GPU encoding throughput
# (benchmarks/encode_speed.py --device cuda) and the end-to-end test evaluation, assembled into
# one JSON beside the CPU adapter's committed numbers. The steps live in benchmarks/gpu_check.py.
#
#   benchmarks/gpu_check.sh [--dry-run] [--data DIR] [--work DIR] [--out JSON] [--budget SECONDS]
#
# --data: the amazon-scientific RecBole folder (default ../shared/data/amazon-scientific);
# --work: a new or empty scratch folder for the dataset, bundle and step outputs (default
# /tmp/gpu-check); --out: the JSON (default benchmarks/results/gpu_check.json); --budget:
# fine-tuning seconds, both runs together (default 300). --dry-run prints the steps, runs none.
# Without a CUDA device it exits 2 with one line saying so, before doing anything.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" benchmarks/gpu_check.py run "$@"
