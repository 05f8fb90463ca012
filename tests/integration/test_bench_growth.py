"""bench/growth.py against the real servers, a few messages per cell: both mta and the private
Postfix accept (on HOLD) and relay (to smtp-sink) 2 KB messages to 1 and to 100 recipients,
the counts are verified (a 100-recipient message reaches the sink as 2 deliveries from either
server: default_destination_recipient_limit = 50 in both), and every run has a CPU figure."""

import json
import os
import subprocess
import sys

import pytest

from tests.integration.daemon import ROOT

pytestmark = pytest.mark.integration


def test_growth_small_run(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("bench/growth.py starts a Postfix master: run as root")
    out = tmp_path / "growth.json"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "growth.py"), "--rounds", "1",
                           "--scale", "0.01", "--cells", "2KB:1,2KB:100", "--out", "", "--json", str(out)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    results = json.loads(out.read_text())["results"]
    cells = {(f["mode"], f["recipients"], f["server"]) for f in results}
    assert cells == {(mode, rcpt, server) for mode in ("accept", "relay") for rcpt in (1, 100)
                     for server in ("mta", "postfix")}
    for f in results:
        assert not f["errors"], f
        (run,) = f["runs"]
        assert run["verified"] and run["count"] == run["expected"], f
        deliveries = 2 if f["mode"] == "relay" and f["recipients"] == 100 else 1
        assert run["expected"] == f["messages"] * deliveries, f
        assert run["cpu_ms_per_message"] is not None and run["cpu_ms_per_message"] >= 0, f
    table = done.stdout
    assert "CPU growth" in table and "ms per extra recipient (1 to 100)" in table
