"""Every snippet in README.md runs (STYLE.md item 14: examples that cannot rot).

Shell blocks run in a scratch directory, on the small MovieLens fixture standing in for the
bundled demo data (the full demo is exercised by tests/test_quickstart.py, marked slow). The
set-up block (`make demo`, `make test`) is checked with `make -n`: running it here would recurse.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from tests.processes import free_port, stop_group

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCKS if lang == language]


def test_readme_has_exactly_the_two_setup_commands():
    setup = [b for b in blocks("bash") if "make " in b]
    assert len(setup) == 1
    commands = [line.split("#")[0].strip() for line in setup[0].splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


@pytest.mark.parametrize("target,expected", [("demo", "recsys quickstart"), ("test", "pytest")])
def test_setup_commands_do_what_the_readme_says(target, expected, tmp_path):
    # dry run in a copy, so the real .venv is neither used nor rebuilt
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").write_text("")
    result = subprocess.run(["make", "-n", "-B", target], cwd=tmp_path, capture_output=True,
                            text=True, check=True)
    assert expected in result.stdout
    assert "pip install --quiet torch==2.13.0" in result.stdout


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.fixture(scope="module")
def walkthrough_dir(tmp_path_factory) -> Path:
    """A scratch project where the demo data path holds the small MovieLens fixture."""
    work = tmp_path_factory.mktemp("readme")
    shutil.copytree(FIXTURES / "movielens", work / "recsys" / "demo" / "ml-latest-small")
    return work


def run_shell(block: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_walkthrough_runs(walkthrough_dir):
    [walkthrough] = [b for b in blocks("bash") if "recsys import movielens" in b]
    result = run_shell(walkthrough, walkthrough_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (walkthrough_dir / "evaluation.json").exists()
    assert "pipeline" in result.stdout


def test_python_snippet_runs(walkthrough_dir):
    [snippet] = blocks("python")
    if not (walkthrough_dir / "models" / "CURRENT").exists():
        test_cli_walkthrough_runs(walkthrough_dir)
    result = subprocess.run([sys.executable, "-c", snippet], cwd=walkthrough_dir,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "popularity" in result.stdout   # "a-new-user" is served the fallback


def test_http_api_snippet_runs_against_a_real_server(walkthrough_dir):
    import json
    import time
    import urllib.request

    [api] = [b for b in blocks("bash") if "curl" in b and "127.0.0.1:8000" in b]
    if not (walkthrough_dir / "models" / "CURRENT").exists():
        test_cli_walkthrough_runs(walkthrough_dir)
    port = free_port()
    recsys = Path(sys.executable).parent / "recsys"
    server = subprocess.Popen([str(recsys), "serve", "models", "--port", str(port)],
                              cwd=walkthrough_dir, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail("server never became ready")
        script = api.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace("curl -s", "curl -sf")
        result = run_shell(script, walkthrough_dir)
        assert result.returncode == 0, result.stderr[-3000:]
        decoder, text, answers = json.JSONDecoder(), result.stdout.strip(), []
        while text.startswith("{"):  # curl prints the bodies back to back, then the export line
            answer, end = decoder.raw_decode(text)
            answers.append(answer)
            text = text[end:].strip()
        recommendations = [a for a in answers if "items" in a]
        assert len(recommendations) == 4
        assert all(a["model_version"] and a["source"] for a in recommendations)
        assert "exported" in text and "1 item changes" in text
        assert (walkthrough_dir / "new-clicks" / "events.parquet").exists()
        assert (walkthrough_dir / "new-clicks" / "item_changes.parquet").exists()
    finally:
        stop_group(server)


def section_blocks(heading: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block under the README's `## heading`."""
    section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def test_bring_your_own_data_walks_from_two_files_to_served_recommendations(tmp_path):
    import json
    import time
    import urllib.request

    own = "tests/fixtures/own_data"
    shutil.copytree(ROOT / own, tmp_path / own)
    [(_, shown_error), (_, setup), (_, api)] = section_blocks("Bring your own data")
    # The error the section shows is the one the command prints, word for word.
    command, *expected = shown_error.strip().splitlines()
    failed = run_shell(command.removeprefix("$ "), tmp_path)
    assert failed.returncode == 2 and failed.stderr.strip().splitlines() == expected
    result = run_shell(setup, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "timestamps: epoch milliseconds (by magnitude)" in result.stdout
    assert "data/news: valid" in result.stdout

    port = free_port()
    recsys = Path(sys.executable).parent / "recsys"
    server = subprocess.Popen([str(recsys), "serve", "models-news", "--port", str(port)],
                              cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail("server never became ready")
        script = api.replace("127.0.0.1:8001", f"127.0.0.1:{port}").replace("curl -s", "curl -sf")
        answer = run_shell(script, tmp_path)
        assert answer.returncode == 0, answer.stderr[-3000:]
        decoder, text, answers = json.JSONDecoder(), answer.stdout.strip(), []
        while text.startswith("{"):
            body, end = decoder.raw_decode(text)
            answers.append(body)
            text = text[end:].strip()
        recommendations, events = answers
        assert recommendations["source"] == "model" and len(recommendations["items"]) == 5
        assert all(item["item_id"].startswith("hb-") for item in recommendations["items"])
        assert events == {"accepted": 1, "duplicates": 0}
    finally:
        stop_group(server)


def test_evaluation_json_example_is_valid_json():
    import json

    [example] = blocks("json")
    report = json.loads(example)
    assert {"dataset", "split", "protocol", "model_version", "metrics"} <= set(report)
