"""bench/policy.py against the real servers and peers, with tiny counts: mta and the private
Postfix both run the one policy (reverse DNS from the private dnsmasq, two DNSBLs, the pgsql
table's HOLD, postgrey pre-seeded), every timed message is queued, every listed-client
session alongside is refused, and the figures are there (CPU, DNS queries per message: Postfix
asks PTR and A for every connection).  And the harness's policy check fails a server that
does not apply the policy (a plain accept-mode Postfix accepts a listed client)."""

import json
import os
import subprocess
import sys

import pytest

from tests.integration.daemon import ROOT
from tests.integration.peerservers import freePort

pytestmark = pytest.mark.integration

BENCH = os.path.join(ROOT, "bench")


def needRoot():
    if os.geteuid() != 0:
        pytest.fail("bench/policy.py starts a Postfix master, mounts in a namespace and binds port 53: run as root")


def test_policy_small_run():
    needRoot()
    argv = [sys.executable, os.path.join(BENCH, "policy.py"), "--messages", "40", "--rounds", "1",
            "--grey-delay", "1", "--listed-share", "0.1", "--json"]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert "sudo python3 bench/policy.py --messages 40 --rounds 1" in done.stderr  # the command, logged
    assert "greylisting pre-seeded, 1 deferral;" in done.stderr  # the first server met the triplet first
    doc = json.loads(done.stdout)
    assert doc["command"] == "sudo python3 bench/policy.py --messages 40 --rounds 1 --grey-delay 1 --listed-share 0.1 --json"
    assert doc["without"] == [] and doc["policy"].startswith("policy: smtpd_peername_lookup, reject_rbl_client x2")
    assert set(doc["results"]) == {"mta", "postfix"}
    for name, result in doc["results"].items():
        assert result["ok"] and result["verified"] and result["queued"] == 40, result
        (run,) = result["rounds"]
        assert run["count"] == 40 and run["listed_sent"] == 4 and run["listed_rejected"] == 4, run
        assert run["cpu_ms_per_message"] > 0 and run["peer_ms_per_message"] > 0, run
        assert run["dns_queries_per_message"] >= 0, run
    # glibc has no cache: a PTR and an A query per connection at least.  mta keeps the
    # peername answers for their TTL and the DNS list answers a minute, so after the
    # warm-up round it asks (next to) nothing: fewer queries than Postfix, never more.
    postfixQueries = doc["results"]["postfix"]["rounds"][0]["dns_queries_per_message"]
    assert postfixQueries >= 2
    assert doc["results"]["mta"]["rounds"][0]["dns_queries_per_message"] < postfixQueries / 2
    assert doc["ratio"] > 0 and doc["cpu_ratio"] > 0


def test_policy_check_fails_a_server_without_the_policy(monkeypatch):
    needRoot()
    monkeypatch.syspath_prepend(BENCH)
    import policy
    from postfix_instance import PostfixInstance

    class Plain:  # a server as checkPolicy sees one: name and port
        name = "postfix"

    instance = PostfixInstance(freePort())
    instance.start()
    try:
        server = Plain()
        server.port = instance.port
        args = policy.parseArgs(["--grey-delay", "1"])
        with pytest.raises(policy.BenchFailure) as caught:
            policy.checkPolicy(server, instance.maillog, args)
        assert "listed client 127.0.0.2 got 250" in str(caught.value)
        # the listed-client stream counts what was not refused, with the reply
        out = policy.sendListed(instance.port, 2)
        assert out["sent"] == 2 and out["rejected"] == 0
        assert out["errors"][0].startswith("127.0.0.2: 250 ") and out["errors"][1].startswith("127.0.0.3: 250 ")
    finally:
        instance.stop()
