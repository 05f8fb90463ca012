"""Side-by-side benchmarks of mta and a private Postfix, in one run.

    python bench/run.py accept [--messages N] [--sessions 20] [--size 2048]
                               [--reuse | --no-reuse] [--json]
    python bench/run.py relay  [same options]

accept   Postfix's smtp-source sends N messages to mta, then to a private
         Postfix instance (bench/postfix_instance.py), one after the other,
         over loopback.  The time is the wall time of smtp-source; afterwards
         the harness checks that N new messages are in each server's queue.
relay    The same load, but each server relays everything to a local
         smtp-sink; the time runs from the start of smtp-source until the
         sink has received all N messages.

Each run starts with a short warm-up (not timed).  The table gives
messages, seconds and messages/s per server and the line
``ratio mta/postfix = X.XX`` (above 1: mta is faster).  --json prints the
figures as JSON instead.  Progress and diagnostics go to stderr.

Everything listens on and connects to 127.0.0.1 only, on free ports picked
at run time.  Every process the harness starts is stopped at the end, on
error and on Ctrl-C too; every wait is bounded.  Must run as root (a
Postfix master needs it); bench/setup.sh installs Postfix.

Exit status: 0 when every server ran and the counts were verified, 1 when
something failed (the table says what), 2 on a usage error, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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

from postfix_instance import (  # noqa: E402
    BENCH_DOMAIN, PostfixError, PostfixInstance, countRegularFiles, findProgram,
    tail, waitForGreeting)

REPO_ROOT = Path(__file__).resolve().parent.parent
SENDER = f"sender@{BENCH_DOMAIN}"
RECIPIENT = f"rcpt@{BENCH_DOMAIN}"
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


class BenchFailure(Exception):
    """One server's run failed: a one-line reason for the table, and detail."""

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail


@dataclasses.dataclass
class Result:
    name: str
    messages: int
    ok: bool = False
    seconds: float | None = None
    rate: float | None = None
    queued: int | None = None          # accept: new messages found in the queue
    delivered: int | None = None       # relay: messages the sink received
    accept_seconds: float | None = None  # relay: time until smtp-source finished
    verified: bool = False
    error: str | None = None
    detail: str | None = None           # e.g. the last lines of mta's output
    notes: list[str] = dataclasses.field(default_factory=list)
    rounds: list[dict] = dataclasses.field(default_factory=list)  # every timed run


# -- processes ----------------------------------------------------------------

def stopProcessGroup(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """Stop a child started with start_new_session=True, and its group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:  # stragglers in the group (or the child itself, if it ignored TERM)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def runSmtpSource(port: int, messages: int, sessions: int, size: int, reuse: bool,
                  timeout: float, phase: str = "timed run") -> float:
    """Send messages with smtp-source; return its wall time in seconds.

    smtp-source's -m is the total over all sessions.  By default it opens a
    new connection for every message (MAIL/RCPT/DATA/QUIT); -d keeps the
    connection and sends the next message over it.
    """
    argv = [findProgram("smtp-source"),
            "-s", str(min(sessions, messages)), "-m", str(messages), "-l", str(size),
            "-f", SENDER, "-t", RECIPIENT, "-M", "bench-client.example"]
    if reuse:
        argv.append("-d")
    argv.append(f"127.0.0.1:{port}")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stopProcessGroup(proc, grace=2)
        raise BenchFailure(f"{phase}: smtp-source did not finish {messages} messages "
                           f"within {timeout:.0f}s") from None
    except BaseException:
        stopProcessGroup(proc, grace=2)
        raise
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        text = out.decode("utf-8", "replace")
        lines = [l for l in text.splitlines() if l.strip()]
        raise BenchFailure(f"{phase}: smtp-source failed (rc={proc.returncode}): "
                           f"{lines[-1] if lines else 'no output'}", tail(text, 10) or None)
    return seconds


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
                 start_timeout: float, root: Path = REPO_ROOT):
        self.root = root
        self.workdir = workdir
        self.port = port
        self.relay_port = relay_port
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.logfile = workdir / "twistd.log"
        self.spool = workdir / "spool"

    def writeConfig(self) -> Path:
        lines = ["[main]", f"queue_directory = {self.spool}"]
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

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ini = self.writeConfig()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.root)
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # leave no __pycache__ in the repo
        # This is twistd (what the twistd script runs), with this Python.
        # Not "python -m twisted": that is twist(1), which knows neither -n
        # nor --pidfile (it always runs in the foreground, without a pidfile).
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "mta", "-c", str(ini)]
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
            raise BenchFailure(f"mta exited (rc={rc}) before answering SMTP: {self.lastLine()}",
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


class PostfixServer:
    """The private Postfix instance, with the same start/stop/queueCount shape."""

    name = "postfix"

    def __init__(self, workdir: Path, port: int, relay_port: int | None,
                 start_timeout: float, keep: bool):
        self.workdir = workdir
        self.port = port
        self.relay_port = relay_port
        self.start_timeout = start_timeout
        self.keep = keep
        self.instance: PostfixInstance | None = None

    def start(self) -> None:
        try:
            self.instance = PostfixInstance(self.port, self.relay_port, keep=self.keep,
                                            parent_dir=str(self.workdir))
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
        """Wait until the sink has target messages; return the count.

        Gives up after timeout seconds, or after stall seconds without a
        new message (a server that does not relay at all is seen quickly).
        """
        now = time.monotonic()
        deadline = now + timeout
        last, lastChange = self.count, now
        while self.count < target and now < deadline:
            if self.proc.poll() is not None:
                raise BenchFailure(f"smtp-sink exited (rc={self.proc.returncode})")
            time.sleep(0.02)
            now = time.monotonic()
            if self.count != last:
                last, lastChange = self.count, now
            elif now - lastChange > stall:
                break
        return self.count

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


def _summarise(result: Result, rounds: list[dict], count_key: str) -> None:
    """Median round -> result figures; verified only if every round was."""
    ordered = sorted(rounds, key=lambda r: r["seconds"])
    median = ordered[(len(ordered) - 1) // 2]  # the lower median: a real round
    result.rounds = rounds
    result.seconds = median["seconds"]
    result.rate = result.messages / median["seconds"]
    setattr(result, count_key, median["count"])
    result.accept_seconds = median.get("accept_seconds")
    result.verified = all(r["count"] == result.messages for r in rounds)
    result.ok = True


def benchAccept(server, args) -> Result:
    """Warm up, then time args.rounds runs of N messages; verify the queue."""
    result = Result(server.name, args.messages)
    rounds = []
    try:
        server.start()
        log(f"{server.name}: warm-up, {args.warmup} messages")
        runSmtpSource(server.port, args.warmup, args.sessions, args.size, args.reuse,
                      args.timeout, "warm-up")
        for i in range(args.rounds):
            before = stableCount(server.queueCount)
            log(f"{server.name}: {before} messages in the queue; timed run "
                f"{i + 1}/{args.rounds}, {args.messages} messages")
            os.sync()  # start every timed run with no dirty data of anyone
            seconds = runSmtpSource(server.port, args.messages, args.sessions, args.size,
                                    args.reuse, args.timeout)
            # Every 250 came after the queue file was committed, so the count
            # is normally complete at once; allow a little time for renames.
            deadline = time.monotonic() + 10
            queued = stableCount(server.queueCount) - before
            while queued < args.messages and time.monotonic() < deadline:
                time.sleep(0.2)
                queued = stableCount(server.queueCount) - before
            if queued != args.messages:
                result.notes.append(f"run {i + 1}: expected {args.messages} new messages "
                                    f"in the queue, found {queued}")
            if isinstance(server, PostfixServer):
                pq = server.postqueueCount()
                if pq != before + queued:
                    result.notes.append(f"run {i + 1}: postqueue -p counts {pq}, "
                                        f"the queue directories {before + queued}")
                    queued = -1
            rounds.append({"seconds": seconds, "rate": args.messages / seconds, "count": queued})
            log(f"{server.name}: {args.messages} messages in {seconds:.3f}s, "
                f"{args.messages / seconds:.1f}/s, {queued} new in the queue")
        _summarise(result, rounds, "queued")
    except BenchFailure as e:
        _fail(result, e)
    finally:
        server.stop()
    return result


def benchRelay(server, sink: SmtpSink, args) -> Result:
    """Warm up, then time args.rounds runs of N messages through to the sink."""
    result = Result(server.name, args.messages)
    rounds = []
    try:
        sink.start()
        server.start()
        log(f"{server.name}: warm-up, {args.warmup} messages")
        runSmtpSource(server.port, args.warmup, args.sessions, args.size, args.reuse,
                      args.timeout, "warm-up")
        got = sink.waitFor(args.warmup, args.drain_timeout, args.stall_timeout)
        if got < args.warmup:
            raise BenchFailure(f"{server.name} accepted {args.warmup} warm-up messages but relayed "
                               f"{got} to the sink (nothing new for {args.stall_timeout:.0f}s, "
                               f"or over {args.drain_timeout:.0f}s)")
        for i in range(args.rounds):
            base = sink.count
            log(f"{server.name}: timed run {i + 1}/{args.rounds}, {args.messages} messages")
            os.sync()
            t0 = time.monotonic()
            accept = runSmtpSource(server.port, args.messages, args.sessions, args.size,
                                   args.reuse, args.timeout)
            got = sink.waitFor(base + args.messages, args.drain_timeout, args.stall_timeout)
            seconds = time.monotonic() - t0
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
            rounds.append({"seconds": seconds, "rate": args.messages / seconds,
                           "count": delivered, "accept_seconds": accept})
            log(f"{server.name}: {args.messages} messages relayed in {seconds:.3f}s "
                f"({args.messages / seconds:.1f}/s; smtp-source done after {accept:.3f}s)")
        _summarise(result, rounds, "delivered")
        if server.name == "mta":
            reuse = connectionReuse(server.logfile)
            if reuse:
                result.notes.append(reuse)
    except BenchFailure as e:
        _fail(result, e)
    finally:
        server.stop()
        sink.stop()
    return result


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


# -- output ---------------------------------------------------------------------

def ratio(results: dict[str, Result]) -> float | None:
    mta, pf = results.get("mta"), results.get("postfix")
    if mta and pf and mta.ok and pf.ok and mta.rate and pf.rate:
        return mta.rate / pf.rate
    return None


def describe(args) -> str:
    how = "connections reused (-d)" if args.reuse else "one connection per message"
    what = "accepted and queued" if args.command == "accept" else "relayed to smtp-sink"
    rounds = f", median of {args.rounds} timed runs" if args.rounds > 1 else ""
    return (f"{args.command}: {args.messages} messages of {args.size} bytes {what}, "
            f"{args.sessions} parallel sessions, {how}{rounds}")


def printTable(args, results: dict[str, Result]) -> None:
    count = "queued" if args.command == "accept" else "delivered"
    print(describe(args))
    print(f"{'':10}{'messages':>10}{'seconds':>10}{'messages/s':>12}{count:>11}")
    for r in results.values():
        if not r.ok:
            first, *rest = (r.error or "failed").splitlines()
            print(f"{r.name:10}{'-':>10}{'-':>10}{'-':>12}{'-':>11}  FAILED: {first}")
            for line in rest:
                print(f"{'':12}{line}")
            continue
        n = r.queued if args.command == "accept" else r.delivered
        mark = "ok" if r.verified else "NOT VERIFIED"
        print(f"{r.name:10}{r.messages:>10}{r.seconds:>10.3f}{r.rate:>12.1f}{n:>11}  {mark}")
        if len(r.rounds) > 1:
            print(f"{'':12}messages/s per run: " + " ".join(f"{x['rate']:.1f}" for x in r.rounds))
        for note in r.notes:
            print(f"{'':12}{note}")
    x = ratio(results)
    print(f"ratio mta/postfix = {x:.2f}" if x is not None else "ratio mta/postfix = n/a")


def printJson(args, results: dict[str, Result]) -> None:
    doc = {
        "benchmark": args.command,
        "messages": args.messages,
        "sessions": args.sessions,
        "size": args.size,
        "reuse": args.reuse,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "results": {name: dataclasses.asdict(r) for name, r in results.items()},
        "ratio": ratio(results),
    }
    print(json.dumps(doc, indent=2))


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
        s.add_argument("--rounds", type=int, default=1,
                       help="timed runs per server; the table shows the median (default 1)")
        s.add_argument("--warmup", type=int, default=None,
                       help="untimed warm-up messages (default: N/10, 20..200)")
        s.add_argument("--timeout", type=float, default=600.0,
                       help="time limit of one smtp-source run, seconds (default 600)")
        s.add_argument("--start-timeout", type=float, default=30.0,
                       help="time a server gets to answer SMTP after start (default 30)")
        s.add_argument("--drain-timeout", type=float, default=300.0,
                       help="relay: time for the sink to receive everything (default 300)")
        s.add_argument("--stall-timeout", type=float, default=30.0,
                       help="relay: give up when the sink gets nothing new for this long (default 30)")
        s.add_argument("--skip-mta", action="store_true", help="run Postfix only")
        s.add_argument("--skip-postfix", action="store_true", help="run mta only")
        s.add_argument("--mta-root", type=Path, default=REPO_ROOT,
                       help="the checkout whose mta is run (PYTHONPATH; default: this one)")
        s.add_argument("--keep", action="store_true",
                       help="keep the temporary directories (configuration, queues, logs)")
        s.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
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
        findProgram("smtp-source")
        if args.command == "relay":
            findProgram("smtp-sink")
    except PostfixError as e:
        log(str(e))
        return 1
    rundir = Path(tempfile.mkdtemp(prefix="mta-bench-"))
    os.chmod(rundir, 0o755)  # the postfix user must reach the instance below it
    results: dict[str, Result] = {}
    log(f"{describe(args)}; work directory {rundir}")
    try:
        names = [n for n, skip in (("mta", args.skip_mta), ("postfix", args.skip_postfix)) if not skip]
        for name in names:
            port, relay_port = freePorts(2)
            sink = None
            if args.command == "relay":
                sink = SmtpSink(relay_port, args.start_timeout)
            else:
                relay_port = None
            if name == "mta":
                server = MtaServer(rundir / "mta", port, relay_port, args.start_timeout,
                                   args.mta_root.resolve())
            else:
                server = PostfixServer(rundir, port, relay_port, args.start_timeout, args.keep)
            if args.command == "accept":
                results[name] = benchAccept(server, args)
            else:
                results[name] = benchRelay(server, sink, args)
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
