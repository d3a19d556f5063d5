"""`recsys quickstart`'s steps around training: the bundled MovieLens latest-small demo data in,
the test evaluation and an example request out (recsys/cli.py trains and serves in between)."""

from __future__ import annotations

from pathlib import Path

DEMO_DATA = Path(__file__).resolve().parent / "demo" / "ml-latest-small"


def import_demo(workdir: Path) -> tuple[Path, Path]:
    """Import the demo data under `workdir`; returns (dataset dir, models dir) for training."""
    from recsys.data.importers import import_dataset

    workdir.mkdir(parents=True, exist_ok=True)
    dataset_dir, models_dir = workdir / "dataset", workdir / "models"
    print(f"[1/4] importing the bundled MovieLens latest-small demo data -> {dataset_dir}")
    import_dataset("movielens", DEMO_DATA, dataset_dir)
    print(f"[2/4] training -> {models_dir} (item texts are embedded once, then cached)")
    return dataset_dir, models_dir


def evaluate_demo(workdir: Path, dataset_dir: Path, models_dir: Path, *,
                  host: str = "127.0.0.1", port: int = 8000) -> dict:
    """Print the trained demo's test evaluation and a curl for its most active user."""
    from recsys.atomic_files import write_json
    from recsys.evaluate import evaluate, format_table
    from recsys.recommender import Recommender

    print("[3/4] evaluating on the test split (the last 10% of time)")
    report = evaluate(models_dir, dataset_dir, "test", log=indented)
    print(format_table(report))
    write_json(report, workdir / "evaluation.json")

    recommender = Recommender.load(models_dir)
    example_user = sorted(recommender.users, key=lambda u: -len(recommender.users[u].items))[0]
    curl = f"curl 'http://{host}:{port}/recommendations/{example_user}?k=5'"
    print(f"[4/4] serving on http://{host}:{port} (docs at /docs). Try:\n  {curl}")
    return {"report": report, "curl": curl, "models": str(models_dir)}


def indented(line: str) -> None:
    """Train's and evaluate's own numbered steps, under the quickstart's."""
    print(f"      {line}")
