"""The restriction benchmark: mta against Postfix with a realistic inbound policy.

    sudo python3 bench/policy.py [--messages 2000] [--sessions 20] [--size 2048] [--reuse]
                                 [--rounds 3] [--grey-delay 2] [--dns-ttl 300] [--listed-share 0.05]
                                 [--without peername,rbl,pgsql,postgrey]
                                 [--skip-mta] [--skip-postfix] [--keep] [--json]

bench/run.py's accept benchmark (smtp-source, both servers side by side,
untimed warm-up, alternating timed rounds, medians, CPU per message over
every process of each server, queue counts verified), with one inbound
policy written once as a main.cf block (policyBlock) that goes into both
configurations, mta's [main] and the private Postfix's main.cf:

    smtpd_peername_lookup = yes
    smtpd_recipient_restrictions =
        reject_rbl_client dnsbl-a.bench-rbl.example,
        reject_rbl_client dnsbl-b.bench-rbl.example,
        check_recipient_access pgsql:<run>/recipient_access.cf,
        check_policy_service inet:127.0.0.1:<postgrey>,
        permit_mynetworks, reject_unauth_destination

and its peers, private, started by the harness and stopped at the end:

DNS      one dnsmasq (tests/integration/peerservers.Dnsmasq) on port 53 of a
         random loopback address 127.53.X.Y: PTR and A records for the
         clients 127.0.0.1 (client.bench-clients.example, unlisted),
         127.0.0.2 and 127.0.0.3 (listed), and the two DNSBL zones, each
         listing one of the two (A 127.0.0.2 for 2.0.0.127.<zone>); every
         other name in those zones is NXDOMAIN.  Answers carry a TTL of
         --dns-ttl seconds (dnsmasq's --local-ttl; NXDOMAIN comes without
         an SOA, so no one caches it).
         Neither server can be given a DNS port: Postfix asks the C
         library's resolver, which reads the name servers (port 53 only)
         from /etc/resolv.conf, and both look at /etc/hosts first, where
         127.0.0.1 is "localhost".  So each server runs in a mount
         namespace of its own (unshare --mount --propagation private) in
         which a private resolv.conf (the dnsmasq address) and a private
         hosts file (no entries) are bind-mounted over /etc/resolv.conf
         and /etc/hosts.  The system's files are not changed and no other
         process sees the private ones.  Both servers therefore resolve
         alike: reverse lookup of the client, forward confirmation, two
         DNSBL queries, all through the same dnsmasq.
greylist one postgrey (--inet 127.0.0.1:PORT, --delay --grey-delay, its
         Debian whitelists, private --dbdir), the policy service of both.
         Every bench message has the same triplet (client 127.0.0.1,
         sender@bench.example, rcpt@bench.example), so before the warm-up
         each server is sent that triplet until it passes (the first try
         of the run is greylisted, 450; after --grey-delay seconds it
         passes: "pre-seeded").  From then on every RCPT is a policy query
         that postgrey answers DUNNO (after five passes postgrey
         auto-whitelists the client).  A deferral in a timed run would be a
         missing message in the queue count (the run says NOT VERIFIED).
pgsql    one PostgreSQL (tests/integration/sqlservers.Postgres, over TCP,
         max_connections raised to 200: each Postfix smtpd keeps a
         connection of its own), database "mail", table recipient_access
         (rcpt@bench.example -> HOLD, trap@bench.example -> REJECT).  The
         HOLD from SQL is what puts the bench mail on hold (as run.py's
         inline HOLD does), so a table that does not answer shows up as
         mail that is not in the queue.

Before the warm-up each server must also: reject the listed clients
127.0.0.2 and 127.0.0.3 (554, "blocked using" the zone that lists each),
reject trap@bench.example from the table (554), and log the unlisted client
by its DNS name (client.bench-clients.example[127.0.0.1]): a server whose
policy does not work fails with a line that says so.  The timed mail all
comes from 127.0.0.1 (smtp-source cannot choose its source address), so
every timed message passes every check, the most expensive path: two
DNSBL misses, one table hit, one policy query.  Alongside each timed run
a thread of the harness opens --listed-share x N sessions (default 5 %),
one after the other, alternately from the listed clients 127.0.0.2 and
127.0.0.3: EHLO, MAIL, RCPT, which must be refused with 554 (else the run
is not verified).  Their cost is in the server's CPU figure; the rate and
the per-message figures are per accepted message.

Output: run.py's table (messages/s, CPU ms/message of the server's own
processes, medians, ratios), and under each server a line with what the
shared peers did per message in its median run: DNS queries dnsmasq
answered, and the CPU of dnsmasq, postgrey and PostgreSQL (not in the
server's figure).

--without leaves parts of the policy out of both configurations
(smtpd_peername_lookup = no; no reject_rbl_client; an inline HOLD table in
place of the pgsql one; no check_policy_service), to see what each part
costs each server.

LIMITATIONS
    The timed mail comes from one client address, so both servers can
    keep that client's answers: mta caches DNS answers for their TTL (PTR
    and A; the DNSBL misses are NXDOMAIN without an SOA, which it does not
    cache, but identical queries in flight are sent once), Postfix's smtpd
    asks the C library, which has no cache, for PTR and A at every
    connection, and keeps DNSBL results per process across sessions
    (smtpd_check.c's rbl cache).  The queries each server made are in its
    line.  postgrey's delay is --grey-delay (2 s), not its default 300 s,
    so that pre-seeding takes seconds; after it the policy answers are the
    same.  The peers' CPU is not in the servers' figures (it is the same
    work for both, reported apart).

Must run as root (a Postfix master, mount namespaces, port 53).
bench/setup.sh installs Postfix with postfix-pgsql, dnsmasq, postgrey and
PostgreSQL.  Exit status as run.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.dont_write_bytecode = True
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))  # tests.integration's peers

from loads import RECIPIENT, SENDER, BenchFailure, runLoad, treeCpuSeconds  # noqa: E402
from postfix_instance import BENCH_DOMAIN, PostfixError, PostfixInstance, findProgram, runCaptured  # noqa: E402
from report import printJson, printTable  # noqa: E402
from run import REPO_ROOT, Entry, MtaServer, PostfixServer, acceptRound, benchmark, freePorts, log  # noqa: E402

CLIENT_NAME = "client.bench-clients.example"
LISTED = {"127.0.0.2": "dnsbl-a.bench-rbl.example", "127.0.0.3": "dnsbl-b.bench-rbl.example"}
ZONES = tuple(LISTED.values())
TRAP = f"trap@{BENCH_DOMAIN}"
# No entries at all: the C library answers a lookup of 127.0.0.1 from a "::1" line too.
PRIVATE_HOSTS = "# bench/policy.py: no names here, so that the clients' names come from DNS\n"


# -- the policy, once for both ------------------------------------------------------

PARTS = ("peername", "rbl", "pgsql", "postgrey")  # what --without can leave out


def policyBlock(zones, tableFile, postgreyPort: int, without=frozenset()) -> list[str]:
    """
    The main.cf lines of the policy, the same for mta's [main] and Postfix's
    main.cf; C{without} leaves parts out (PARTS), for finding what costs:
    without pgsql an inline table puts the mail on hold in its place.
    """
    checks = [] if "rbl" in without else [f"reject_rbl_client {z}" for z in zones]
    checks.append(f"check_recipient_access inline:{{ {RECIPIENT}=HOLD }}" if "pgsql" in without
                  else f"check_recipient_access pgsql:{tableFile}")
    if "postgrey" not in without:
        checks.append(f"check_policy_service inet:127.0.0.1:{postgreyPort}")
    checks += ["permit_mynetworks", "reject_unauth_destination"]
    return [f"smtpd_peername_lookup = {'no' if 'peername' in without else 'yes'}",
            "smtpd_recipient_restrictions = " + ", ".join(checks)]


def withPolicy(text: str, block: list[str], section: str | None = None) -> str:
    """
    C{text} (a main.cf, or an mta.ini with C{section} "[main]") without its
    smtpd_recipient_restrictions and smtpd_peername_lookup lines and with
    C{block} instead: at the end of a main.cf, at the top of the section.
    """
    names = {line.split("=", 1)[0].strip() for line in block}
    kept = [line for line in text.splitlines() if line.split("=", 1)[0].strip() not in names or "=" not in line]
    if section is None:
        return "\n".join(kept + ["", "# bench/policy.py: the inbound policy", *block, ""])
    i = kept.index(section) + 1
    return "\n".join(kept[:i] + block + kept[i:]) + "\n"


def tableConfig(port: int, user: str, password: str, dbname: str) -> str:
    """The pgsql_table(5) file both servers read."""
    return (f"# bench/policy.py: recipient access table\nhosts = inet:127.0.0.1:{port}\nuser = {user}\n"
            f"password = {password}\ndbname = {dbname}\n"
            "query = SELECT action FROM recipient_access WHERE address = '%s'\n")


def namespaceArgv(resolvConf: Path, hosts: Path, argv: list[str]) -> list[str]:
    """argv run in a private mount namespace where resolvConf and hosts cover /etc's files."""
    script = 'mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/hosts && shift 2 && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
            str(resolvConf), str(hosts), *argv]


def reversedAddress(address: str) -> str:
    """127.0.0.2 -> 2.0.0.127: the labels of its PTR name and of its DNSBL queries."""
    return ".".join(reversed(address.split(".")))


def reverseName(address: str) -> str:
    return reversedAddress(address) + ".in-addr.arpa"


def dnsRecords(zones=ZONES, listed=LISTED) -> dict:
    """dnsmasq's data: hosts (name, address, with PTR), the DNSBL entries (name -> A), the local zones."""
    hosts = [(CLIENT_NAME, "127.0.0.1")]
    hosts += [(f"listed{n}.bench-clients.example", a) for n, a in enumerate(sorted(listed), 1)]
    entries = {f"{reversedAddress(a)}.{zone}": "127.0.0.2" for a, zone in listed.items()}
    local = ("bench-clients.example", "127.in-addr.arpa", BENCH_DOMAIN, *sorted({z.split(".", 1)[1] for z in zones}))
    return {"hosts": hosts, "entries": entries, "local": local}


def countQueries(logText: str) -> int:
    """The queries in a dnsmasq --log-queries log (lines "query[TYPE] name from ...")."""
    return sum(1 for line in logText.splitlines() if " query[" in line)


# -- the peers ------------------------------------------------------------------------

def _peerservers():
    from tests.integration import peerservers, sqlservers
    return peerservers, sqlservers


class PolicyDns:
    """peerservers.Dnsmasq on ADDRESS:53 with the bench's records (a subclass made at run time)."""

    def __init__(self, directory: Path, ttl: int):
        peerservers, _ = _peerservers()
        rng = random.SystemRandom()
        for _ in range(100):
            address = f"127.53.{rng.randint(0, 254)}.{rng.randint(1, 254)}"
            if peerservers.canBind(address, 53):
                break
        else:
            raise BenchFailure("no loopback address with port 53 free for dnsmasq")
        self.address, records = address, dnsRecords()
        base = peerservers.Dnsmasq

        class Dns(base):
            def arguments(inner):
                args = [a for a in base.arguments(inner)
                        if not a.startswith(("--listen-address=", "--port="))]
                return args + [f"--listen-address={address}", "--port=53", f"--local-ttl={ttl}"] + [
                    f"--address=/{name}/{a}" for name, a in records["entries"].items()]

            def answers(inner):
                import dns.exception
                import dns.message
                import dns.query
                try:
                    dns.query.udp(dns.message.make_query(CLIENT_NAME, "A"), address, port=53, timeout=0.5)
                    return True
                except (dns.exception.DNSException, OSError):
                    return False

        self.server = Dns(hosts=records["hosts"], local=records["local"], directory=directory)
        self.server.port = 53

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def pid(self):
        return self.server.process.pid if self.server.process else None

    def queries(self) -> int:
        return countQueries(self.server.logText())


class Peers:
    """dnsmasq, postgrey and PostgreSQL for both servers, and the files the servers get."""

    def __init__(self, rundir: Path, args):
        self.rundir, self.args = rundir, args
        self.dns = self.postgres = self.postgrey = None
        self.resolvConf, self.hosts = rundir / "resolv.conf", rundir / "hosts"
        self.table = rundir / "recipient_access.cf"
        self.postgreyPort = None

    def start(self) -> None:
        _, sqlservers = _peerservers()
        (self.rundir / "dns").mkdir()
        self.dns = PolicyDns(self.rundir / "dns", self.args.dns_ttl)
        log(f"peers: dnsmasq on {self.dns.address}:53")
        self.dns.start()
        self.resolvConf.write_text(f"# bench/policy.py\nnameserver {self.dns.address}\n")
        self.hosts.write_text(PRIVATE_HOSTS)
        log("peers: PostgreSQL")
        self.postgres = sqlservers.Postgres()
        self.postgres.start()
        self.postgres.execute(["ALTER SYSTEM SET max_connections = 200"])
        self.postgres.stop()
        self.postgres.start()
        self.postgres.execute(["CREATE ROLE bench LOGIN PASSWORD 'benchpw'", "CREATE DATABASE mail OWNER bench"])
        self.postgres.execute([
            "CREATE TABLE recipient_access (address text PRIMARY KEY, action text NOT NULL)",
            f"INSERT INTO recipient_access VALUES ('{RECIPIENT}', 'HOLD'), "
            f"('{TRAP}', 'REJECT no such user here')",
            "GRANT SELECT ON recipient_access TO bench"], dbname="mail")
        self.table.write_text(tableConfig(self.postgres.port, "bench", "benchpw", "mail"))
        os.chmod(self.table, 0o644)  # Postfix's smtpd runs as postfix
        self.postgreyPort = freePorts(1)[0]
        db = self.rundir / "postgrey"
        db.mkdir()
        argv = [shutil.which("postgrey") or "/usr/sbin/postgrey", f"--inet=127.0.0.1:{self.postgreyPort}",
                f"--dbdir={db}", f"--delay={self.args.grey_delay}", "--user=root", "--group=root"]
        log(f"peers: {' '.join(argv)}")
        self.postgreyLog = open(self.rundir / "postgrey.log", "wb")
        self.postgrey = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.postgreyLog,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.postgrey.poll() is not None:
                raise BenchFailure("postgrey exited", (self.rundir / "postgrey.log").read_text(errors="replace"))
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.postgreyPort)) == 0:
                    break
            if time.monotonic() > deadline:
                raise BenchFailure("postgrey does not listen")
            time.sleep(0.1)

    def block(self) -> list[str]:
        return policyBlock(ZONES, self.table, self.postgreyPort, self.args.without)

    def cpuSeconds(self) -> float:
        pids = [self.dns.pid() if self.dns else None, self.postgrey.pid if self.postgrey else None,
                self.postgres.process.pid if self.postgres and self.postgres.process else None]
        return sum(treeCpuSeconds(p) or 0.0 for p in pids if p)

    def stop(self) -> None:
        if self.postgrey is not None:
            from loads import stopProcessGroup
            stopProcessGroup(self.postgrey, grace=10)
            self.postgreyLog.close()
            self.postgrey = None
        if self.postgres is not None:
            self.postgres.remove()
            self.postgres = None
        if self.dns is not None:
            self.dns.stop()
            self.dns = None


# -- the servers, with the policy ---------------------------------------------------

class PolicyMta(MtaServer):
    def __init__(self, *args, peers: Peers, **kwargs):
        super().__init__(*args, **kwargs)
        self.peers = peers

    def writeConfig(self) -> Path:
        ini = super().writeConfig()
        ini.write_text(withPolicy(ini.read_text(), self.peers.block(), "[main]"))
        return ini

    def argv(self, ini: Path) -> list[str]:
        return namespaceArgv(self.peers.resolvConf, self.peers.hosts, super().argv(ini))

    def start(self) -> None:
        super().start()
        checkPolicy(self, self.workdir / "maillog", self.peers.args)


class PolicyPostfixInstance(PostfixInstance):
    def __init__(self, *args, peers: Peers, **kwargs):
        super().__init__(*args, **kwargs)
        self.peers = peers

    def create(self) -> None:
        super().create()
        main = self.config_dir / "main.cf"
        main.write_text(withPolicy(main.read_text(), self.peers.block()))

    def _postfix(self, *args: str, timeout: float = 60.0):
        env = dict(os.environ)
        env.pop("MAIL_CONFIG", None)
        argv = [self.postfix, "-c", str(self.config_dir), *args]
        return runCaptured(namespaceArgv(self.peers.resolvConf, self.peers.hosts, argv), timeout=timeout, env=env)


class PolicyPostfix(PostfixServer):
    def __init__(self, *args, peers: Peers, **kwargs):
        super().__init__(*args, **kwargs)
        self.peers = peers

    def makeInstance(self) -> PostfixInstance:
        return PolicyPostfixInstance(self.port, None, keep=self.keep, parent_dir=str(self.workdir), peers=self.peers)

    def start(self) -> None:
        super().start()
        checkPolicy(self, self.instance.maillog, self.peers.args)


# -- the checks before the warm-up ------------------------------------------------------

def trySend(port: int, source: str = "127.0.0.1", recipient: str = RECIPIENT) -> tuple[int, str]:
    """One message from C{source}: the RCPT reply (code, text); DATA when it was 250."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="bench-client.example", timeout=60,
                      source_address=(source, 0)) as c:
        c.ehlo()
        c.mail(SENDER)
        code, text = c.rcpt(recipient)
        if code == 250:
            c.data(b"Subject: bench/policy.py check\r\n\r\npolicy check\r\n")
        return code, text.decode("utf-8", "replace")


def checkPolicy(server, maillog: Path, args) -> None:
    """The listed clients and the trap are refused, the client is named from DNS, greylisting is seeded."""
    for address, zone in (LISTED.items() if "rbl" not in args.without else ()):
        code, text = trySend(server.port, address)
        if code != 554 or f"blocked using {zone}" not in text:
            raise BenchFailure(f"{server.name}: listed client {address} got {code} {text!r}, "
                               f"not 554 blocked using {zone}")
    code, text = trySend(server.port, recipient=TRAP)
    if "pgsql" not in args.without and (code != 554 or "no such user" not in text):
        raise BenchFailure(f"{server.name}: {TRAP} (REJECT in the pgsql table) got {code} {text!r}")
    deferred, deadline = 0, time.monotonic() + 4 * args.grey_delay + 60
    while True:
        code, text = trySend(server.port)
        if code == 250:
            break
        if "postgrey" in args.without or code != 450 or "reylist" not in text or time.monotonic() > deadline:
            raise BenchFailure(f"{server.name}: the bench triplet got {code} {text!r}")
        deferred += 1
        time.sleep(args.grey_delay + 1)
    log(f"{server.name}: policy checks passed (listed clients and {TRAP} refused; "
        f"greylisting pre-seeded, {deferred} deferral{'s' if deferred != 1 else ''}; "
        f"without: {', '.join(sorted(args.without)) or 'nothing'})")
    named = f"{CLIENT_NAME}[127.0.0.1]" if "peername" not in args.without else "unknown[127.0.0.1]"
    deadline = time.monotonic() + 10
    while named not in (maillog.read_text(errors="replace") if maillog.exists() else ""):
        if time.monotonic() > deadline:
            raise BenchFailure(f"{server.name}: its log does not name the client {named} (reverse DNS)")
        time.sleep(0.2)


def listedCount(messages: int, share: float, without=frozenset()) -> int:
    """How many listed-client sessions go alongside C{messages} timed messages (none without the DNSBLs)."""
    return 0 if "rbl" in without else int(round(messages * share))


def sendListed(port: int, count: int, addresses=tuple(sorted(LISTED))) -> dict:
    """
    C{count} sessions, one after the other, alternately from each listed
    address: each must be refused at RCPT with 554 "blocked using" its
    zone.  {"sent", "rejected", "errors": the first unexpected replies}.
    """
    rejected, errors = 0, []
    for n in range(count):
        address = addresses[n % len(addresses)]
        try:
            code, text = trySend(port, address)
        except (OSError, smtplib.SMTPException) as e:
            code, text = 0, f"{type(e).__name__}: {e}"
        if code == 554 and f"blocked using {LISTED[address]}" in text:
            rejected += 1
        elif len(errors) < 3:
            errors.append(f"{address}: {code} {text}")
    return {"sent": count, "rejected": rejected, "errors": errors}


def policyRound(peers: Peers):
    """
    run.acceptRound, with the listed clients' sessions (--listed-share)
    sent alongside smtp-source, and what the shared peers did meanwhile
    (DNS queries, CPU).
    """

    def timed(entry, args, i):
        listed = {}

        def load(server, messages, args):
            count = listedCount(messages, args.listed_share, args.without)
            thread = threading.Thread(target=lambda: listed.update(sendListed(server.port, count)), daemon=True)
            thread.start()
            try:
                return runLoad(server, messages, args)
            finally:
                thread.join(args.timeout)

        q0, cpu0 = peers.dns.queries(), peers.cpuSeconds()
        result = acceptRound(entry, args, i, load=load)
        result["dns_queries_per_message"] = (peers.dns.queries() - q0) / args.messages
        result["peer_ms_per_message"] = (peers.cpuSeconds() - cpu0) * 1000.0 / args.messages
        result["listed_sent"], result["listed_rejected"] = listed.get("sent", 0), listed.get("rejected", 0)
        if result["listed_rejected"] != listedCount(args.messages, args.listed_share, args.without):
            entry.result.notes.append(f"run {i + 1}: {result['listed_rejected']} of "
                                      f"{listedCount(args.messages, args.listed_share, args.without)} listed-client sessions "
                                      f"refused with 554: {'; '.join(listed.get('errors', [])) or 'not finished'}")
            result["count"] = -1  # not verified
        return result

    return timed


def peerNote(rounds: list[dict]) -> str | None:
    """The line under a server's row: the shared peers' work per message in its median round."""
    if not rounds or "peer_ms_per_message" not in rounds[0]:
        return None
    ordered = sorted(rounds, key=lambda r: r["seconds"])
    median = ordered[(len(ordered) - 1) // 2]
    listed = (f"; {median['listed_rejected']} listed-client sessions refused alongside"
              if median.get("listed_sent") else "")
    return (f"shared peers per message (median run): {median['dns_queries_per_message']:.2f} DNS queries, "
            f"{median['peer_ms_per_message']:.2f} ms CPU of dnsmasq, postgrey and PostgreSQL{listed}")


def describePolicy(args) -> str:
    without = f" WITHOUT {', '.join(sorted(args.without))}" if args.without else ""
    return (f"policy: smtpd_peername_lookup, reject_rbl_client x2, check_recipient_access pgsql:, "
            f"check_policy_service (postgrey, --delay {args.grey_delay}, pre-seeded){without}; "
            f"DNS TTL {args.dns_ttl}s; timed mail from 127.0.0.1 (unlisted, every check passed), "
            f"{listedCount(args.messages, args.listed_share, args.without)} sessions from listed clients alongside (554)")


def commandLine(argv: list[str]) -> str:
    return "sudo python3 bench/policy.py" + "".join(f" {a}" for a in argv)


# -- main ---------------------------------------------------------------------------------

def parseArgs(argv):
    p = argparse.ArgumentParser(prog="bench/policy.py",
                                description="mta against Postfix, accept rate with the same inbound policy.")
    p.add_argument("--messages", "-m", type=int, default=2000, help="timed messages (default 2000)")
    p.add_argument("--sessions", "-s", type=int, default=20, help="parallel SMTP sessions (default 20)")
    p.add_argument("--size", "-l", type=int, default=2048, help="message body bytes (default 2048)")
    p.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=False,
                   help="many messages per connection (smtp-source -d); default: a connection per message")
    p.add_argument("--rounds", type=int, default=3, help="timed runs per server, alternating (default 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up messages (default N/10, 20..200)")
    p.add_argument("--grey-delay", type=int, default=2, help="postgrey's --delay, seconds (default 2)")
    p.add_argument("--dns-ttl", type=int, default=300, help="TTL of dnsmasq's answers (default 300)")
    p.add_argument("--listed-share", type=float, default=0.05,
                   help="sessions from DNSBL-listed clients sent alongside each timed run, as a share of "
                        "--messages (default 0.05); each must be refused with 554")
    p.add_argument("--without", default="",
                   help=f"leave parts of the policy out, comma-separated, from {', '.join(PARTS)} "
                        "(to see what each costs; default: none)")
    p.add_argument("--timeout", type=float, default=600.0, help="time limit of one smtp-source run (default 600)")
    p.add_argument("--start-timeout", type=float, default=60.0, help="time to answer SMTP after start (default 60)")
    p.add_argument("--mta-workers", type=int, default=0, help="mta's worker_processes (default 0)")
    p.add_argument("--skip-mta", action="store_true", help="run Postfix only")
    p.add_argument("--skip-postfix", action="store_true", help="run mta only")
    p.add_argument("--mta-root", type=Path, default=REPO_ROOT, help="the checkout whose mta is run")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    if not (args.mta_root / "mta" / "__init__.py").is_file():
        p.error(f"--mta-root {args.mta_root}: no mta package there (mta/__init__.py)")
    if args.messages < 1 or args.sessions < 1 or args.rounds < 1 or args.size < 0 or args.grey_delay < 1:
        p.error("--messages, --sessions, --rounds and --grey-delay must be positive, --size not negative")
    if args.dns_ttl < 0 or not 0 <= args.listed_share <= 1:
        p.error("--dns-ttl must not be negative, --listed-share must be from 0 to 1")
    args.without = frozenset(w.strip() for w in args.without.split(",") if w.strip())
    if args.without - set(PARTS):
        p.error(f"--without: unknown {', '.join(sorted(args.without - set(PARTS)))} (known: {', '.join(PARTS)})")
    if args.warmup is None:
        args.warmup = max(20, min(200, args.messages // 10))
    # What run.py's accept run reads of its arguments.
    args.command, args.tls, args.relay_tls, args.tls_key, args.tls_files = "accept", False, False, "rsa", None
    args.drain_timeout, args.stall_timeout = 300.0, 30.0
    return args


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parseArgs(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if os.geteuid() != 0:
        log("must run as root (a Postfix master, mount namespaces, port 53)")
        return 1
    try:
        for program in ("smtp-source", "postfix"):
            findProgram(program)
        for program in ("dnsmasq", "postgrey", "unshare"):
            if not (shutil.which(program) or os.path.exists(f"/usr/sbin/{program}")):
                raise PostfixError(f"{program} not found (run bench/setup.sh)")
    except PostfixError as e:
        log(str(e))
        return 1
    rundir = Path(tempfile.mkdtemp(prefix="mta-bench-policy-"))
    os.chmod(rundir, 0o755)
    peers = Peers(rundir, args)
    results = {}
    log(f"{commandLine(argv)}; work directory {rundir}")
    try:
        try:
            peers.start()
        except (AssertionError, TimeoutError, OSError, subprocess.SubprocessError) as e:
            # the peers' helpers (tests/integration) report a failed start so
            raise BenchFailure(f"the peers did not start: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                               str(e)) from None
        names = [n for n, skip in (("mta", args.skip_mta), ("postfix", args.skip_postfix)) if not skip]
        entries = []
        for name, port in zip(names, freePorts(len(names))):
            if name == "mta":
                server = PolicyMta(rundir / "mta", port, None, args.start_timeout, args.mta_root.resolve(),
                                   workers=args.mta_workers, peers=peers)
            else:
                server = PolicyPostfix(rundir, port, None, args.start_timeout, args.keep, peers=peers)
            entries.append(Entry(server, None, args.messages))
        results = benchmark(entries, args, policyRound(peers))
        for entry in entries:
            note = peerNote(entry.rounds)
            if note:
                entry.result.notes.append(note)
    except BenchFailure as e:
        log(f"FAILED: {e}")
        if e.detail:
            log(e.detail)
        return 1
    except KeyboardInterrupt:
        log("interrupted; everything started has been stopped")
        return 130
    finally:
        peers.stop()
        if args.keep:
            log(f"kept {rundir}")
        else:
            shutil.rmtree(rundir, ignore_errors=True)
    if args.json:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            printJson(args, results)
        doc = json.loads(out.getvalue())
        doc.update(command=commandLine(argv), policy=describePolicy(args), without=sorted(args.without),
                   grey_delay=args.grey_delay, dns_ttl=args.dns_ttl, listed_share=args.listed_share)
        print(json.dumps(doc, indent=2))
    else:
        print(commandLine(argv))
        print(describePolicy(args))
        printTable(args, results)
    return 0 if results and all(r.ok and r.verified for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
