"""docs/benchmarks.md cannot rot: every command it shows names a script or `recsys` subcommand
that exists and whose flags parse, and every results file it cites exists. The benchmarks
themselves are not run: each command's arguments go through the script's own argparse parser,
which is stopped right after parsing."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from recsys.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "benchmarks.md"
# pages whose commands and results files are held to the same checks
PAGES = (PAGE, ROOT / "docs" / "reliability.md")
RESULTS = ROOT / "benchmarks" / "results"
PREFIXES = (".venv/bin/", "/work/main/.venv/bin/")


def page_commands(text: str) -> list[str]:
    """The whole commands the page shows: the lines of its code blocks (comments after `#`
    dropped) and inline `python benchmarks/...` spans."""
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line:
                lines.append(line)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = re.findall(r"`(python3? benchmarks/[^`]+)`", prose)
    lines += [" ".join(span.split()) for span in spans]
    return lines


def recsys_mentions(text: str) -> list[str]:
    """Inline `recsys SUBCOMMAND [--flag ...]` spans in the prose: parts of a command."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return [" ".join(span.split()) for span in re.findall(r"`(recsys [a-z][^`]*)`", prose)]


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    [subparsers] = [action for action in build_parser()._actions
                    if isinstance(action, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def cited_results(text: str) -> set[str]:
    """Results files the page names: by path, or by a bare `*.json` name in backticks."""
    names = set(re.findall(r"benchmarks/results/([\w.-]+\.json)", text))
    names |= {name for name in re.findall(r"`([\w.-]+\.json)`", text)}
    return names


class Parsed(Exception):
    """Raised in place of running a benchmark once its arguments have parsed."""


def parse_command(line: str, monkeypatch) -> None:
    """Parse one command line with the parser of the program it names; raises AssertionError
    naming the line when the program is unknown or the flags do not parse."""
    words = shlex.split(line)
    program = words[0]
    for prefix in PREFIXES:
        program = program.removeprefix(prefix)
    if program == "recsys":
        run = lambda: build_parser().parse_args(words[1:])  # noqa: E731
    elif program in ("python", "python3") and words[1].startswith("benchmarks/"):
        script = ROOT / words[1]
        assert script.is_file(), f"{line!r}: no script {words[1]}"
        module = importlib.import_module("benchmarks." + script.stem)
        monkeypatch.setattr("sys.argv", [str(script), *words[2:]])
        run = module.main
    else:
        raise AssertionError(f"{line!r}: not a `recsys` or `python benchmarks/...` command")

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        parsed = original(parser, args, namespace)
        raise Parsed(parsed)

    with monkeypatch.context() as patch:
        if program != "recsys":
            patch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        try:
            run()
        except Parsed:
            return
        except SystemExit as exc:
            raise AssertionError(f"{line!r}: its arguments do not parse (exit {exc.code})") from exc
    if program != "recsys":
        raise AssertionError(f"{line!r}: the script returned without parsing arguments")


PAGE_TEXT = PAGE.read_text()
ALL_TEXT = "\n".join(page.read_text() for page in PAGES)
COMMANDS = page_commands(ALL_TEXT)


def test_page_is_a_reference_not_a_journal():
    assert len(PAGE_TEXT.splitlines()) <= 310  # a reference of about 300 lines
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", PAGE_TEXT), "dates belong in git history"
    assert not re.search(r"`[0-9a-f]{7,40}`", PAGE_TEXT), "commit hashes belong in git history"
    assert len(page_commands(PAGE_TEXT)) >= 15


@pytest.mark.parametrize("line", COMMANDS)
def test_command_parses(line, monkeypatch):
    parse_command(line, monkeypatch)


@pytest.mark.parametrize("mention", recsys_mentions(ALL_TEXT))
def test_recsys_mention_names_a_subcommand_and_its_flags(mention):
    words = mention.split()
    parsers = subcommand_parsers()
    assert words[1] in parsers, f"{mention!r}: no subcommand {words[1]!r}"
    known = parsers[words[1]]._option_string_actions
    unknown = [w for w in words[2:] if w.startswith("-") and w.split("=")[0] not in known]
    assert not unknown, f"{mention!r}: {words[1]} has no option {unknown}"


def test_cited_results_exist():
    for page in PAGES:
        cited = cited_results(page.read_text())
        assert cited, page
        missing = sorted(name for name in cited if not (RESULTS / name).is_file())
        assert not missing, f"{page} cites missing results files: {missing}"


def test_a_missing_flag_is_caught(monkeypatch):
    with pytest.raises(AssertionError, match="do not parse"):
        parse_command("python benchmarks/batch.py --models M --no-such-flag 3", monkeypatch)
    with pytest.raises(AssertionError, match="do not parse"):
        parse_command("recsys train DATA --no-such-flag", monkeypatch)
    with pytest.raises(AssertionError, match="no script"):
        parse_command("python benchmarks/no_such_benchmark.py", monkeypatch)
