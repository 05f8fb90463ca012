"""Side-by-side benchmarks of mta and a private Postfix, in one run.

    python bench/run.py accept [--messages N] [--sessions 20] [--size 2048]
                               [--reuse | --no-reuse] [--tls [--tls-key rsa|ecdsa]]
                               [--rounds R] [--json]
    python bench/run.py relay  [same options]

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
TLS_NAME = "bench-tls.example"  # the certificate's name; tlsload verifies it (--tls)
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
    cpu_ms_per_message: float | None = None  # the server's CPU (utime+stime) per message, median
    connections: int | None = None       # --tls: connections of the median run (handshakes)
    tls: dict | None = None              # --tls: version and cipher the client saw


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


CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def treeCpuSeconds(root: int | None) -> float | None:
    """utime+stime+cutime+cstime of process root and all its descendants (/proc), seconds.

    cutime/cstime hold the CPU of children that have exited and been
    reaped (a Postfix smtpd that ended after max_use), so a difference of
    two readings counts every process of the tree that ran in between.
    """
    if root is None:
        return None
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read().decode("latin-1")
        except OSError:
            continue
        fields = data[data.rindex(")") + 2:].split()
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    if root not in ticks:
        return None
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(children.get(pid, ()))
    return total / CLOCK_TICK


def makeCertificate(directory: Path, kind: str) -> tuple[Path, Path]:
    """A self-signed certificate for TLS_NAME and its key (rsa 2048 or ecdsa P-256): (cert, key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa"
           else ec.generate_private_key(ec.SECP256R1()))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TLS_NAME)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(TLS_NAME)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(mode=0o755, exist_ok=True)
    certPath, keyPath = directory / f"{kind}-cert.pem", directory / f"{kind}-key.pem"
    certPath.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(keyPath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return certPath, keyPath


def offersStarttls(port: int, timeout: float = 10.0) -> tuple[bool, str]:
    """Does 127.0.0.1:port list STARTTLS in its EHLO reply?  (answer, the EHLO keywords)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        f = s.makefile("rb")

        def reply():
            lines = []
            while True:
                line = f.readline(4096).decode("latin-1").rstrip("\r\n")
                lines.append(line)
                if len(line) < 4 or line[3] != "-":
                    return lines

        reply()
        s.sendall(b"EHLO bench-probe.example\r\n")
        keywords = [l[4:].split()[0].upper() for l in reply()[1:] if len(l) > 4]
        s.sendall(b"QUIT\r\n")
        return "STARTTLS" in keywords, " ".join(keywords)


def runTlsLoad(port: int, messages: int, sessions: int, size: int, reuse: bool,
               timeout: float, cafile: Path, phase: str = "timed run") -> dict:
    """Send messages over STARTTLS with bench/tlsload.py; its JSON result (seconds: wall time)."""
    argv = [sys.executable, str(Path(__file__).resolve().parent / "tlsload.py"), "--json",
            "-m", str(messages), "-s", str(min(sessions, messages)), "-l", str(size),
            "--cafile", str(cafile), "--servername", TLS_NAME]
    if reuse:
        argv.append("--reuse")
    argv.append(f"127.0.0.1:{port}")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, errText = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stopProcessGroup(proc, grace=2)
        raise BenchFailure(f"{phase}: tlsload did not finish {messages} messages "
                           f"within {timeout:.0f}s") from None
    except BaseException:
        stopProcessGroup(proc, grace=2)
        raise
    try:
        result = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        text = errText.decode("utf-8", "replace")
        raise BenchFailure(f"{phase}: tlsload failed (rc={proc.returncode}): "
                           f"{text.strip().splitlines()[-1] if text.strip() else 'no output'}") from None
    if result["failed"] or result["ok"] != messages:
        raise BenchFailure(f"{phase}: {result['failed']} of {messages} messages failed over TLS: "
                           f"{result['errors'][0] if result['errors'] else '?'}",
                           "\n".join(result["errors"]) or None)
    return result


def runLoad(server, messages: int, args, phase: str = "timed run") -> dict:
    """The load of one run, smtp-source or (--tls) tlsload: {"seconds": wall time, ...}."""
    if args.tls:
        return runTlsLoad(server.port, messages, args.sessions, args.size, args.reuse,
                          args.timeout, args.tls_files[0], phase)
    return {"seconds": runSmtpSource(server.port, messages, args.sessions, args.size, args.reuse,
                                     args.timeout, phase)}


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
                 start_timeout: float, root: Path = REPO_ROOT, tls: tuple[Path, Path] | None = None):
        self.root = root
        self.tls = tls
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
                 start_timeout: float, keep: bool, tls: tuple[Path, Path] | None = None):
        self.tls = tls
        self.workdir = workdir
        self.port = port
        self.relay_port = relay_port
        self.start_timeout = start_timeout
        self.keep = keep
        self.instance: PostfixInstance | None = None

    def start(self) -> None:
        try:
            self.instance = PostfixInstance(self.port, self.relay_port, keep=self.keep,
                                            parent_dir=str(self.workdir),
                                            tls=tuple(map(str, self.tls)) if self.tls else None)
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
    cpu = [r["cpu_ms_per_message"] for r in rounds if r.get("cpu_ms_per_message") is not None]
    result.cpu_ms_per_message = _median(cpu) if len(cpu) == len(rounds) else None
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


def acceptRound(entry: Entry, args, i: int) -> dict:
    server, result = entry.server, entry.result
    before = stableCount(server.queueCount)
    log(f"{server.name}: {before} messages in the queue; timed run "
        f"{i + 1}/{args.rounds}, {args.messages} messages")
    os.sync()  # start every timed run with no dirty data of anyone
    cpu0 = server.cpuSeconds()
    load = runLoad(server, args.messages, args)
    seconds = load["seconds"]
    # Every 250 came after the queue file was committed, so the count
    # is normally complete at once; allow a little time for renames.
    deadline = time.monotonic() + 10
    queued = stableCount(server.queueCount) - before
    while queued < args.messages and time.monotonic() < deadline:
        time.sleep(0.2)
        queued = stableCount(server.queueCount) - before
    cpu = _cpuPerMessage(cpu0, server.cpuSeconds(), args.messages)
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
            "cpu_ms_per_message": cpu, "connections": load.get("connections")}


def relayRound(entry: Entry, args, i: int) -> dict:
    server, sink, result = entry.server, entry.sink, entry.result
    base = sink.count
    log(f"{server.name}: timed run {i + 1}/{args.rounds}, {args.messages} messages")
    os.sync()
    cpu0 = server.cpuSeconds()
    t0 = time.monotonic()
    load = runLoad(server, args.messages, args)
    accept = load["seconds"]
    got = sink.waitFor(base + args.messages, args.drain_timeout, args.stall_timeout)
    seconds = time.monotonic() - t0
    cpu = _cpuPerMessage(cpu0, server.cpuSeconds(), args.messages)
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
    return {"seconds": seconds, "rate": args.messages / seconds, "count": delivered,
            "accept_seconds": accept, "cpu_ms_per_message": cpu, "connections": load.get("connections")}


def benchmark(entries: list[Entry], args) -> dict[str, Result]:
    """Start and warm up every server, then alternate them over args.rounds timed runs.

    All servers run for the whole benchmark (each on its own port, idle
    while another is measured), so that round i of one and round i of the
    other are close in time and drift of the machine hits both alike.
    """
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
                reuse = connectionReuse(entry.server.logfile)
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


# -- output ---------------------------------------------------------------------

def ratio(results: dict[str, Result]) -> float | None:
    mta, pf = results.get("mta"), results.get("postfix")
    if mta and pf and mta.ok and pf.ok and mta.rate and pf.rate:
        return mta.rate / pf.rate
    return None


def cpuRatio(results: dict[str, Result]) -> float | None:
    mta, pf = results.get("mta"), results.get("postfix")
    if mta and pf and mta.ok and pf.ok and mta.cpu_ms_per_message and pf.cpu_ms_per_message:
        return mta.cpu_ms_per_message / pf.cpu_ms_per_message
    return None


def describe(args) -> str:
    if args.tls:
        how = ("STARTTLS, connections reused (one handshake per session)" if args.reuse
               else "STARTTLS, one connection and one TLS handshake per message")
        how += f", {'RSA 2048' if args.tls_key == 'rsa' else 'ECDSA P-256'} certificate, bench/tlsload.py"
    else:
        how = "connections reused (-d)" if args.reuse else "one connection per message"
    what = "accepted and queued" if args.command == "accept" else "relayed to smtp-sink"
    rounds = f", median of {args.rounds} alternating timed runs" if args.rounds > 1 else ""
    return (f"{args.command}: {args.messages} messages of {args.size} bytes {what}, "
            f"{args.sessions} parallel sessions, {how}{rounds}")


def printTable(args, results: dict[str, Result]) -> None:
    count = "queued" if args.command == "accept" else "delivered"
    print(describe(args))
    print(f"{'':10}{'messages':>10}{'seconds':>10}{'messages/s':>12}{count:>11}{'CPU ms/msg':>12}")
    for r in results.values():
        if not r.ok:
            first, *rest = (r.error or "failed").splitlines()
            print(f"{r.name:10}{'-':>10}{'-':>10}{'-':>12}{'-':>11}{'-':>12}  FAILED: {first}")
            for line in rest:
                print(f"{'':12}{line}")
            continue
        n = r.queued if args.command == "accept" else r.delivered
        mark = "ok" if r.verified else "NOT VERIFIED"
        cpu = f"{r.cpu_ms_per_message:.2f}" if r.cpu_ms_per_message is not None else "n/a"
        print(f"{r.name:10}{r.messages:>10}{r.seconds:>10.3f}{r.rate:>12.1f}{n:>11}{cpu:>12}  {mark}")
        if len(r.rounds) > 1:
            print(f"{'':12}messages/s per run: " + " ".join(f"{x['rate']:.1f}" for x in r.rounds))
            if all(x.get("cpu_ms_per_message") is not None for x in r.rounds):
                print(f"{'':12}CPU ms/message per run: "
                      + " ".join(f"{x['cpu_ms_per_message']:.2f}" for x in r.rounds))
        if r.tls:
            per = (f"{r.connections} connections (handshakes) for {r.messages} messages"
                   if r.connections is not None else "")
            print(f"{'':12}{r.tls['version']} {r.tls['cipher']}{'; ' + per if per else ''}")
        for note in r.notes:
            print(f"{'':12}{note}")
    x = ratio(results)
    print(f"ratio mta/postfix = {x:.2f}" if x is not None else "ratio mta/postfix = n/a")
    c = cpuRatio(results)
    if c is not None:
        print(f"CPU per message mta/postfix = {c:.2f}")


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
        "tls": args.tls_key if args.tls else None,
        "ratio": ratio(results),
        "cpu_ratio": cpuRatio(results),
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
        s.add_argument("--tls", action="store_true",
                       help="send over STARTTLS with bench/tlsload.py (both servers: "
                            "smtpd_tls_security_level = may, the same certificate made at run time)")
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
        if not args.tls:
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
        args.tls_files = makeCertificate(rundir / "tls", args.tls_key) if args.tls else None
        names = [n for n, skip in (("mta", args.skip_mta), ("postfix", args.skip_postfix)) if not skip]
        ports = freePorts(2 * len(names))  # distinct: the servers run side by side
        entries = []
        for i, name in enumerate(names):
            port, relay_port = ports[2 * i], ports[2 * i + 1]
            sink = None
            if args.command == "relay":
                sink = SmtpSink(relay_port, args.start_timeout)
            else:
                relay_port = None
            if name == "mta":
                server = MtaServer(rundir / "mta", port, relay_port, args.start_timeout,
                                   args.mta_root.resolve(), tls=args.tls_files)
            else:
                server = PostfixServer(rundir, port, relay_port, args.start_timeout, args.keep,
                                       tls=args.tls_files)
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
