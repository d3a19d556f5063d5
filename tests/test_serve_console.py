"""What a real `recsys serve` writes to stderr: a JSON line stream for a log collector that no
progress bar or colour code breaks, and text a person can read on a terminal."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import httpx

from serving.testing import copy_models
from tests.processes import free_port, stop_group

START_TIMEOUT_S = 120


def serve(args: list[str], stderr, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "recsys.cli", "serve", *args],
                            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                            env={**os.environ, "RECSYS_POLL_CURRENT_S": "0.5", **(env or {})})


def wait_ready(process: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited"
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the server did not become ready")


def test_json_stream_survives_model_and_encoder_loads(models_dir, tmp_path):
    """An encoder load (PUT /items) printed a transformers "Loading weights" bar into the
    stream, and uvicorn's lines carried a `color_message` copy with ANSI codes."""
    models = copy_models(models_dir, tmp_path / "models")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "stderr.txt", "wb") as stderr:
        # auto: stderr is a file here, so JSON
        process = serve([str(models), "--port", str(port)], stderr)
        try:
            wait_ready(process, url)
            put = httpx.put(f"{url}/items", timeout=120, json={"items": [
                {"item_id": "console-1", "title": "A new glue", "text": "strong glue"}]})
            assert put.status_code == 200
        finally:
            stop_group(process)
    raw = (tmp_path / "stderr.txt").read_bytes()
    assert b"\x1b" not in raw and b"\\u001b" not in raw and b"\r" not in raw
    lines = [json.loads(line) for line in raw.decode().splitlines()]  # every line is JSON
    assert not [line for line in lines if "color_message" in line]
    messages = [line["message"] for line in lines]
    assert any(m.startswith("serving model") for m in messages)
    assert any(line.get("route") == "/items" and line.get("status") == 200 for line in lines)


def read_until(fd: int, marker: bytes, timeout_s: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout_s
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the terminal closed: the process is gone
                break
    return seen


def test_text_on_a_terminal_by_default(tmp_path):
    """auto (the default) writes text when stderr is a terminal; it was JSON everywhere."""
    terminal, stderr = pty.openpty()
    later = tmp_path / "models-later"
    process = serve([str(later), "--port", str(free_port()), "--wait-for-model"], stderr)
    os.close(stderr)
    try:
        seen = read_until(terminal, b"waiting for a model", START_TIMEOUT_S)
    finally:
        stop_group(process)
        os.close(terminal)
    lines = [line for line in seen.decode().splitlines() if line.strip()]
    assert any("INFO" in line and "waiting for a model" in line for line in lines), seen
    assert not [line for line in lines if line.lstrip().startswith("{")]
    assert b"\x1b" not in seen
    assert not later.exists()
