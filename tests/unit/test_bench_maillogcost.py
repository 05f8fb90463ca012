"""bench/maillogcost.py runs and prints both costs (its figures are for the closing notes, not asserted)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_maillogcost_prints_both_ways():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "maillogcost.py"), "--lines", "200"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"event: [\d.]+ us/line   file: [\d.]+ us/line   ratio [\d.]+\n", done.stdout), done.stdout
