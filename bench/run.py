"""Side-by-side benchmarks of mta and a private Postfix, in one run.

    python bench/run.py accept [--messages N] [--sessions 20] [--size 2048]
                               [--reuse | --no-reuse] [--tls [--tls-key rsa|ecdsa]]
                               [--rounds R] [--json]
    python bench/run.py relay  [same options] [--relay-tls]

accept   Postfix's smtp-source sends N messages to mta, then to a private
         Postfix instance (bench/postfix_instance.py), one after the other,
         over loopback.  The time is the wall time of smtp-source; afterwards
         the harness checks that N new messages are in each server's queue.
relay    The same load, but each server relays everything to a local
         smtp-sink; the time runs from the start of smtp-source until the
         sink has received all N messages.

--tls     The same, over STARTTLS: bench/tlsload.py sends instead of
         smtp-source (which has no TLS), one TLS handshake per message, or
         per session with --reuse; both servers get smtpd_tls_security_level
         = may and the same self-signed certificate, made at run time (RSA
         2048, or ECDSA P-256 with --tls-key ecdsa), which the client
         verifies.  A server that does not offer STARTTLS fails with a line
         that says so.
--relay-tls  (relay) Outbound TLS: the next hop is bench/tlssink.py, a
         counting sink that requires STARTTLS; mta relays with
         smtp_tls_security_level = encrypt, Postfix too, with
         smtp_tls_connection_reuse = yes (its tlsproxy and scache) and a
         client session cache.  Each server's row then tells the
         connections, full and resumed handshakes the sink saw.

Both servers are started and warmed up first (untimed), then the timed runs
alternate between them (mta, postfix, mta, postfix, ... for --rounds R).
The table gives messages, seconds, messages/s and the server's CPU per
message (utime+stime from /proc, the twistd process for mta, the master and
all its descendants, reaped children included, for Postfix) per server, and
the lines ``ratio mta/postfix = X.XX`` (above 1: mta is faster) and ``CPU
per message mta/postfix``.  --json prints the figures as JSON instead.
Progress and diagnostics go to stderr.

Everything listens on and connects to 127.0.0.1 only, on free ports picked
at run time.  Every process the harness starts is stopped at the end, on
error and on Ctrl-C too; every wait is bounded.  Must run as root (a
Postfix master needs it); bench/setup.sh installs Postfix.

Exit status: 0 when every server ran and the counts were verified, 1 when
something failed (the table says what), 2 on a usage error, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ left in bench/
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loads import (  # noqa: E402
    BenchFailure, makeCertificate, offersStarttls, runLoad, stopProcessGroup, treeCpuSeconds, waitForCount)
from postfix_instance import (  # noqa: E402
    BENCH_DOMAIN, PostfixError, PostfixInstance, countRegularFiles, findProgram,
    tail, waitForGreeting)
from report import Result, describe, printJson, printTable  # noqa: E402
from tlssink import TlsSink  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
# mta queue directories that hold messages (hold too, should mta park mail there).
MTA_QUEUES = ("incoming", "active", "deferred", "hold")


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def freePorts(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together while picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def stableCount(count, timeout: float = 5.0) -> int:
    """count() once two readings in a row agree (files move between queues)."""
    deadline = time.monotonic() + timeout
    last = count()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = count()
        if now == last:
            return now
        last = now
    return last


# -- servers --------------------------------------------------------------------

class MtaServer:
    """mta, run in the foreground by twistd: ``twistd -n --pidfile= mta -c <ini>``.

    cwd is a fresh directory, PYTHONPATH the repository root.
    """

    name = "mta"

    def __init__(self, workdir: Path, port: int, relay_port: int | None,
                 start_timeout: float, root: Path = REPO_ROOT, tls: tuple[Path, Path] | None = None,
                 relay_tls: bool = False, workers: int = 0):
        self.root = root
        self.workers = workers
        self.relay_tls = relay_tls
        self.tls = tls
        self.workdir = workdir
        self.port = port
        self.relay_port = relay_port
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.logfile = workdir / "twistd.log"
        self.spool = workdir / "spool"

    def writeConfig(self) -> Path:
        # A mail log file, as the Postfix instance writes one (maillog_file there too).
        lines = ["[main]", f"queue_directory = {self.spool}", f"maillog_file = {self.workdir / 'maillog'}"]
        if self.workers:
            lines.append(f"worker_processes = {self.workers}")
        if self.relay_port is None:
            # As the Postfix instance: accepted mail goes on hold, so that the
            # accept path (smtpd, cleanup, fsync) is measured without deliveries.
            lines += [f"mydestination = {BENCH_DOMAIN}",
                      "smtpd_recipient_restrictions = check_recipient_access "
                      f"inline:{{ {BENCH_DOMAIN}=HOLD }}, permit_mynetworks, reject_unauth_destination"]
        else:
            # The benchmark domain must not be local, or nothing is relayed.
            lines += ["mydestination = localhost",
                      f"relayhost = [127.0.0.1]:{self.relay_port}"]
            if self.relay_tls:  # as the Postfix instance: TLS required, TLS connections reused
                lines += ["smtp_tls_security_level = encrypt", "smtp_tls_connection_reuse = yes"]
        if self.tls is not None:
            # Postfix's names, as in the Postfix instance's main.cf.
            lines += ["smtpd_tls_security_level = may", f"smtpd_tls_cert_file = {self.tls[0]}",
                      f"smtpd_tls_key_file = {self.tls[1]}"]
        lines += ["", "[listener:smtp]",
                  f"endpoint = tcp:port={self.port}:interface=127.0.0.1", ""]
        ini = self.workdir / "mta.ini"
        ini.write_text("\n".join(lines))
        return ini

    def logTail(self, lines: int = 15) -> str:
        try:
            return tail(self.logfile.read_text(errors="replace"), lines)
        except OSError:
            return ""

    def lastLine(self) -> str:
        lines = [l.strip() for l in self.logTail(50).splitlines() if l.strip()]
        return lines[-1] if lines else "(no output)"

    def argv(self, ini: Path) -> list[str]:
        """The command that runs mta (bench/policy.py runs it in a mount namespace of its own)."""
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "mta", "-c", str(ini)]

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ini = self.writeConfig()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.root)
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave no __pycache__ in the repo
        # This is twistd (what the twistd script runs), with this Python.
        # Not "python -m twisted": that is twist(1), which knows neither -n
        # nor --pidfile (it always runs in the foreground, without a pidfile).
        argv = self.argv(ini)
        log(f"mta: starting on 127.0.0.1:{self.port}: {' '.join(argv)} (cwd {self.workdir})")
        with open(self.logfile, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=self.workdir, env=env,
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            greeting = waitForGreeting("127.0.0.1", self.port, self.start_timeout,
                                       alive=lambda: self.proc.poll() is None)
        except RuntimeError:
            rc = self.proc.poll()
            hint = " (--tls: does this mta have server TLS, the smtpd_tls_* parameters?)" if self.tls else ""
            raise BenchFailure(f"mta exited (rc={rc}) before answering SMTP: {self.lastLine()}{hint}",
                               self.logTail()) from None
        except TimeoutError as e:
            raise BenchFailure(f"mta does not answer SMTP: {e}", self.logTail()) from None
        log(f"mta: {greeting}")

    def stop(self) -> None:
        if self.proc is not None:
            stopProcessGroup(self.proc)
            self.proc = None

    def queueCount(self) -> int:
        return sum(countRegularFiles(self.spool / q) for q in MTA_QUEUES
                   if (self.spool / q).is_dir())

    def cpuSeconds(self) -> float | None:
        """CPU of the twistd process (and any children it has)."""
        return treeCpuSeconds(self.proc.pid if self.proc else None)


class PostfixServer:
    """The private Postfix instance, with the same start/stop/queueCount shape."""

    name = "postfix"

    def __init__(self, workdir: Path, port: int, relay_port: int | None,
                 start_timeout: float, keep: bool, tls: tuple[Path, Path] | None = None,
                 relay_tls: bool = False):
        self.tls = tls
        self.relay_tls = relay_tls
        self.workdir = workdir
        self.port = port
        self.relay_port = relay_port
        self.start_timeout = start_timeout
        self.keep = keep
        self.instance: PostfixInstance | None = None

    def makeInstance(self) -> PostfixInstance:
        """The private instance (bench/growth.py and bench/scale.py give theirs)."""
        return PostfixInstance(self.port, self.relay_port, keep=self.keep, parent_dir=str(self.workdir),
                               tls=tuple(map(str, self.tls)) if self.tls else None, relay_tls=self.relay_tls)

    def start(self) -> None:
        try:
            self.instance = self.makeInstance()
            log(f"postfix: starting private instance on 127.0.0.1:{self.port}")
            self.instance.start(timeout=self.start_timeout)
        except PostfixError as e:
            first, _, rest = str(e).partition("\n")
            raise BenchFailure(f"private Postfix did not start: {first}", rest or None) from None
        for w in self.instance.warnings:
            log(f"postfix: {w}")
        log(f"postfix: running in {self.instance.base}")

    def stop(self) -> None:
        if self.instance is not None:
            try:
                self.instance.stop()
            except PostfixError as e:
                log(f"postfix: {e}")
            self.instance = None

    def queueCount(self) -> int:
        return self.instance.queueCount()

    def postqueueCount(self) -> int:
        return self.instance.postqueueCount()

    def cpuSeconds(self) -> float | None:
        """CPU of the master and all its descendants (smtpd, cleanup, qmgr, tlsmgr, ...)."""
        return treeCpuSeconds(self.instance.masterPid() if self.instance else None)


class SmtpSink:
    """smtp-sink on 127.0.0.1:port; counts the messages it has received.

    With -c smtp-sink writes "sess=N quit=N mesg=N\\r" to stdout after every
    session, QUIT and "."; a reader thread keeps the last mesg value.
    """

    def __init__(self, port: int, start_timeout: float):
        self.port = port
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.count = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        argv = [findProgram("smtp-sink"), "-c", "-h", "bench-sink.example"]
        if os.geteuid() == 0:
            argv += ["-u", "postfix"]  # required when started as root
        argv += [f"127.0.0.1:{self.port}", "256"]
        log(f"sink: starting {' '.join(argv)}")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        try:
            waitForGreeting("127.0.0.1", self.port, self.start_timeout,
                            alive=lambda: self.proc.poll() is None)
        except (RuntimeError, TimeoutError) as e:
            self.stop()
            raise BenchFailure(f"smtp-sink did not start: {e}") from None
        # The probe connection counts as a session, not as a message.

    def _read(self) -> None:
        buf = b""
        pattern = re.compile(rb"mesg=(\d+)")
        while True:
            data = self.proc.stdout.read1(4096) if self.proc else b""
            if not data:
                return
            buf = (buf + data)[-4096:]
            matches = pattern.findall(buf)
            if matches:
                self.count = int(matches[-1])

    def waitFor(self, target: int, timeout: float, stall: float) -> int:
        """Wait until the sink has target messages; return the count (loads.waitForCount)."""
        return waitForCount(self, target, timeout, stall, "smtp-sink")

    def stop(self) -> None:
        if self.proc is not None:
            stopProcessGroup(self.proc, grace=5)
            if self._thread is not None:
                self._thread.join(5)
            self.proc.stdout.close()
            self.proc = None


# -- benchmarks -----------------------------------------------------------------

def _fail(result: Result, e: BenchFailure) -> None:
    result.error = str(e)
    result.detail = e.detail
    log(f"{result.name}: FAILED: {e}")
    if e.detail:
        log(f"{result.name}: its output (last lines):\n{e.detail}")


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]  # the lower median: a real round


def _summarise(result: Result, rounds: list[dict], count_key: str) -> None:
    """Median round -> result figures; verified only if every round was."""
    ordered = sorted(rounds, key=lambda r: r["seconds"])
    median = ordered[(len(ordered) - 1) // 2]  # the lower median: a real round
    result.rounds = rounds
    result.seconds = median["seconds"]
    result.rate = result.messages / median["seconds"]
    setattr(result, count_key, median["count"])
    result.accept_seconds = median.get("accept_seconds")
    result.connections = median.get("connections")
    result.out = median.get("out")
    cpu = [r["cpu_ms_per_message"] for r in rounds if r.get("cpu_ms_per_message") is not None]
    result.cpu_ms_per_message = _median(cpu) if len(cpu) == len(rounds) else None
    machine = [r["machine_ms_per_message"] for r in rounds if r.get("machine_ms_per_message") is not None]
    result.machine_ms_per_message = _median(machine) if len(machine) == len(rounds) else None
    result.verified = all(r["count"] == result.messages for r in rounds)
    result.ok = True


class Entry:
    """One server under test in a run: the server, its sink (relay), result and rounds."""

    def __init__(self, server, sink, messages: int):
        self.server, self.sink = server, sink
        self.result = Result(server.name, messages)
        self.rounds: list[dict] = []

    def stop(self) -> None:
        self.server.stop()
        if self.sink is not None:
            self.sink.stop()


def prepare(entry: Entry, args) -> None:
    """Start the server (and its sink), check STARTTLS (--tls), run the untimed warm-up."""
    server = entry.server
    if entry.sink is not None:
        entry.sink.start()
    server.start()
    if args.tls:
        try:
            offered, keywords = offersStarttls(server.port)
        except OSError as e:
            raise BenchFailure(f"{server.name}: EHLO probe failed: {e}") from None
        if not offered:
            raise BenchFailure(f"{server.name} does not offer STARTTLS (EHLO: {keywords}); "
                               f"--tls needs its server TLS with smtpd_tls_security_level = may")
    log(f"{server.name}: warm-up, {args.warmup} messages")
    warm = runLoad(server, args.warmup, args, "warm-up")
    if warm.get("tls"):
        entry.result.tls = warm["tls"]
    if entry.sink is not None:
        got = entry.sink.waitFor(args.warmup, args.drain_timeout, args.stall_timeout)
        if got < args.warmup:
            raise BenchFailure(f"{server.name} accepted {args.warmup} warm-up messages but relayed "
                               f"{got} to the sink (nothing new for {args.stall_timeout:.0f}s, "
                               f"or over {args.drain_timeout:.0f}s)")


def _cpuPerMessage(before, after, messages):
    if before is None or after is None:
        return None
    return (after - before) * 1000.0 / messages


def machineBusySeconds() -> float | None:
    """
    CPU seconds the whole machine has been busy (every CPU, every process and
    kernel thread: /proc/stat's first line without idle and iowait).  The
    server's own CPU misses work the kernel does for it in its own threads
    (syncfs's writeback runs in kworker threads, an fsync's in the caller);
    the machine's figure counts that too, and the load generator and the
    sink, alike for both servers.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle, iowait
    busy = sum(values[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is in user)
    return busy / os.sysconf("SC_CLK_TCK")


def acceptRound(entry: Entry, args, i: int, load=None) -> dict:
    """One timed accept run; C{load(server, messages, args)} sends it (default runLoad)."""
    server, result = entry.server, entry.result
    before = stableCount(server.queueCount)
    log(f"{server.name}: {before} messages in the queue; timed run "
        f"{i + 1}/{args.rounds}, {args.messages} messages")
    os.sync()  # start every timed run with no dirty data of anyone
    cpu0, machine0 = server.cpuSeconds(), machineBusySeconds()
    load = (load or runLoad)(server, args.messages, args)
    seconds = load["seconds"]
    # Every 250 came after the queue file was committed, so the count
    # is normally complete at once; allow a little time for renames.
    deadline = time.monotonic() + 10
    queued = stableCount(server.queueCount) - before
    while queued < args.messages and time.monotonic() < deadline:
        time.sleep(0.2)
        queued = stableCount(server.queueCount) - before
    cpu = _cpuPerMessage(cpu0, server.cpuSeconds(), args.messages)
    machine = _cpuPerMessage(machine0, machineBusySeconds(), args.messages)
    if queued != args.messages:
        result.notes.append(f"run {i + 1}: expected {args.messages} new messages "
                            f"in the queue, found {queued}")
    if isinstance(server, PostfixServer):
        pq = server.postqueueCount()
        if pq != before + queued:
            result.notes.append(f"run {i + 1}: postqueue -p counts {pq}, "
                                f"the queue directories {before + queued}")
            queued = -1
    cpuText = f", CPU {cpu:.2f} ms/message" if cpu is not None else ""
    log(f"{server.name}: {args.messages} messages in {seconds:.3f}s, "
        f"{args.messages / seconds:.1f}/s, {queued} new in the queue{cpuText}")
    return {"seconds": seconds, "rate": args.messages / seconds, "count": queued,
            "cpu_ms_per_message": cpu, "machine_ms_per_message": machine, "connections": load.get("connections")}


def relayRound(entry: Entry, args, i: int) -> dict:
    server, sink, result = entry.server, entry.sink, entry.result
    base = sink.count
    seen = sink.snapshot() if hasattr(sink, "snapshot") else None
    log(f"{server.name}: timed run {i + 1}/{args.rounds}, {args.messages} messages")
    os.sync()
    cpu0, machine0 = server.cpuSeconds(), machineBusySeconds()
    t0 = time.monotonic()
    load = runLoad(server, args.messages, args)
    accept = load["seconds"]
    got = sink.waitFor(base + args.messages, args.drain_timeout, args.stall_timeout)
    seconds = time.monotonic() - t0
    cpu = _cpuPerMessage(cpu0, server.cpuSeconds(), args.messages)
    machine = _cpuPerMessage(machine0, machineBusySeconds(), args.messages)
    delivered = got - base
    if delivered < args.messages:
        raise BenchFailure(f"{server.name} relayed {delivered} of {args.messages} "
                           f"messages to the sink (no progress for "
                           f"{args.stall_timeout:.0f}s, or over {args.drain_timeout:.0f}s)")
    time.sleep(0.2)  # a duplicate delivery would show up now
    if sink.count - base != args.messages:
        delivered = sink.count - base
        result.notes.append(f"run {i + 1}: the sink received {delivered} messages, "
                            f"expected {args.messages}")
    cpuText = f", CPU {cpu:.2f} ms/message" if cpu is not None else ""
    log(f"{server.name}: {args.messages} messages relayed in {seconds:.3f}s "
        f"({args.messages / seconds:.1f}/s; the client done after {accept:.3f}s{cpuText})")
    out = None
    if seen is not None:  # --relay-tls: what the sink saw of this run
        now = sink.snapshot()
        out = {k: now[k] - seen[k] for k in ("conn", "tls", "resumed")}
        log(f"{server.name}: to the sink: {out['conn']} connections, {out['tls']} TLS handshakes "
            f"({out['resumed']} resumed) for {delivered} messages")
    return {"seconds": seconds, "rate": args.messages / seconds, "count": delivered,
            "accept_seconds": accept, "cpu_ms_per_message": cpu, "machine_ms_per_message": machine,
            "connections": load.get("connections"),
            "out": out}


def benchmark(entries: list[Entry], args, timed=None) -> dict[str, Result]:
    """Start and warm up every server, then alternate them over args.rounds timed runs.

    All servers run for the whole benchmark (each on its own port, idle
    while another is measured), so that round i of one and round i of the
    other are close in time and drift of the machine hits both alike.
    C{timed(entry, args, i)} is one timed run (default: acceptRound or
    relayRound, as args.command says).
    """
    if timed is None:
        timed = acceptRound if args.command == "accept" else relayRound
    live = []
    try:
        for entry in entries:
            try:
                prepare(entry, args)
                live.append(entry)
            except BenchFailure as e:
                _fail(entry.result, e)
                entry.stop()
        for i in range(args.rounds):
            for entry in list(live):
                try:
                    entry.rounds.append(timed(entry, args, i))
                except BenchFailure as e:
                    _fail(entry.result, e)
                    entry.stop()
                    live.remove(entry)
        for entry in live:
            _summarise(entry.result, entry.rounds, "queued" if args.command == "accept" else "delivered")
    finally:
        for entry in entries:
            entry.stop()
    if args.command == "relay":
        for entry in live:
            if entry.server.name == "mta":
                reuse = connectionReuse(entry.server.workdir / "maillog")
                if reuse:
                    entry.result.notes.append(reuse)
    return {entry.result.name: entry.result for entry in entries}


def connectionReuse(logfile: Path) -> str | None:
    """Messages per outgoing connection, from mta's log (conn_use=N marks a reused one)."""
    try:
        text = logfile.read_text(errors="replace")
    except OSError:
        return None
    sent = len(re.findall(r"status=sent", text))
    reused = len(re.findall(r"conn_use=\d+", text))
    if not sent:
        return None
    connections = sent - reused
    return (f"connection reuse: {sent} deliveries over {connections} connections "
            f"({sent / max(connections, 1):.1f} messages per connection, warm-up included)")


# -- main -------------------------------------------------------------------------

def parseArgs(argv):
    p = argparse.ArgumentParser(prog="bench/run.py",
                                description="Benchmark mta against a private Postfix, side by side.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("accept", "SMTP accept rate: messages queued per second"),
                       ("relay", "end-to-end rate: messages relayed to smtp-sink per second")):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("--messages", "-m", type=int, default=2000, help="timed messages (default 2000)")
        s.add_argument("--sessions", "-s", type=int, default=20, help="parallel SMTP sessions (default 20)")
        s.add_argument("--size", "-l", type=int, default=2048, help="message body bytes (default 2048)")
        s.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=False,
                       help="send many messages per connection (smtp-source -d); "
                            "default: a new connection per message")
        s.add_argument("--tls", action="store_true",
                       help="send over STARTTLS with bench/tlsload.py (both servers: "
                            "smtpd_tls_security_level = may, the same certificate made at run time)")
        if name == "relay":
            s.add_argument("--relay-tls", action="store_true",
                           help="outbound TLS: relay over STARTTLS to bench/tlssink.py (encrypt; "
                                "Postfix with smtp_tls_connection_reuse = yes)")
        s.add_argument("--tls-key", choices=("rsa", "ecdsa"), default="rsa",
                       help="--tls: the certificate's key, RSA 2048 or ECDSA P-256 (default rsa)")
        s.add_argument("--rounds", type=int, default=1,
                       help="timed runs per server, alternating between the servers; "
                            "the table shows the median (default 1)")
        s.add_argument("--warmup", type=int, default=None,
                       help="untimed warm-up messages (default: N/10, 20..200)")
        s.add_argument("--timeout", type=float, default=600.0,
                       help="time limit of one smtp-source or tlsload run, seconds (default 600)")
        s.add_argument("--start-timeout", type=float, default=30.0,
                       help="time a server gets to answer SMTP after start (default 30)")
        s.add_argument("--drain-timeout", type=float, default=300.0,
                       help="relay: time for the sink to receive everything (default 300)")
        s.add_argument("--stall-timeout", type=float, default=30.0,
                       help="relay: give up when the sink gets nothing new for this long (default 30)")
        s.add_argument("--mta-workers", type=int, default=0,
                       help="mta's worker_processes (default 0: one process)")
        s.add_argument("--skip-mta", action="store_true", help="run Postfix only")
        s.add_argument("--skip-postfix", action="store_true", help="run mta only")
        s.add_argument("--mta-root", type=Path, default=REPO_ROOT,
                       help="the checkout whose mta is run (PYTHONPATH; default: this one)")
        s.add_argument("--keep", action="store_true",
                       help="keep the temporary directories (configuration, queues, logs)")
        s.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    if not (args.mta_root / "mta" / "__init__.py").is_file():  # else Python would run the installed mta
        p.error(f"--mta-root {args.mta_root}: no mta package there (mta/__init__.py)")
    args.relay_tls = getattr(args, "relay_tls", False)
    if args.messages < 1 or args.sessions < 1 or args.rounds < 1 or args.size < 0:
        p.error("--messages, --sessions and --rounds must be positive, --size not negative")
    if args.warmup is None:
        args.warmup = max(20, min(200, args.messages // 10))
    if args.warmup < 1:
        p.error("--warmup must be positive")
    return args


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    args = parseArgs(argv)
    # Ctrl-C raises KeyboardInterrupt even if SIGINT came in ignored (as in
    # a background job of a non-interactive shell); TERM and HUP exit via
    # SystemExit; either way the finally blocks stop what was started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    try:
        if not args.tls:
            findProgram("smtp-source")
        if args.command == "relay" and not args.relay_tls:
            findProgram("smtp-sink")
    except PostfixError as e:
        log(str(e))
        return 1
    rundir = Path(tempfile.mkdtemp(prefix="mta-bench-"))
    os.chmod(rundir, 0o755)  # the postfix user must reach the instance below it
    results: dict[str, Result] = {}
    log(f"{describe(args)}; work directory {rundir}")
    try:
        args.tls_files = makeCertificate(rundir / "tls", args.tls_key) if args.tls or args.relay_tls else None
        inbound = args.tls_files if args.tls else None
        names = [n for n, skip in (("mta", args.skip_mta), ("postfix", args.skip_postfix)) if not skip]
        ports = freePorts(2 * len(names))  # distinct: the servers run side by side
        entries = []
        for i, name in enumerate(names):
            port, relay_port = ports[2 * i], ports[2 * i + 1]
            sink = None
            if args.relay_tls:
                sink = TlsSink(relay_port, args.start_timeout, *args.tls_files)
            elif args.command == "relay":
                sink = SmtpSink(relay_port, args.start_timeout)
            else:
                relay_port = None
            if name == "mta":
                server = MtaServer(rundir / "mta", port, relay_port, args.start_timeout,
                                   args.mta_root.resolve(), tls=inbound, relay_tls=args.relay_tls,
                                   workers=args.mta_workers)
            else:
                server = PostfixServer(rundir, port, relay_port, args.start_timeout, args.keep,
                                       tls=inbound, relay_tls=args.relay_tls)
            entries.append(Entry(server, sink, args.messages))
        results = benchmark(entries, args)
    except KeyboardInterrupt:
        log("interrupted; everything started has been stopped")
        return 130
    finally:
        if args.keep:
            log(f"kept {rundir}")
        else:
            shutil.rmtree(rundir, ignore_errors=True)
    if args.json:
        printJson(args, results)
    else:
        printTable(args, results)
    return 0 if results and all(r.ok and r.verified for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
