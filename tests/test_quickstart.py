"""The README's run command end to end: `recsys quickstart` trains on the bundled demo data,
prints the evaluation table, serves, and the curl line it prints returns recommendations.

Slow (it embeds the 9,742 MovieLens items on the first run), so it is marked and run by
`.ci/run` after the fast suite.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import free_port, stop_group

pytestmark = pytest.mark.slow


def test_quickstart_trains_evaluates_serves_and_the_printed_curl_works(tmp_path):
    port = free_port()
    recsys = Path(sys.executable).parent / "recsys"
    server = subprocess.Popen([str(recsys), "quickstart", "--workdir", str(tmp_path / "demo"),
                               "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output: list[str] = []
    try:
        curl = None
        deadline = time.monotonic() + 1800
        while curl is None and time.monotonic() < deadline:
            line = server.stdout.readline()
            if not line:
                break
            output.append(line)
            if line.strip().startswith("curl "):
                curl = line.strip()
        assert curl, "no curl line printed:\n" + "".join(output[-40:])
        printed = "".join(output)
        assert re.search(r"^pipeline\s+\d\.\d{4}", printed, flags=re.M), printed[-3000:]
        assert re.search(r"^popularity\s+\d\.\d{4}", printed, flags=re.M)

        # wait for the server, then run the printed curl line exactly as a user would
        body = None
        for _ in range(120):
            result = subprocess.run(shlex.split(curl) + ["-s", "-f"], capture_output=True,
                                    text=True)
            if result.returncode == 0:
                body = result.stdout
                break
            time.sleep(0.5)
        assert body is not None, "the printed curl never succeeded"
        import json

        answer = json.loads(body)
        assert answer["items"], answer
        assert answer["model_version"] and answer["source"] == "model"
    finally:
        stop_group(server)
        server.stdout.close()
