"""bench/policy.py without servers: the one policy block goes into a main.cf and into mta's
[main] alike (replacing the accept benchmark's restrictions), the pgsql table file, the
namespace wrapper (private resolv.conf and hosts over /etc's, the program exec'd with its
arguments intact), the DNS records (each listed client in one zone, the unlisted client
only in PTR/A), the query count of a dnsmasq log, the share of listed-client sessions, the
peers' line and the usage errors."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "bench" / "policy.py"


@pytest.fixture
def policy(monkeypatch):
    """bench/policy.py, imported as it imports its neighbours (bench/ on sys.path)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import policy

    return policy


def test_policy_block_names_every_check_in_order(policy):
    block = policy.policyBlock(("a.rbl.example", "b.rbl.example"), Path("/run/x/rcpt.cf"), 10025)
    assert block == [
        "smtpd_peername_lookup = yes",
        "smtpd_recipient_restrictions = reject_rbl_client a.rbl.example, reject_rbl_client b.rbl.example, "
        "check_recipient_access pgsql:/run/x/rcpt.cf, check_policy_service inet:127.0.0.1:10025, "
        "permit_mynetworks, reject_unauth_destination"]


def test_without_leaves_parts_out_and_keeps_the_hold(policy):
    block = policy.policyBlock(("a.rbl.example",), Path("/t.cf"), 7, frozenset({"rbl", "pgsql", "peername"}))
    assert block == [
        "smtpd_peername_lookup = no",
        "smtpd_recipient_restrictions = check_recipient_access inline:{ rcpt@bench.example=HOLD }, "
        "check_policy_service inet:127.0.0.1:7, permit_mynetworks, reject_unauth_destination"]
    block = policy.policyBlock(("a.rbl.example",), Path("/t.cf"), 7, frozenset({"postgrey"}))
    assert "check_policy_service" not in block[1] and "pgsql:/t.cf" in block[1] and "reject_rbl_client" in block[1]
    assert policy.parseArgs(["--without", "rbl, postgrey"]).without == {"rbl", "postgrey"}
    assert policy.parseArgs([]).without == frozenset()
    assert policy.listedCount(2000, 0.05, frozenset({"rbl"})) == 0  # no DNSBL: nobody is listed


def test_the_same_block_replaces_the_restrictions_in_both_configurations(policy):
    block = policy.policyBlock(policy.ZONES, Path("/t.cf"), 1)
    maincf = ("queue_directory = /q\nsmtpd_recipient_restrictions = check_recipient_access "
              "inline:{ bench.example=HOLD }, permit_mynetworks\nmynetworks = 127.0.0.0/8\n")
    out = policy.withPolicy(maincf, block)
    lines = out.splitlines()
    assert lines[:2] == ["queue_directory = /q", "mynetworks = 127.0.0.0/8"]
    assert lines[-2:] == block
    assert "inline:" not in out and sum(l.startswith("smtpd_recipient_restrictions") for l in lines) == 1
    ini = ("[main]\nqueue_directory = /s\nsmtpd_recipient_restrictions = check_recipient_access inline:{ x=HOLD }\n"
           "\n[listener:smtp]\nendpoint = tcp:port=1:interface=127.0.0.1\n")
    out = policy.withPolicy(ini, block, "[main]")
    lines = out.splitlines()
    assert lines[:3] == ["[main]", *block]
    assert "inline:" not in out and lines[-2:] == ["[listener:smtp]", "endpoint = tcp:port=1:interface=127.0.0.1"]


def test_table_file_is_postfix_pgsql_syntax(policy):
    text = policy.tableConfig(5433, "bench", "pw", "mail")
    fields = dict(l.split(" = ", 1) for l in text.splitlines() if not l.startswith("#"))
    assert fields == {"hosts": "inet:127.0.0.1:5433", "user": "bench", "password": "pw", "dbname": "mail",
                      "query": "SELECT action FROM recipient_access WHERE address = '%s'"}


def test_namespace_wrapper_mounts_and_execs_the_program_unchanged(policy, tmp_path):
    argv = policy.namespaceArgv(Path("/r/resolv.conf"), Path("/r/hosts"), ["prog", "-c", "a b; c", "$x"])
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert argv[-6:] == ["/r/resolv.conf", "/r/hosts", "prog", "-c", "a b; c", "$x"]
    script = argv[7]
    assert 'mount --bind "$1" /etc/resolv.conf' in script and 'mount --bind "$2" /etc/hosts' in script
    # the shell part, with "mount" replaced by a recorder: the arguments arrive as given
    fake = tmp_path / "mount"
    fake.write_text('#!/bin/sh\necho "mount $*" >> "$LOG"\n')
    fake.chmod(0o755)
    log = tmp_path / "log"
    done = subprocess.run(["sh", "-c", script, "sh", "/r/resolv.conf", "/r/hosts", "printf", "[%s]", "a b", "$x"],
                          capture_output=True, text=True, timeout=30,
                          env={"PATH": f"{tmp_path}:/usr/bin:/bin", "LOG": str(log)})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[a b][$x]"
    assert log.read_text().splitlines() == ["mount --bind /r/resolv.conf /etc/resolv.conf",
                                            "mount --bind /r/hosts /etc/hosts"]


def test_dns_records_list_each_listed_client_in_its_zone_only(policy):
    records = policy.dnsRecords()
    assert records["hosts"] == [("client.bench-clients.example", "127.0.0.1"),
                                ("listed1.bench-clients.example", "127.0.0.2"),
                                ("listed2.bench-clients.example", "127.0.0.3")]
    assert records["entries"] == {"2.0.0.127.dnsbl-a.bench-rbl.example": "127.0.0.2",
                                  "3.0.0.127.dnsbl-b.bench-rbl.example": "127.0.0.2"}
    assert not any(name.startswith("1.0.0.127.") for name in records["entries"])  # the bench client is unlisted
    assert set(records["local"]) == {"bench-clients.example", "127.in-addr.arpa", "bench.example",
                                     "bench-rbl.example"}
    assert policy.reverseName("127.0.0.1") == "1.0.0.127.in-addr.arpa"


def test_private_hosts_file_has_no_entries(policy):
    # glibc answers 127.0.0.1 from a "::1" line as well: no entry may be left
    assert all(not l.strip() or l.startswith("#") for l in policy.PRIVATE_HOSTS.splitlines())


def test_count_queries_counts_query_lines_only(policy):
    log = ("dnsmasq[1]: started, version 2.90 cachesize 150\n"
           "dnsmasq[1]: query[PTR] 1.0.0.127.in-addr.arpa from 127.0.0.1\n"
           "dnsmasq[1]: config 1.0.0.127.in-addr.arpa is client.bench-clients.example\n"
           "dnsmasq[1]: query[A] 1.0.0.127.dnsbl-a.bench-rbl.example from 127.0.0.1\n"
           "dnsmasq[1]: config 1.0.0.127.dnsbl-a.bench-rbl.example is NXDOMAIN\n")
    assert policy.countQueries(log) == 2
    assert policy.countQueries("") == 0


def test_peer_note_is_the_median_round(policy):
    rounds = [{"seconds": s, "dns_queries_per_message": q, "peer_ms_per_message": c}
              for s, q, c in ((3.0, 3.0, 0.3), (1.0, 1.0, 0.1), (2.0, 2.0, 0.2))]
    assert policy.peerNote(rounds) == ("shared peers per message (median run): 2.00 DNS queries, "
                                       "0.20 ms CPU of dnsmasq, postgrey and PostgreSQL")
    assert policy.peerNote([]) is None
    assert policy.peerNote([{"seconds": 1.0}]) is None


def test_command_line_is_printed_as_run(policy):
    assert policy.commandLine(["--messages", "50"]) == "sudo python3 bench/policy.py --messages 50"
    assert policy.commandLine([]) == "sudo python3 bench/policy.py"


def test_arguments_defaults_and_what_run_py_reads(policy):
    args = policy.parseArgs([])
    assert (args.messages, args.sessions, args.rounds, args.warmup, args.grey_delay, args.dns_ttl) == \
        (2000, 20, 3, 200, 2, 300)
    assert (args.command, args.tls, args.relay_tls) == ("accept", False, False)
    assert policy.parseArgs(["-m", "50"]).warmup == 20


def test_listed_count_is_a_share_of_the_messages(policy):
    assert [policy.listedCount(n, 0.05) for n in (2000, 40, 9, 1)] == [100, 2, 0, 0]
    assert policy.listedCount(2000, 0) == 0 and policy.listedCount(10, 1) == 10


def test_peer_note_tells_the_listed_sessions(policy):
    rounds = [{"seconds": 1.0, "dns_queries_per_message": 2.0, "peer_ms_per_message": 0.5,
               "listed_sent": 100, "listed_rejected": 100}]
    assert policy.peerNote(rounds).endswith("; 100 listed-client sessions refused alongside")


@pytest.mark.parametrize("bad", [["--messages", "0"], ["--grey-delay", "0"], ["--dns-ttl", "-1"],
                                 ["--listed-share", "1.5"], ["--listed-share", "-0.1"], ["--without", "dns"],
                                 ["--rounds", "0"], ["--mta-root", "/nonexistent"], ["--nosuch"]])
def test_usage_errors(bad):
    done = subprocess.run([sys.executable, str(POLICY), *bad], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (bad, done.stdout, done.stderr)
    assert "usage: bench/policy.py" in done.stderr
