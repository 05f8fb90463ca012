"""bench/growth.py without servers: --from-json prints the table of an earlier run (medians,
ratios, growth per MB and per recipient), bad options are usage errors (the plot needs
matplotlib, which the test extra does not have: --out '' here)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GROWTH = ROOT / "bench" / "growth.py"


def growth(*args):
    return subprocess.run([sys.executable, str(GROWTH), *args], check=False, capture_output=True, text=True, timeout=60)


def figures(server, mode, size, recipients, cpus, messages=10):
    runs = [{"messages": messages, "seconds": 1.0 + i, "accept_seconds": 1.0, "rate": messages / (1.0 + i),
             "cpu_ms_per_message": cpu, "cpu_ms_per_recipient": cpu / recipients, "count": messages,
             "expected": messages, "verified": True, "notes": [], "load": 1.0}
            for i, cpu in enumerate(cpus)]
    return {"server": server, "mode": mode, "size": size, "recipients": recipients, "messages": messages,
            "runs": runs, "errors": []}


def test_from_json_prints_medians_ratios_and_growth(tmp_path):
    results = [figures("mta", "relay", 2048, 1, [2.0, 1.0, 3.0]),
               figures("postfix", "relay", 2048, 1, [1.0, 1.0, 1.0]),
               figures("mta", "relay", 10 * 1024 * 1024, 1, [102.0, 101.0, 103.0]),
               figures("postfix", "relay", 10 * 1024 * 1024, 1, [51.0, 51.0, 51.0]),
               figures("mta", "relay", 2048, 100, [12.0, 11.0, 13.0]),
               figures("postfix", "relay", 2048, 100, [21.0, 21.0, 21.0])]
    doc = tmp_path / "run.json"
    doc.write_text(json.dumps({"rounds": 3, "sessions": 20, "mta_workers": 0, "mta_set": [],
                               "load": [1.5, 2.5], "results": results}))
    done = growth("--from-json", str(doc), "--out", "")
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stdout.splitlines()]
    assert "median of 3 alternating timed runs; load average 1.50 at the start, 2.50 at the end" in lines[0]
    # the lower median of each cell, and the CPU ratio on the mta line
    assert lines[2].split() == ["relay", "2", "KB", "1", "10", "mta", "5.0", "2.00", "2.00"]
    assert lines[3].split() == ["postfix", "5.0", "1.00"]
    assert lines[4].split() == ["relay", "10", "MB", "1", "10", "mta", "5.0", "102.00", "2.00"]
    assert lines[6].split() == ["relay", "2", "KB", "100", "10", "mta", "5.0", "12.00", "0.120", "0.57"]
    assert lines[7].split() == ["postfix", "5.0", "21.00", "0.210"]
    assert "relay  mta      10.00 ms per extra MB (2 KB to 10 MB), 0.101 ms per extra recipient (1 to 100)" in lines
    assert "relay  postfix  5.00 ms per extra MB (2 KB to 10 MB), 0.202 ms per extra recipient (1 to 100)" in lines


def test_from_json_failed_cell_is_shown_and_exits_1(tmp_path):
    bad = figures("mta", "accept", 2048, 1, [])
    bad["errors"] = ["run 1: smtp-source failed (rc=1): 451 4.3.0"]
    doc = tmp_path / "run.json"
    doc.write_text(json.dumps({"rounds": 1, "sessions": 20, "load": [1, 1],
                               "results": [bad, figures("postfix", "accept", 2048, 1, [1.0])]}))
    done = growth("--from-json", str(doc), "--out", "")
    assert done.returncode == 1
    assert "mta       FAILED: run 1: smtp-source failed (rc=1): 451 4.3.0" in done.stdout


def test_usage_errors():
    for args, text in ((["--cells", "3KB:1"], "--cells: the cells are 2 KB:1, 100 KB:1, 10 MB:1, 2 KB:10, 2 KB:100"),
                       (["--cells", "big"], "--cells: cannot read 'big'"),
                       (["--modes", "deliver"], "--modes: accept, relay or accept,relay"),
                       (["--mta-set", "novalue"], "--mta-set: NAME=VALUE"),
                       (["--rounds", "0"], "must be positive")):
        done = growth(*args, "--out", "")
        assert done.returncode == 2, (args, done.stderr)
        assert text in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_unreadable_json_is_one_line(tmp_path):
    doc = tmp_path / "run.json"
    doc.write_text("{")
    done = growth("--from-json", str(doc), "--out", "")
    assert done.returncode == 1
    assert "cannot read it" in done.stderr and "Traceback" not in done.stderr
