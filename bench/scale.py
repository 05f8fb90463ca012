"""Scale figures (issue 12): many idle sessions, a big message, a big deferred queue.

    python3 bench/scale.py idle       [--sessions 10000] [--messages 500] [--workers W]
                                      [--sources K] [--skip-mta] [--skip-postfix]
    python3 bench/scale.py bigmessage [--size-mb 50] [--workers W] [--skip-mta] [--skip-postfix]
    python3 bench/scale.py deferred   [--deferred 100000] [--messages 2000] [--workers W]
                                      [--run-delay SECONDS] [--no-baseline]

idle        mta (twistd, as bench/run.py's MtaServer, mail to bench.example on
            HOLD) with smtpd_client_connection_count_limit = 0, smtpd_timeout =
            1800s and a listen backlog of 4096 in its endpoint (--backlog); the harness opens
            --sessions SMTP sessions (an asyncio client in this process, from
            127.0.0.1 or --sources K addresses 127.0.0.2..), each reads the 220
            banner and then stays silent.  While they are open, smtp-source sends
            --messages messages (20 sessions, 2048 bytes); the same load is sent
            once before the idle sessions are opened, for comparison.  Memory is
            the sum over the server's processes (mta: twistd and its worker
            processes; Postfix: every process of the private instance) of VmRSS
            and of Pss (/proc/PID/smaps_rollup: shared pages divided among the
            processes that share them), at start, before, with the N sessions
            idle, after the messages, and after the sessions are closed.  Postfix
            gets default_process_limit = N + 50 (one smtpd per session) and the
            same smtpd_timeout and connection count limit.  The harness stops
            opening sessions when the machine's MemAvailable falls under
            --min-available-mb (4096): Postfix needs about 1.2 MiB per session.
bigmessage  a --size-mb (50) MiB message of 76-character lines sent with smtplib
            to the server, which relays it to smtp-sink (relayhost =
            [127.0.0.1]:PORT, message_size_limit = size + 10 MiB); after a
            warm-up message (so that the delivery code is loaded), the RSS sum of
            the server's processes is sampled every 50 ms; the peak over the
            baseline is given for the receive phase (from DATA to the 250 reply)
            and for the relay phase (from the 250 until smtp-sink has the
            message).  smtp-sink dumps the message (-d) and the harness checks
            every body line.
deferred    --deferred (100000) queue files written into deferred/ (next attempt
            in an hour, as bench/queuebench.py deferred writes them), then mta is
            started on that queue; the time until SMTP answers, the RSS then,
            after the first deferred scan and at the end, and the accept rate of
            smtp-source (--messages 2000, 20 sessions, mail on HOLD) started as
            soon as SMTP answers.  The scan is timed by watching the daemon's
            open file descriptors (/proc/PID/fd) every 10 ms: mta keeps the
            deferred directory open from the first batch of a scan to the last
            (mta.queue.files.DirectoryScan), so the first and last sighting of
            that descriptor bound the scan; the messages committed during the
            scan (files in hold/) give the accept rate during it.  With
            --run-delay the daemon scans every SECONDS (queue_run_delay), so that
            the whole load runs under repeated scans.  Unless --no-baseline, the
            same is run first on an empty queue.  mta only (see bench/README.md,
            "Scale").

--workers W sets mta's worker_processes (0: one process).  Everything listens on
and connects to 127.0.0.1 (and 127.0.0.2.. with --sources); every process the
harness starts is stopped at the end; every wait is bounded; the temporary
directory is removed unless --keep.  Run as root (Postfix needs it, and so does
raising RLIMIT_NOFILE for 10,000 sessions).  Exit status: 0 when every check
passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import pwd
import re
import resource
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ left in bench/
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loads import BenchFailure, processTree, runSmtpSource
from postfix_instance import (
    PostfixInstance,
    countRegularFiles,
    findProgram,
    waitForGreeting,
)
from run import REPO_ROOT, MtaServer, PostfixServer, SmtpSink, freePorts, stableCount

MiB = 1 << 20


def log(message: str) -> None:
    print(f"scale: {message}", file=sys.stderr, flush=True)


def mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / MiB:.1f}"


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# -- processes and their memory ---------------------------------------------------

def descendants(root: int) -> list[int]:
    """root and every process below it (loads.processTree)."""
    return [pid for pid, _ in processTree(root)] or [root]


def vmRss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def vmHwm(pid: int) -> int:
    """The process's peak RSS (since its start or the last resetPeak)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def resetPeak(pids: list[int]) -> None:
    """Reset the processes' peak RSS (VmHWM) to their current RSS (clear_refs 5; root)."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Memory:
    """A reading of a server's processes: count, VmRSS sum, Pss sum (bytes)."""

    def __init__(self, pids: list[int], withPss: bool = True):
        self.processes = len(pids)
        self.each = [vmRss(p) for p in pids]  # in the order of pids: for mta, the master first
        self.rss = sum(self.each)
        self.pss = sum(pss(p) for p in pids) if withPss else None

    def __str__(self):
        return f"{self.processes} processes, RSS {mib(self.rss)} MiB, PSS {mib(self.pss)} MiB"


class Sampler(threading.Thread):
    """The RSS sum of pids() every interval seconds, as (monotonic time, bytes)."""

    def __init__(self, pids, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pidsOf, self.interval = pids, interval
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            now = time.monotonic()
            # The processes are found again every time: Postfix starts an smtp(8) for a relay.
            self.samples.append((now, sum(vmRss(p) for p in self.pidsOf())))
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(5)

    def peak(self, start: float, end: float) -> int | None:
        values = [v for t, v in self.samples if start <= t <= end]
        return max(values) if values else None


def raiseFileLimit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE to wanted (root may raise the hard limit too); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- servers ------------------------------------------------------------------------

class ScaleMta(MtaServer):
    """bench/run.py's MtaServer with more [main] lines and (optionally) a listen backlog."""

    def __init__(self, *args, extra: tuple[str, ...] = (), backlog: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra, self.backlog = extra, backlog

    def writeConfig(self) -> Path:
        ini = super().writeConfig()
        text = ini.read_text().replace("[main]\n", "[main]\n" + "".join(f"{l}\n" for l in self.extra), 1)
        if self.backlog:
            text = re.sub(r"(endpoint = tcp:port=\d+:interface=127\.0\.0\.1)", rf"\1:backlog={self.backlog}", text)
        ini.write_text(text)
        return ini

    def pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.proc is not None and self.proc.poll() is None else []

    def memory(self, withPss=True) -> Memory:
        return Memory(self.pids(), withPss)


class ScalePostfixInstance(PostfixInstance):
    """The private Postfix instance with more main.cf lines."""

    def __init__(self, *args, extra: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.extra = extra

    def create(self) -> None:
        super().create()
        with open(self.config_dir / "main.cf", "a") as f:
            f.write("\n# bench/scale.py\n" + "".join(f"{l}\n" for l in self.extra))


class ScalePostfix(PostfixServer):
    def __init__(self, *args, extra: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.extra = extra

    def makeInstance(self) -> ScalePostfixInstance:
        log(f"postfix: main.cf gets {'; '.join(self.extra)}")
        return ScalePostfixInstance(self.port, self.relay_port, keep=self.keep, parent_dir=str(self.workdir),
                                    extra=self.extra)

    def pids(self) -> list[int]:
        return self.instance.processes() if self.instance is not None else []

    def memory(self, withPss=True) -> Memory:
        return Memory(self.pids(), withPss)


class DumpingSink(SmtpSink):
    """smtp-sink -c that also dumps each transaction into directory (-d)."""

    def __init__(self, port: int, start_timeout: float, directory: Path):
        super().__init__(port, start_timeout)
        self.directory = directory

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [findProgram("smtp-sink"), "-c", "-h", "bench-sink.example", "-d", f"{self.directory}/msg."]
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postfix")
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
            argv += ["-u", "postfix"]
        argv += [f"127.0.0.1:{self.port}", "16"]
        log(f"sink: starting {' '.join(argv)}")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        try:
            waitForGreeting("127.0.0.1", self.port, self.start_timeout, alive=lambda: self.proc.poll() is None)
        except (RuntimeError, TimeoutError) as e:
            self.stop()
            raise BenchFailure(f"smtp-sink did not start: {e}") from None


# -- idle sessions --------------------------------------------------------------------

class IdleSessions:
    """N SMTP sessions that read the 220 banner and then stay silent (asyncio, in a thread)."""

    def __init__(self, port: int, count: int, sources: int, concurrency: int = 100, timeout: float = 120.0,
                 minAvailable: int = 0):
        self.port, self.count, self.sources = port, count, sources
        self.minAvailable = minAvailable  # stop opening sessions when MemAvailable falls below this
        self.memoryGuard = False
        self.concurrency, self.timeout = concurrency, timeout
        self.transports: list[asyncio.Transport] = []
        self.failed = 0
        self.firstError: str | None = None
        self.lost = 0  # sessions the server closed (after their banner)
        self.unsolicited: list[bytes] = []  # what the server sent after the banner (a 421, say)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def _memoryLow(self) -> bool:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 < self.minAvailable
        return False

    def _source(self, i: int) -> tuple[str, int] | None:
        if self.sources <= 1:
            return None
        return (f"127.0.0.{2 + i % self.sources}", 0)

    async def _openOne(self, i: int, gate: asyncio.Semaphore):
        owner = self

        class Idle(asyncio.Protocol):
            def __init__(self):
                self.buffer = b""
                self.banner = asyncio.get_running_loop().create_future()

            def data_received(self, data):
                if self.banner.done():
                    owner.unsolicited.append(data[:200])
                    return
                self.buffer += data
                if b"\n" in self.buffer:
                    self.banner.set_result(self.buffer)

            def connection_lost(self, exc):
                if self.banner.done():
                    owner.lost += 1
                else:
                    self.banner.set_exception(ConnectionError(f"closed before the banner ({exc})"))

        async with gate:
            if self.memoryGuard or (i % 50 == 0 and self._memoryLow()):
                if not self.memoryGuard:
                    self.firstError = self.firstError or f"session {i}: MemAvailable under the guard; stopped opening"
                self.memoryGuard = True
                self.failed += 1
                return
            try:
                transport, protocol = await asyncio.wait_for(
                    self.loop.create_connection(Idle, "127.0.0.1", self.port, local_addr=self._source(i)), 60)
                banner = await asyncio.wait_for(protocol.banner, 60)
                if not banner.startswith(b"220"):
                    transport.close()
                    raise ConnectionError(f"banner {banner[:80]!r}")
                self.transports.append(transport)
            except (OSError, ConnectionError) as e:
                self.failed += 1
                if self.firstError is None:
                    self.firstError = f"session {i}: {type(e).__name__}: {e}"

    async def _openAll(self):
        gate = asyncio.Semaphore(self.concurrency)
        await asyncio.gather(*(self._openOne(i, gate) for i in range(self.count)))

    def open(self) -> float:
        """Open them all (bounded by timeout); the seconds it took."""
        t0 = time.monotonic()
        future = asyncio.run_coroutine_threadsafe(self._openAll(), self.loop)
        try:
            future.result(self.timeout)
        except TimeoutError:
            future.cancel()
            raise BenchFailure(f"opening {self.count} sessions took over {self.timeout:.0f}s "
                               f"({len(self.transports)} open)") from None
        return time.monotonic() - t0

    def close(self):
        async def closeAll():
            for t in self.transports:
                t.abort()
            self.transports = []

        try:
            asyncio.run_coroutine_threadsafe(closeAll(), self.loop).result(60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


def idleRun(server, args, result: dict) -> None:
    """One server through the idle scenario; figures into result."""
    server.start()
    result["start"] = server.memory()
    log(f"{server.name}: at start: {result['start']}")
    runSmtpSource(server.port, 50, 10, args.size, False, args.timeout, "warm-up")
    queued = stableCount(server.queueCount)
    seconds = runSmtpSource(server.port, args.messages, args.parallel, args.size, False, args.timeout, "without idle sessions")
    result["rate_alone"] = args.messages / seconds
    time.sleep(1)
    result["before"] = server.memory()
    log(f"{server.name}: {args.messages} messages without idle sessions: {result['rate_alone']:.1f}/s; "
        f"before: {result['before']}; load {loadavg()}")
    sessions = IdleSessions(server.port, args.sessions, args.sources, timeout=args.open_timeout,
                            minAvailable=args.min_available_mb * MiB)
    try:
        result["open_seconds"] = sessions.open()
        result["opened"], result["failed"] = len(sessions.transports), sessions.failed
        if sessions.firstError:
            log(f"{server.name}: {sessions.failed} sessions failed; the first: {sessions.firstError}")
        time.sleep(2)
        result["idle"] = server.memory()
        log(f"{server.name}: {result['opened']} idle sessions open in {result['open_seconds']:.1f}s: "
            f"{result['idle']}; load {loadavg()}")
        seconds = runSmtpSource(server.port, args.messages, args.parallel, args.size, False, args.timeout,
                                "with idle sessions")
        result["rate_idle"] = args.messages / seconds
        result["queued"] = stableCount(server.queueCount) - queued
        time.sleep(1)
        result["idle_after"] = server.memory()
        result["lost"] = sessions.lost
        result["unsolicited"] = sessions.unsolicited[:3]
        result["load"] = loadavg()
        log(f"{server.name}: {args.messages} messages with {result['opened']} idle sessions: "
            f"{result['rate_idle']:.1f}/s; {result['idle_after']}; {sessions.lost} sessions closed by the server")
    finally:
        sessions.close()
    time.sleep(3)
    result["after"] = server.memory()
    log(f"{server.name}: idle sessions closed: {result['after']}")
    time.sleep(15)
    result["settled"] = server.memory()
    log(f"{server.name}: 15s later: {result['settled']}")
    result["ok"] = (result["opened"] == args.sessions and result["lost"] == 0
                    and result["queued"] == 2 * args.messages)


def benchIdle(args, workdir: Path) -> int:
    limit = raiseFileLimit(args.sessions + 1000)
    log(f"RLIMIT_NOFILE {limit} (this process and, inherited, the servers)")
    if limit < args.sessions + 500:
        raise BenchFailure(f"RLIMIT_NOFILE is {limit}: too low for {args.sessions} sessions")
    rows = []
    if not args.skip_mta:
        port, = freePorts(1)
        mta = ScaleMta(workdir / "mta", port, None, args.start_timeout, workers=args.workers,
                       extra=("smtpd_client_connection_count_limit = 0", "smtpd_timeout = 1800s"),
                       backlog=args.backlog)
        rows.append((f"mta (worker_processes = {args.workers})", mta, {}))
    if not args.skip_postfix:
        port, = freePorts(1)
        postfix = ScalePostfix(workdir, port, None, args.start_timeout, args.keep,
                               extra=(f"default_process_limit = {args.sessions + 50}",
                                      "smtpd_client_connection_count_limit = 0", "smtpd_timeout = 1800s"))
        rows.append(("postfix", postfix, {}))
    ok = True
    for name, server, result in rows:
        try:
            idleRun(server, args, result)
        except BenchFailure as e:
            result["error"] = str(e)
            log(f"{name}: FAILED: {e}" + (f"\n{e.detail}" if e.detail else ""))
        finally:
            server.stop()
        ok = ok and result.get("ok", False)
    print(f"idle: {args.sessions} SMTP sessions idle after the banner, from {max(1, args.sources)} address(es); "
          f"{args.messages} messages of {args.size} bytes by smtp-source ({args.parallel} sessions) "
          f"before and while they are open; memory summed over the server's processes, MiB")
    print(f"{'':34} {'procs':>6} {'RSS':>8} {'PSS':>8}")
    for name, server, result in rows:
        print(name)
        if "error" in result and "idle" not in result:
            print(f"    FAILED: {result['error']}")
        for key, label in (("start", "at start"), ("before", "before (warm)"), ("idle", f"{args.sessions} idle"),
                           ("idle_after", f"{args.sessions} idle + {args.messages} msgs"),
                           ("after", "sessions closed"), ("settled", "15 s later")):
            m = result.get(key)
            if m is not None:
                print(f"    {label:30} {m.processes:>6} {mib(m.rss):>8} {mib(m.pss):>8}")
        if "opened" in result:
            print(f"    opened {result['opened']} of {args.sessions} in {result['open_seconds']:.1f}s "
                  f"({result['failed']} failed), {result.get('lost', '?')} closed by the server")
        if "rate_idle" in result:
            print(f"    accept rate: {result['rate_alone']:.1f}/s alone, {result['rate_idle']:.1f}/s with "
                  f"{result['opened']} idle sessions; {result['queued']} of {2 * args.messages} queued")
            idle = result["idle"]
            perSession = (idle.rss - result["before"].rss) / max(1, result["opened"])
            perPss = (idle.pss - result["before"].pss) / max(1, result["opened"])
            print(f"    per idle session: {perSession / 1024:.1f} KiB RSS, {perPss / 1024:.1f} KiB PSS; "
                  f"{'under' if idle.rss < 1 << 30 else 'OVER'} 1 GiB RSS")
            if 1 < idle.processes <= 8:
                print(f"    RSS per process with the sessions idle (master first), MiB: "
                      f"{' '.join(mib(r) for r in idle.each)} (before: {' '.join(mib(r) for r in result['before'].each)})")
        if "error" in result and "idle" in result:
            print(f"    FAILED: {result['error']}")
        print(f"    load average at the end: {result.get('load', loadavg())}")
    return 0 if ok else 1


# -- a big message -----------------------------------------------------------------------

def bigMessage(size: int) -> tuple[bytes, int, str]:
    """(message, body lines, sha256 of the body lines) of about size bytes, 76-character lines."""
    filler = (b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ" * 2)
    count = size // 78
    lines = [b"%09d " % i + filler[:66] for i in range(count)]
    body = b"\r\n".join(lines) + b"\r\n"
    head = (b"From: sender@bench.example\r\nTo: rcpt@bench.example\r\n"
            b"Subject: bench/scale.py big message\r\nMessage-ID: <big." + str(time.time()).encode()
            + b"@bench.example>\r\n\r\n")
    return head + body, count, hashlib.sha256(b"\n".join(lines)).hexdigest()


def checkDump(directory: Path, lines: int, digest: str) -> str | None:
    """None if one dump in directory holds the body; else what is wrong."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.stat().st_size > 1000)
    if not files:
        return "smtp-sink dumped no big message"
    data = files[-1].read_bytes().replace(b"\r\n", b"\n")
    pattern = re.compile(rb"^\d{9} [a-zA-Z0-9]{66}$", re.MULTILINE)
    found = [m.group(0) for m in pattern.finditer(data)]
    if len(found) != lines:
        return f"the dump holds {len(found)} body lines, not {lines}"
    if hashlib.sha256(b"\n".join(found)).hexdigest() != digest:
        return "the dumped body lines differ from those sent"
    return None


def bigRun(server, sink: DumpingSink, args, result: dict) -> None:
    sink.start()
    server.start()
    size = args.size_mb * MiB
    message, lines, digest = bigMessage(size)
    # Warm-up: one small message end to end, so that the delivery code is loaded before the baseline.
    with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as s:
        s.sendmail("sender@bench.example", ["rcpt@bench.example"],
                   b"Subject: warm-up\r\n\r\n" + b"warm-up line of text\r\n" * 500)
    if sink.waitFor(1, 60, 30) < 1:
        raise BenchFailure(f"{server.name} did not relay the warm-up message")
    for p in list(sink.directory.iterdir()):
        p.unlink()
    time.sleep(2)
    baseline = server.memory()
    result["baseline"] = baseline
    log(f"{server.name}: baseline {baseline}; sending {len(message)} bytes; load {loadavg()}")
    sampler = Sampler(lambda: server.pids())
    sampler.start()
    try:
        t0 = time.monotonic()
        with smtplib.SMTP("127.0.0.1", server.port, timeout=args.timeout) as s:
            s.ehlo("bench-client.example")
            s.mail("sender@bench.example", [f"SIZE={len(message)}"] if s.has_extn("size") else [])
            s.rcpt("rcpt@bench.example")
            pids = server.pids()
            resetPeak(pids)
            tData = time.monotonic()
            code, reply = s.data(message)
            t250 = time.monotonic()
            # The peak RSS of each process during the receive (an upper bound of the sum's peak),
            # and reset for the relay.
            hwm = {p: vmHwm(p) for p in server.pids()}
            resetPeak(server.pids())
        if code != 250:
            raise BenchFailure(f"{server.name} answered {code} {reply!r} to the big message")
        got = sink.waitFor(2, args.timeout, args.timeout)
        tSink = time.monotonic()
        result["receive_hwm"] = sum(hwm.values())
        result["receive_hwm_detail"] = hwm
        result["relay_hwm"] = sum(vmHwm(p) for p in server.pids())
        time.sleep(2)
        tEnd = time.monotonic()
    finally:
        sampler.stop()
    if got < 2:
        raise BenchFailure(f"{server.name} accepted the big message but smtp-sink did not get it")
    result["receive_seconds"], result["relay_seconds"] = t250 - tData, tSink - t250
    result["receive_peak"] = sampler.peak(t0, t250)
    result["relay_peak"] = sampler.peak(t250, tSink)
    result["after"] = sampler.peak(tSink + 1.5, tEnd)
    result["samples"] = len(sampler.samples)
    result["message_bytes"] = len(message)
    result["check"] = checkDump(sink.directory, lines, digest)
    result["load"] = loadavg()
    result["ok"] = result["check"] is None and max(result["receive_peak"] or 0, result["receive_hwm"]) - baseline.rss \
        < 20 * MiB and max(result["relay_peak"] or 0, result["relay_hwm"]) - baseline.rss < 20 * MiB
    log(f"{server.name}: receive {result['receive_seconds']:.1f}s peak {mib(result['receive_peak'])} MiB, "
        f"relay {result['relay_seconds']:.1f}s peak {mib(result['relay_peak'])} MiB; "
        f"check: {result['check'] or 'all body lines arrived'}")


def benchBig(args, workdir: Path) -> int:
    limit = args.size_mb * MiB + 10 * MiB
    rows = []
    if not args.skip_mta:
        sinkPort, port = freePorts(2)
        mta = ScaleMta(workdir / "mta", port, sinkPort, args.start_timeout, workers=args.workers,
                       extra=(f"message_size_limit = {limit}", f"virtual_mailbox_limit = {limit}"))
        rows.append((f"mta (worker_processes = {args.workers})", mta,
                     DumpingSink(sinkPort, args.start_timeout, workdir / "sink-mta"), {}))
    if not args.skip_postfix:
        sinkPort, port = freePorts(2)
        postfix = ScalePostfix(workdir, port, sinkPort, args.start_timeout, args.keep,
                               extra=(f"message_size_limit = {limit}",))
        rows.append(("postfix", postfix, DumpingSink(sinkPort, args.start_timeout, workdir / "sink-postfix"), {}))
    ok = True
    for name, server, sink, result in rows:
        try:
            bigRun(server, sink, args, result)
        except BenchFailure as e:
            result["error"] = str(e)
            log(f"{name}: FAILED: {e}" + (f"\n{e.detail}" if e.detail else ""))
        finally:
            server.stop()
            sink.stop()
        ok = ok and result.get("ok", False)
    print(f"bigmessage: one message of {args.size_mb} MiB (76-character lines) by smtplib, relayed to smtp-sink; "
          f"RSS summed over the server's processes every 50 ms, MiB (growth over the baseline after a warm-up)")
    print(f"{'':34} {'baseline':>9} {'receive':>9} {'growth':>8} {'relay':>9} {'growth':>8} {'after':>8}  seconds")
    for name, server, sink, result in rows:
        if "receive_peak" not in result:
            print(f"{name:34} FAILED: {result.get('error')}")
            continue
        b = result["baseline"].rss

        def growth(peak, b=b):  # None: no 50 ms sample fell into a phase that short (VmHWM below covers it)
            return None if peak is None else peak - b

        print(f"{name:34} {mib(b):>9} {mib(result['receive_peak']):>9} {mib(growth(result['receive_peak'])):>8} "
              f"{mib(result['relay_peak']):>9} {mib(growth(result['relay_peak'])):>8} {mib(result['after']):>8}"
              f"  {result['receive_seconds']:.1f} + {result['relay_seconds']:.1f}")
        print(f"{'':34} peak RSS (VmHWM) summed: receive {mib(result['receive_hwm'])} "
              f"(+{mib(result['receive_hwm'] - b)}), relay {mib(result['relay_hwm'])} (+{mib(result['relay_hwm'] - b)})")
        print(f"{'':34} sink: {result['check'] or 'every body line arrived'}; {result['samples']} samples; "
              f"under 20 MiB growth: {'yes' if result['ok'] else 'NO'}; load {result['load']}")
    return 0 if ok else 1


# -- a big deferred queue --------------------------------------------------------------

def writeDeferred(spool: Path, count: int) -> float:
    """count queue files in spool/deferred, next attempt in an hour (as bench/queuebench.py's); seconds taken."""
    sys.path.insert(0, str(REPO_ROOT))
    from mta.model import Envelope, Recipient
    from mta.queue.fileformat import dumpQueueFile
    from mta.queue.queueid import newQueueId
    from mta.queue.store import QueueStore

    store = QueueStore(str(spool), reactor=None)
    store.prepare()
    deferred = Path(store.queuePath("deferred"))
    content = b"Subject: deferred\r\n\r\n" + b"x" * 2000 + b"\r\n"
    later = time.time() + 3600
    t0 = time.monotonic()
    for i in range(count):
        envelope = Envelope(sender="sender@bench.example", recipients=(Recipient(f"r{i}@far.example"),),
                            arrival_time=time.time(), size=len(content))
        path = deferred / newQueueId()
        path.write_bytes(dumpQueueFile(envelope, content))
        os.utime(path, (later, later))
    return time.monotonic() - t0


class ScanWatch(threading.Thread):
    """Watches the daemon's descriptors for its deferred/ directory: the scans' (start, end) times."""

    def __init__(self, server, directory: Path, countNew, interval: float = 0.01):
        super().__init__(daemon=True)
        self.server, self.directory, self.countNew, self.interval = server, str(directory), countNew, interval
        self.scans: list[list] = []  # [start, end, new mail at start, at end, Memory at end]
        self._halt = threading.Event()

    def _open(self, pids) -> bool:
        for pid in pids:
            try:
                fds = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == self.directory:
                        return True
                except OSError:
                    pass
        return False

    def run(self):
        scanning, refreshed, pids = False, 0.0, []
        while not self._halt.is_set():
            now = time.monotonic()
            if now - refreshed > 0.5:
                pids, refreshed = self.server.pids(), now
            seen = self._open(pids)
            if seen and not scanning:
                self.scans.append([now, None, self.countNew(), None, None])
            elif scanning and not seen:
                self.scans[-1][1] = now
                self.scans[-1][3] = self.countNew()
                self.scans[-1][4] = self.server.memory()
            scanning = seen
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(5)


def deferredRun(args, workdir: Path, deferredCount: int, result: dict) -> None:
    port, = freePorts(1)
    extra = ["smtpd_client_connection_count_limit = 0"]
    if args.run_delay:
        extra.append(f"queue_run_delay = {args.run_delay}s")
    server = ScaleMta(workdir, port, None, args.start_timeout, workers=args.workers, extra=tuple(extra))
    spool = server.spool
    if deferredCount:
        log(f"writing {deferredCount} deferred queue files")
        result["write_seconds"] = writeDeferred(spool, deferredCount)
        t = time.monotonic()
        try:
            subprocess.run(["sync"], check=False, timeout=600)
        except subprocess.TimeoutExpired:
            log("sync did not finish within 600s (going on)")
        log(f"wrote them in {result['write_seconds']:.1f}s, sync took {time.monotonic() - t:.1f}s")

    def countNew():
        return sum(countRegularFiles(spool / q) for q in ("incoming", "active", "hold") if (spool / q).is_dir())

    watch = ScanWatch(server, spool / "deferred", countNew)
    try:
        t0 = time.monotonic()
        watchStarted = False
        # The daemon's pid exists only once start() has spawned it; start the watch from a thread
        # that waits for it, so that it sees a scan that begins before SMTP answers.

        def startWatch():
            nonlocal watchStarted
            deadline = time.monotonic() + args.start_timeout
            while server.proc is None and time.monotonic() < deadline:
                time.sleep(0.005)
            watch.start()
            watchStarted = True

        starter = threading.Thread(target=startWatch, daemon=True)
        starter.start()
        server.start()
        result["ready_seconds"] = time.monotonic() - t0
        result["ready"] = server.memory()
        log(f"deferred={deferredCount}: SMTP answers after {result['ready_seconds']:.2f}s: {result['ready']}")
        tLoad = time.monotonic()
        seconds = runSmtpSource(server.port, args.messages, args.parallel, args.size, False, args.timeout, "accept")
        tDone = time.monotonic()
        result["rate"] = args.messages / seconds
        result["load_start"] = tLoad - t0
        result["load_seconds"] = seconds
        result["queued"] = stableCount(countNew)
        # Wait (bounded) for the first scan to end if it has not.
        deadline = time.monotonic() + 120
        while deferredCount and time.monotonic() < deadline and (not watch.scans or watch.scans[0][1] is None):
            time.sleep(0.05)
        result["end"] = server.memory()
        result["scans"] = [(s[0] - t0, None if s[1] is None else s[1] - t0, s[2], s[3], s[4]) for s in watch.scans]
        result["load_window"] = (tLoad - t0, tDone - t0)
        result["left"] = countRegularFiles(spool / "deferred") if deferredCount else 0
        result["loadavg"] = loadavg()
    finally:
        try:
            if watchStarted:
                watch.stop()
        finally:
            server.stop()
    first = result["scans"][0] if result["scans"] else None
    result["ok"] = result["queued"] == args.messages and result["left"] == deferredCount and \
        (not deferredCount or bool(first and first[1] is not None))


def benchDeferred(args, workdir: Path) -> int:
    counts = ([0] if not args.no_baseline else []) + [args.deferred]
    results = []
    ok = True
    for n in counts:
        result = {"deferred": n}
        sub = workdir / f"deferred-{n}"
        sub.mkdir()
        try:
            deferredRun(args, sub, n, result)
        except BenchFailure as e:
            result["error"] = str(e)
            log(f"deferred={n}: FAILED: {e}" + (f"\n{e.detail}" if e.detail else ""))
        finally:
            if not args.keep:
                shutil.rmtree(sub, ignore_errors=True)
        results.append(result)
        ok = ok and result.get("ok", False)
    delay = f"queue_run_delay = {args.run_delay:g}s" if args.run_delay else "queue_run_delay = 300s (default)"
    print(f"deferred: mta (worker_processes = {args.workers}) started on a queue of N deferred messages (none due); "
          f"smtp-source sends {args.messages} messages (on HOLD, {args.parallel} sessions) as soon as SMTP answers; "
          f"{delay}; memory summed over mta's processes, MiB")
    print(f"{'N':>8} {'ready s':>8} {'RSS':>7} {'PSS':>7} {'scanned':>8} {'RSS end':>8} {'msgs/s':>7}  scans (start-end "
          f"s after start, new mail committed meanwhile)")
    for r in results:
        if "rate" not in r:
            print(f"{r['deferred']:>8} FAILED: {r.get('error')}")
            continue
        scans = []
        loadStart, loadEnd = r["load_window"]
        for start, end, before, after, _ in r["scans"][:4]:
            if end is None:
                scans.append(f"{start:.2f}-(still running)")
                continue
            # The rate while the scan and the load overlap (smtp-source starts once SMTP answers).
            overlap = min(end, loadEnd) - max(start, loadStart)
            during = after - before
            rate = f"{during / overlap:.0f}/s" if overlap > 0.05 else "no overlap with the load"
            scans.append(f"{start:.2f}-{end:.2f} ({end - start:.2f}s, {during} msgs, {rate})")
        more = f" +{len(r['scans']) - 4} more" if len(r["scans"]) > 4 else ""
        scanned = r["scans"][0][4] if r["scans"] and r["scans"][0][4] else None
        print(f"{r['deferred']:>8} {r['ready_seconds']:>8.2f} {mib(r['ready'].rss):>7} {mib(r['ready'].pss):>7} "
              f"{mib(scanned.rss if scanned else None):>8} {mib(r['end'].rss):>8} {r['rate']:>7.1f}  {'; '.join(scans) or 'none seen'}{more}")
        print(f"{'':8} load {r['load_window'][0]:.2f}-{r['load_window'][1]:.2f}s; {r['queued']} of {args.messages} "
              f"queued; {r['left']} still deferred"
              + (f"; {r['write_seconds']:.0f}s to write the queue" if "write_seconds" in r else "")
              + f"; load average {r['loadavg']}")
    return 0 if ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    idle = sub.add_parser("idle")
    idle.add_argument("--sessions", type=int, default=10000)
    idle.add_argument("--messages", type=int, default=500)
    idle.add_argument("--sources", type=int, default=1,
                      help="source addresses 127.0.0.2.. to spread the sessions over (1: 127.0.0.1 only)")
    idle.add_argument("--open-timeout", type=float, default=600.0)
    idle.add_argument("--backlog", type=int, default=4096,
                      help="listen backlog in mta's endpoint (0: the endpoint's default, Twisted's 50)")
    idle.add_argument("--min-available-mb", type=int, default=4096,
                      help="stop opening sessions when the machine's MemAvailable falls below this")
    big = sub.add_parser("bigmessage")
    big.add_argument("--size-mb", type=int, default=50)
    deferred = sub.add_parser("deferred")
    deferred.add_argument("--deferred", type=int, default=100000)
    deferred.add_argument("--messages", type=int, default=2000)
    deferred.add_argument("--run-delay", type=float, default=0, help="queue_run_delay in seconds (0: mta's default)")
    deferred.add_argument("--no-baseline", action="store_true", help="skip the run on an empty queue")
    for p in (idle, big, deferred):
        p.add_argument("--workers", type=int, default=0, help="mta's worker_processes")
        p.add_argument("--parallel", type=int, default=20, help="smtp-source sessions")
        p.add_argument("--size", type=int, default=2048, help="smtp-source message size")
        p.add_argument("--timeout", type=float, default=600.0)
        p.add_argument("--start-timeout", type=float, default=180.0)
        p.add_argument("--keep", action="store_true")
    for p in (idle, big):
        p.add_argument("--skip-mta", action="store_true")
        p.add_argument("--skip-postfix", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("scale: run as root (Postfix, RLIMIT_NOFILE)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="mta-bench-scale-"))
    os.chmod(workdir, 0o755)
    log(f"{args.command}: load average {loadavg()} at the start; work directory {workdir}")
    try:
        run = {"idle": benchIdle, "bigmessage": benchBig, "deferred": benchDeferred}[args.command]
        return run(args, workdir)
    except BenchFailure as e:
        log(f"FAILED: {e}")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
