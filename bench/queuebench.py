"""Queue benchmarks for mta alone (no Postfix side): delivery into Maildir and a big deferred queue.

    python bench/queuebench.py maildir  [--messages N] [--sessions 20] [--size 2048]
    python bench/queuebench.py deferred [--messages 100000] [--probe 15] [--run-delay 2]
    python bench/queuebench.py sendmail [--messages 1000] [--parallel 8]
    python bench/queuebench.py verify   [--size 10485760]

maildir   smtp-source sends N messages over SMTP to a running ``twistd mta``
          whose recipient is a virtual(8) Maildir; the time runs from the
          start of smtp-source until N files are in the Maildir's new/ and
          the queue is empty.  Prints messages/s.
sendmail  runs mta-sendmail N times (8 at a time) against a running
          ``twistd mta`` whose recipient is a virtual(8) Maildir; the time
          runs until N files are in the Maildir.  Each mta-sendmail is a new
          Python process, which sets the pace, as with Postfix's sendmail.
deferred  writes N queue files into deferred/ (next attempt in an hour, as
          after a failed attempt), then starts ``twistd mta`` on that queue
          and measures the time until it answers SMTP and its control socket
          answers, and its resident memory (VmRSS) then and after the first
          deferred-queue scan.  Then, with queue_run_delay = --run-delay
          (2s), it measures the longest reactor stall for --probe seconds
          (15): one SMTP session sends NOOP every 5 ms and the slowest reply
          is the longest time the reactor was blocked (within 5 ms), over
          several deferred-queue scans of the N files.
verify    the cost of the content check the queue manager makes at every
          activation (readQueueFile with verifyContent: length and CRC-32 of
          the whole content) against parsing the header and envelope only,
          for one message of --size bytes: with the file in the page cache,
          and evicted from it (posix_fadvise DONTNEED after an fsync).

Everything on 127.0.0.1; every process is stopped at the end; every wait is
bounded.  The temporary directory is removed unless --keep is given.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def waitForPort(port, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mta exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(512).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"mta did not answer within {timeout}s")


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def startMta(workdir, main):
    port = freePort()
    ini = workdir / "mta.ini"
    ini.write_text(f"[main]\nqueue_directory = {workdir / 'spool'}\nmyhostname = bench.test\n{main}\n"
                   f"[listener:smtp]\nendpoint = tcp:port={port}:interface=127.0.0.1\n")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.Popen([sys.executable, "-c", TWISTD, "-n", "--pidfile=", f"--logfile={workdir / 'twistd.log'}",
                             "mta", "-c", str(ini)], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, port


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def benchMaildir(args, workdir):
    base = workdir / "mail"
    base.mkdir()
    main = (f"virtual_mailbox_domains = bench.example\nvirtual_mailbox_base = {base}\n"
            "virtual_mailbox_maps = inline:{ rcpt@bench.example=bench.example/rcpt/ }\n")
    proc, port = startMta(workdir, main)
    try:
        waitForPort(port, proc)
        new = base / "bench.example" / "rcpt" / "new"
        smtpSource = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
        start = time.monotonic()
        subprocess.run([smtpSource, "-s", str(args.sessions), "-m", str(args.messages), "-l", str(args.size),
                        "-f", "sender@bench.example", "-t", "rcpt@bench.example", f"127.0.0.1:{port}"],
                       check=True, timeout=600, stdout=subprocess.DEVNULL)
        accepted = time.monotonic() - start
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if new.is_dir() and len(os.listdir(new)) >= args.messages:
                break
            time.sleep(0.02)
        elapsed = time.monotonic() - start
        delivered = len(os.listdir(new)) if new.is_dir() else 0
        print(f"maildir: {args.messages} messages of {args.size} bytes, {args.sessions} sessions, "
              "one connection per message")
        print(f"  accepted in {accepted:.2f}s ({args.messages / accepted:.0f}/s); "
              f"{delivered} delivered to Maildir in {elapsed:.2f}s ({delivered / elapsed:.0f} messages/s end to end)")
        return 0 if delivered == args.messages else 1
    finally:
        stop(proc)


def benchSendmail(args, workdir):
    base = workdir / "mail"
    base.mkdir()
    main = (f"virtual_mailbox_domains = bench.example\nvirtual_mailbox_base = {base}\n"
            "virtual_mailbox_maps = inline:{ rcpt@bench.example=bench.example/rcpt/ }\n")
    proc, port = startMta(workdir, main)
    # Bytecode caches allowed (as for an installed package): every mta-sendmail
    # is a new interpreter, and recompiling mta's modules each time would be
    # most of its cost.
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    message = b"Subject: bench\n\n" + b"x" * 2000 + b"\n"
    try:
        waitForPort(port, proc)
        new = base / "bench.example" / "rcpt" / "new"
        start = time.monotonic()
        running = []
        for i in range(args.messages):
            while len(running) >= args.parallel:
                running = [p for p in running if p.poll() is None]
                time.sleep(0.002)
            p = subprocess.Popen([sys.executable, "-m", "mta.cli.sendmail", "-C", str(workdir / "mta.ini"),
                                  "-f", "sender@bench.example", "rcpt@bench.example"],
                                 stdin=subprocess.PIPE, env=env, cwd=workdir)
            p.stdin.write(message)
            p.stdin.close()
            running.append(p)
        for p in running:
            p.wait(120)
        submitted = time.monotonic() - start
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (new.is_dir() and len(os.listdir(new)) >= args.messages):
            time.sleep(0.02)
        elapsed = time.monotonic() - start
        delivered = len(os.listdir(new)) if new.is_dir() else 0
        print(f"sendmail: {args.messages} mta-sendmail runs, {args.parallel} at a time: submitted in {submitted:.2f}s "
              f"({args.messages / submitted:.0f}/s); {delivered} in the Maildir after {elapsed:.2f}s "
              f"({delivered / elapsed:.0f} messages/s end to end)")
        return 0 if delivered == args.messages else 1
    finally:
        stop(proc)


def probeStalls(port, seconds, interval=0.005):
    """NOOP round trips on one SMTP session for C{seconds}: (count, max, 99th percentile) in seconds."""
    latencies = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")

        def reply():
            while True:
                line = f.readline()
                if not line:
                    raise SystemExit("mta closed the probe session")
                if line[3:4] != b"-":
                    return line

        reply()
        s.sendall(b"EHLO probe.test\r\n")
        reply()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.monotonic()
            s.sendall(b"NOOP\r\n")
            if not reply().startswith(b"250"):
                raise SystemExit("NOOP refused")
            latencies.append(time.monotonic() - t0)
            time.sleep(interval)
        s.sendall(b"QUIT\r\n")
    latencies.sort()
    return len(latencies), latencies[-1], latencies[int(len(latencies) * 0.99)]


def benchDeferred(args, workdir):
    from mta.model import Envelope, Recipient
    from mta.queue.fileformat import dumpQueueFile
    from mta.queue.queueid import newQueueId
    from mta.queue.store import QueueStore

    store = QueueStore(str(workdir / "spool"), reactor=None)
    store.prepare()
    deferred = Path(store.queuePath("deferred"))
    content = b"Subject: deferred\r\n\r\n" + b"x" * 2000 + b"\r\n"
    later = time.time() + 3600
    t0 = time.monotonic()
    for i in range(args.messages):
        envelope = Envelope(sender="sender@bench.example", recipients=(Recipient(f"r{i}@far.example"),),
                            arrival_time=time.time(), size=len(content))
        path = deferred / newQueueId()
        path.write_bytes(dumpQueueFile(envelope, content))
        os.utime(path, (later, later))
    print(f"deferred: wrote {args.messages} queue files in {time.monotonic() - t0:.1f}s")
    start = time.monotonic()
    # The probe's NOOPs must not run into the junk-command tarpit.
    proc, port = startMta(workdir, f"queue_run_delay = {args.run_delay}s\nsmtpd_junk_command_limit = 100000000\n")
    try:
        waitForPort(port, proc)
        ready = time.monotonic() - start
        memory = rss(proc.pid)
        time.sleep(3)  # the first deferred scan runs right after start
        scanned = rss(proc.pid)
        print(f"  start-up with {args.messages} deferred messages: answering SMTP after {ready:.2f}s; "
              f"RSS {memory / 2**20:.1f} MiB, {scanned / 2**20:.1f} MiB after the first queue scan")
        count, longest, p99 = probeStalls(port, args.probe)
        print(f"  reactor stalls over {args.probe:g}s (a deferred-queue scan every {args.run_delay:g}s): "
              f"{count} NOOPs, longest reply {longest * 1000:.1f} ms, 99th percentile {p99 * 1000:.1f} ms")
        left = len(os.listdir(deferred))
        print(f"  still deferred (none due): {left}")
        return 0 if left == args.messages else 1
    finally:
        stop(proc)


def benchVerify(args, workdir):
    import statistics

    from mta.model import Envelope, Recipient
    from mta.queue.fileformat import dumpQueueFile, readQueueFile

    path = workdir / "queuefile"
    line = b"x" * 998 + b"\r\n"
    content = line * (args.size // len(line))
    envelope = Envelope(sender="a@bench.example", recipients=(Recipient("b@bench.example"),), arrival_time=1.0)
    path.write_bytes(dumpQueueFile(envelope, content))

    def timed(verify, evict=False, rounds=20):
        times = []
        for _ in range(rounds):
            if evict:
                fd = os.open(path, os.O_RDONLY)
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
            t0 = time.perf_counter()
            readQueueFile(str(path), verifyContent=verify)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000

    timed(True)  # warm up
    print(f"verify: a message of {len(content)} bytes, median of 20 reads")
    print(f"  header and envelope only: {timed(False):.2f} ms")
    print(f"  with the content's CRC-32 (in the page cache): {timed(True):.2f} ms")
    print(f"  with the content's CRC-32 (evicted from the page cache): {timed(True, evict=True):.2f} ms")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("maildir")
    m.add_argument("--messages", type=int, default=2000)
    m.add_argument("--sessions", type=int, default=20)
    m.add_argument("--size", type=int, default=2048)
    d = sub.add_parser("deferred")
    d.add_argument("--messages", type=int, default=100000)
    d.add_argument("--probe", type=float, default=15.0, help="seconds of NOOP probing for reactor stalls")
    d.add_argument("--run-delay", type=float, default=2.0, help="queue_run_delay during the probe (seconds)")
    s = sub.add_parser("sendmail")
    s.add_argument("--messages", type=int, default=1000)
    s.add_argument("--parallel", type=int, default=8)
    v = sub.add_parser("verify")
    v.add_argument("--size", type=int, default=10 * 1024 * 1024)
    for p in (m, d, s, v):
        p.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="mta-bench-queue-"))
    try:
        run = {"maildir": benchMaildir, "deferred": benchDeferred, "sendmail": benchSendmail,
               "verify": benchVerify}[args.command]
        return run(args, workdir)
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
