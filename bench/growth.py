"""CPU per message as the message and the recipient list grow, mta and Postfix side by side.

    sudo python3 bench/growth.py [--rounds 3] [--out bench/growth.png] [--mta-workers N]
                                 [--scale F] [--json FILE] [--modes accept,relay]
                                 [--cells 10MB:1,2KB:100] [--mta-set NAME=VALUE] [--keep]
    python3 bench/growth.py --from-json FILE [--out PNG]   # redraw an earlier --json run

For each mode, accept (mail put on HOLD, as ``bench/run.py accept``) and relay
(everything relayed to a local smtp-sink, as ``bench/run.py relay``), the
same servers as bench/run.py (its MtaServer and PostfixServer, with
message_size_limit raised on both to fit a 10 MB message) get Postfix's
smtp-source with these cells:

    size      recipients   messages
    2 KB           1         2000
    100 KB         1         1000
    10 MB          1           30
    2 KB          10         1000
    2 KB         100          200

(``smtp-source -l SIZE -r N``: N recipients per message, rcpt@, 2rcpt@, ...,
Nrcpt@bench.example; the counts are multiplied by --scale).  Both servers run
for the whole mode; for every cell both get an untimed warm-up, then
--rounds timed runs each, alternating between them (mta first in odd rounds,
Postfix first in even ones).  A timed run measures the CPU (utime+stime, with
reaped children, from /proc: bench/loads.py's treeCpuSeconds, via the servers'
cpuSeconds()) of all the server's processes: for accept from the start of
smtp-source until the new messages are in the queue; for relay until the sink
has every delivery *and* the server's queue is empty again, so that the
bookkeeping after the last delivery is counted too.  The table on stdout gives,
per cell and server, the medians over the rounds of messages/s and CPU
ms/message (and CPU ms/recipient), and the ratio mta/postfix of the CPU; the
PNG (--out, matplotlib's Agg backend) has two panels: CPU ms/message against
the message size and against the recipients per message, a line per server
and mode.  --json FILE keeps every run's figures; --from-json FILE prints
the table and draws the plot of such a file without running anything.
Below the table: the growth, the difference of the medians per extra MB
(2 KB to 10 MB) and per extra recipient (1 to 100).

Recipient limits: both servers keep their defaults, which allow the 100
recipients (smtpd_recipient_limit = 1000 in both) and relay at most 50
recipients per delivery (default_destination_recipient_limit = 50 in both):
a 100-recipient message reaches the sink as 2 deliveries, from either
server; the harness waits for (and checks) that many.

Must run as root (the Postfix master); bench/setup.sh installs Postfix and
matplotlib.  Everything runs on 127.0.0.1 only; every process started is
stopped at the end, on errors and Ctrl-C too.  Exit status 0 when every cell
ran and was verified on both servers, 1 otherwise, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loads import BenchFailure, runSmtpSource
from postfix_instance import PostfixError, PostfixInstance, findProgram
from run import (
    REPO_ROOT,
    MtaServer,
    PostfixServer,
    SmtpSink,
    freePorts,
    log,
    stableCount,
)

KB = 1024
MB = 1024 * 1024
# Fits a 10 MB body with its headers and a few hundred recipients (Postfix's and
# mta's default is 10240000, less than 10 MB).
SIZE_LIMIT = 20 * MB
# Both servers' default_destination_recipient_limit: recipients per delivery.
RECIPIENTS_PER_DELIVERY = 50


@dataclass(frozen=True)
class Cell:
    size: int        # body bytes (smtp-source -l)
    recipients: int  # per message (smtp-source -r)
    messages: int    # per timed run, before --scale

    @property
    def label(self) -> str:
        return f"{sizeText(self.size)} x {self.recipients} rcpt"


# 2 KB x 1 recipient is the first point of both series.
CELLS = (Cell(2 * KB, 1, 2000), Cell(100 * KB, 1, 1000), Cell(10 * MB, 1, 30),
         Cell(2 * KB, 10, 1000), Cell(2 * KB, 100, 200))


def sizeText(size: int) -> str:
    if size >= MB:
        return f"{size / MB:g} MB"
    return f"{size / KB:g} KB"


@dataclass
class Figures:
    """One server in one cell of one mode: every timed run, and the medians."""
    server: str
    mode: str
    size: int
    recipients: int
    messages: int
    runs: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        values = [r[key] for r in self.runs if r.get(key) is not None]
        if not values or len(values) < len(self.runs):
            return None
        values.sort()
        return values[(len(values) - 1) // 2]  # the lower median: a real run

    @property
    def ok(self) -> bool:
        return bool(self.runs) and not self.errors and all(r["verified"] for r in self.runs)


# -- the servers: bench/run.py's, with room for 10 MB -----------------------------

class GrowthMta(MtaServer):
    """bench/run.py's mta, with message_size_limit = SIZE_LIMIT (and --mta-set's parameters)."""

    extra: tuple[str, ...] = ()

    def writeConfig(self) -> Path:
        ini = super().writeConfig()
        text = ini.read_text()
        lines = "".join(f"{line}\n" for line in (f"message_size_limit = {SIZE_LIMIT}", *self.extra))
        ini.write_text(text.replace("[main]\n", f"[main]\n{lines}", 1))
        return ini

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class GrowthPostfixInstance(PostfixInstance):
    """bench/postfix_instance.py's instance, with message_size_limit = SIZE_LIMIT."""

    def create(self) -> None:
        super().create()
        with open(self.config_dir / "main.cf", "a") as f:
            f.write(f"# bench/growth.py: room for a 10 MB message\nmessage_size_limit = {SIZE_LIMIT}\n")


class GrowthPostfix(PostfixServer):
    """bench/run.py's PostfixServer, on a GrowthPostfixInstance."""

    def makeInstance(self) -> GrowthPostfixInstance:
        return GrowthPostfixInstance(self.port, self.relay_port, keep=self.keep, parent_dir=str(self.workdir))

    def alive(self) -> bool:
        pid = self.instance.masterPid() if self.instance else None
        return pid is not None and os.path.exists(f"/proc/{pid}")


# -- one run ----------------------------------------------------------------------

def smtpSource(port: int, messages: int, size: int, recipients: int, sessions: int,
               timeout: float, phase: str) -> float:
    """smtp-source with -r recipients, a connection per message; its wall time."""
    return runSmtpSource(port, messages, sessions, size, False, timeout, phase, recipients=recipients)


def deliveriesPerMessage(recipients: int) -> int:
    return math.ceil(recipients / RECIPIENTS_PER_DELIVERY)


def waitEmpty(server, timeout: float) -> int:
    """Wait until the server's queue is empty (relay); the count left."""
    deadline = time.monotonic() + timeout
    left = server.queueCount()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = server.queueCount()
    return left


class Entry:
    def __init__(self, server, sink):
        self.server, self.sink = server, sink

    @property
    def name(self) -> str:
        return self.server.name

    def start(self) -> None:
        if self.sink is not None:
            self.sink.start()
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        if self.sink is not None:
            self.sink.stop()

    def restartIfDead(self) -> None:
        if not self.server.alive() or (self.sink is not None and self.sink.proc.poll() is not None):
            log(f"{self.name}: not running; starting it again")
            self.stop()
            self.start()


def oneRun(entry: Entry, cell: Cell, messages: int, args, phase: str) -> dict:
    """Send messages of one cell to one server; the figures of the run."""
    server, sink = entry.server, entry.sink
    expected = messages * deliveriesPerMessage(cell.recipients) if sink else messages
    before = sink.count if sink else stableCount(server.queueCount)
    os.sync()  # no dirty data of anyone's at the start
    cpu0 = server.cpuSeconds()
    t0 = time.monotonic()
    accept = smtpSource(server.port, messages, cell.size, cell.recipients, args.sessions,
                        args.timeout, f"{server.name} {cell.label} {phase}")
    notes = []
    if sink is not None:
        got = sink.waitFor(before + expected, args.drain_timeout, args.stall_timeout) - before
        seconds = time.monotonic() - t0
        left = waitEmpty(server, 10.0)
        if left:
            notes.append(f"{left} messages still in the queue 10s after the last delivery")
        time.sleep(0.2)  # a duplicate delivery would show up now
        count = sink.count - before
        if got < expected:
            raise BenchFailure(f"{phase}: {server.name} made {got} of {expected} deliveries to the sink "
                               f"(nothing new for {args.stall_timeout:.0f}s, or over "
                               f"{args.drain_timeout:.0f}s)")
    else:
        deadline = time.monotonic() + 10
        count = stableCount(server.queueCount) - before
        while count < expected and time.monotonic() < deadline:
            time.sleep(0.2)
            count = stableCount(server.queueCount) - before
        seconds = accept
    cpu1 = server.cpuSeconds()
    verified = count == expected
    if not verified:
        what = "deliveries at the sink" if sink else "new messages in the queue"
        notes.append(f"expected {expected} {what}, found {count}")
    if sink is None and isinstance(server, PostfixServer) and phase != "warm-up":
        pq = server.postqueueCount()
        if pq != stableCount(server.queueCount):
            notes.append(f"postqueue -p counts {pq}, the queue directories {server.queueCount()}")
            verified = False
    cpu = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) * 1000.0 / messages
    return {"messages": messages, "seconds": seconds, "accept_seconds": accept,
            "rate": messages / seconds, "cpu_ms_per_message": cpu,
            "cpu_ms_per_recipient": None if cpu is None else cpu / cell.recipients,
            "count": count, "expected": expected, "verified": verified, "notes": notes,
            "load": os.getloadavg()[0]}


def warmupCount(messages: int) -> int:
    return max(2, min(200, messages // 10))


def runMode(mode: str, args, rundir: Path) -> list[Figures]:
    names = [n for n in ("mta", "postfix") if n not in args.skip]
    ports = freePorts(2 * len(names))
    entries = []
    for i, name in enumerate(names):
        port, relayPort = ports[2 * i], ports[2 * i + 1]
        sink = SmtpSink(relayPort, args.start_timeout) if mode == "relay" else None
        relay = relayPort if mode == "relay" else None
        if name == "mta":
            server = GrowthMta(rundir / f"mta-{mode}", port, relay, args.start_timeout,
                               args.mta_root.resolve(), workers=args.mta_workers)
            server.extra = tuple(args.mta_set)
        else:
            (rundir / f"postfix-{mode}").mkdir(mode=0o755)
            server = GrowthPostfix(rundir / f"postfix-{mode}", port, relay, args.start_timeout, args.keep)
        entries.append(Entry(server, sink))
    results: list[Figures] = []
    try:
        live = []
        for entry in entries:
            try:
                entry.start()
                live.append(entry)
            except BenchFailure as e:
                log(f"{entry.name}: FAILED to start: {e}")
                if e.detail:
                    log(e.detail)
                entry.stop()
                for cell in args.cells:
                    f = Figures(entry.name, mode, cell.size, cell.recipients, scaled(cell, args))
                    f.errors.append(f"did not start: {e}")
                    results.append(f)
        for cell in args.cells:
            messages = scaled(cell, args)
            figures = {e.name: Figures(e.name, mode, cell.size, cell.recipients, messages) for e in live}
            results.extend(figures.values())
            for entry in live:
                n = warmupCount(messages)
                log(f"{mode} {cell.label}: {entry.name}: warm-up, {n} messages")
                try:
                    entry.restartIfDead()
                    oneRun(entry, cell, n, args, "warm-up")
                except BenchFailure as e:
                    figures[entry.name].errors.append(f"warm-up: {e}")
                    log(f"{entry.name}: warm-up FAILED: {e}")
            for i in range(args.rounds):
                order = live if i % 2 == 0 else live[::-1]
                for entry in order:
                    f = figures[entry.name]
                    if f.errors:
                        continue
                    try:
                        entry.restartIfDead()
                        run = oneRun(entry, cell, messages, args, f"run {i + 1}/{args.rounds}")
                    except BenchFailure as e:
                        f.errors.append(f"run {i + 1}: {e}")
                        log(f"{mode} {cell.label}: {entry.name}: FAILED: {e}")
                        if e.detail:
                            log(e.detail)
                        continue
                    f.runs.append(run)
                    cpu = run["cpu_ms_per_message"]
                    log(f"{mode} {cell.label}: {entry.name}: run {i + 1}/{args.rounds}: "
                        f"{messages} messages in {run['seconds']:.2f}s, {run['rate']:.1f}/s, "
                        + (f"CPU {cpu:.2f} ms/message" if cpu is not None else "CPU n/a")
                        + (f", load {run['load']:.2f}") + "".join(f"; {n}" for n in run["notes"]))
    finally:
        for entry in entries:
            entry.stop()
    return results


def scaled(cell: Cell, args) -> int:
    return max(2, round(cell.messages * args.scale))


# -- output -----------------------------------------------------------------------

def fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def printTable(results: list[Figures], args, loads: tuple, out=sys.stdout) -> None:
    print(f"growth: CPU per message of all the server's processes, smtp-source with "
          f"{args.sessions} parallel sessions, a connection per message, median of "
          f"{args.rounds} alternating timed runs"
          + (f", mta with worker_processes = {args.mta_workers}" if args.mta_workers else "")
          + "".join(f", mta with {item}" for item in args.mta_set)
          + f"; load average {loads[0]:.2f} at the start, {loads[1]:.2f} at the end", file=out)
    head = (f"{'mode':<7}{'size':>8}{'rcpt':>6}{'msgs':>6}  {'server':<8}{'msg/s':>8}"
            f"{'CPU ms/msg':>12}{'ms/rcpt':>9}  {'CPU mta/postfix':>15}")
    print(head, file=out)
    byKey: dict[tuple, dict[str, Figures]] = {}
    for f in results:
        byKey.setdefault((f.mode, f.size, f.recipients), {})[f.server] = f
    for (mode, size, rcpt), servers in byKey.items():
        mta, pf = servers.get("mta"), servers.get("postfix")
        ratio = None
        if mta and pf and mta.ok and pf.ok and mta.median("cpu_ms_per_message") and pf.median("cpu_ms_per_message"):
            ratio = mta.median("cpu_ms_per_message") / pf.median("cpu_ms_per_message")
        first = True
        for name in ("mta", "postfix"):
            f = servers.get(name)
            if f is None:
                continue
            lead = f"{mode:<7}{sizeText(size):>8}{rcpt:>6}{f.messages:>6}" if first else " " * 27
            if f.runs and f.ok:
                line = (f"{lead}  {name:<8}{fmt(f.median('rate'), '.1f'):>8}"
                        f"{fmt(f.median('cpu_ms_per_message')):>12}"
                        f"{fmt(f.median('cpu_ms_per_recipient'), '.3f') if rcpt > 1 else '':>9}")
                if first:
                    line += f"  {fmt(ratio):>15}"
                line = line.rstrip()
            else:
                line = f"{lead}  {name:<8}  FAILED: {'; '.join(f.errors) or 'counts not verified'}"
            print(line, file=out)
            notes = [f"run {i + 1}: {n}" for i, r in enumerate(f.runs) for n in r["notes"]]
            for n in notes:
                print(" " * 29 + n, file=out)
            first = False
    growth = slopes(results)
    if growth:
        print("CPU growth (the difference of the medians over the difference of size or recipients):", file=out)
        for line in growth:
            print(f"  {line}", file=out)


def slopes(results: list[Figures]) -> list[str]:
    """CPU per extra MB (smallest to largest message) and per extra recipient (1 to most), per server and mode."""
    lines = []
    for mode in dict.fromkeys(f.mode for f in results):
        for server in ("mta", "postfix"):
            mine = {(f.size, f.recipients): f.median("cpu_ms_per_message") for f in results
                    if f.mode == mode and f.server == server and f.ok}
            parts = []
            sizes = sorted(s for s, r in mine if r == 1 and mine[(s, r)] is not None)
            if len(sizes) > 1:
                a, b = sizes[0], sizes[-1]
                perMb = (mine[(b, 1)] - mine[(a, 1)]) / ((b - a) / MB)
                parts.append(f"{perMb:.2f} ms per extra MB ({sizeText(a)} to {sizeText(b)})")
            rcpts = sorted(r for s, r in mine if s == 2 * KB and mine[(s, r)] is not None)
            if len(rcpts) > 1:
                a, b = rcpts[0], rcpts[-1]
                perRcpt = (mine[(2 * KB, b)] - mine[(2 * KB, a)]) / (b - a)
                parts.append(f"{perRcpt:.3f} ms per extra recipient ({a} to {b})")
            if parts:
                lines.append(f"{mode:<7}{server:<8} " + ", ".join(parts))
    return lines


def plot(results: list[Figures], path: Path, args, loads: tuple) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (bySize, byRcpt) = plt.subplots(1, 2, figsize=(12, 5))
    styles = {("mta", "accept"): ("tab:red", "-", "o"), ("mta", "relay"): ("tab:red", "--", "s"),
              ("postfix", "accept"): ("tab:blue", "-", "o"), ("postfix", "relay"): ("tab:blue", "--", "s")}
    for (server, mode), (color, line, marker) in styles.items():
        mine = [f for f in results if f.server == server and f.mode == mode and f.ok
                and f.median("cpu_ms_per_message") is not None]
        sizes = sorted((f.size, f.median("cpu_ms_per_message")) for f in mine if f.recipients == 1)
        rcpts = sorted((f.recipients, f.median("cpu_ms_per_message")) for f in mine if f.size == 2 * KB)
        label = f"{server} {mode}"
        if sizes:
            bySize.plot([s for s, _ in sizes], [c for _, c in sizes], color=color, linestyle=line,
                        marker=marker, label=label)
        if rcpts:
            byRcpt.plot([r for r, _ in rcpts], [c for _, c in rcpts], color=color, linestyle=line,
                        marker=marker, label=label)
    for ax in (bySize, byRcpt):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel("CPU ms per message (all processes of the server)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    sizeTicks = sorted({f.size for f in results if f.recipients == 1})
    bySize.set_xticks(sizeTicks, [sizeText(s) for s in sizeTicks])
    bySize.set_xlabel("message size (1 recipient)")
    bySize.set_title("CPU per message vs message size")
    rcptTicks = sorted({f.recipients for f in results if f.size == 2 * KB})
    byRcpt.set_xticks(rcptTicks, [str(r) for r in rcptTicks])
    byRcpt.set_xlabel("recipients per message (2 KB)")
    byRcpt.set_title("CPU per message vs recipients")
    for ax in (bySize, byRcpt):  # only the ticks set above on x
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    fig.suptitle(f"mta vs Postfix, median of {args.rounds} alternating runs, "
                 f"{os.cpu_count()} cores, load average {loads[0]:.1f} to {loads[1]:.1f}"
                 + (f", mta worker_processes = {args.mta_workers}" if args.mta_workers else "")
                 + "".join(f", mta {item}" for item in args.mta_set))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- main -------------------------------------------------------------------------

def parseArgs(argv):
    p = argparse.ArgumentParser(prog="bench/growth.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="timed runs per server and cell (default 3)")
    p.add_argument("--out", type=Path, default=Path("growth.png"),
                   help="the plot, a PNG (default growth.png in the current directory; '' for none; "
                        "bench/growth.png is the one the README shows)")
    p.add_argument("--json", type=Path, default=None, help="write every run's figures to this file")
    p.add_argument("--from-json", type=Path, default=None, metavar="FILE",
                   help="run nothing: print the table and draw the plot of a --json FILE of an earlier run")
    p.add_argument("--mta-workers", type=int, default=0, help="mta's worker_processes (default 0)")
    p.add_argument("--mta-set", action="append", default=[], metavar="NAME=VALUE",
                   help="one more parameter for mta's [main] (repeatable), e.g. queue_sync_method=fsync")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every cell's message count by this (default 1)")
    p.add_argument("--modes", default="accept,relay", help="accept, relay or both (default accept,relay)")
    p.add_argument("--cells", default=None,
                   help="only these cells, e.g. '10MB:1,2KB:100' (size:recipients; default all)")
    p.add_argument("--sessions", type=int, default=20, help="parallel smtp-source sessions (default 20)")
    p.add_argument("--skip", action="append", default=[], choices=("mta", "postfix"),
                   help="leave a server out (repeatable)")
    p.add_argument("--timeout", type=float, default=600.0, help="time limit of one smtp-source run (s)")
    p.add_argument("--start-timeout", type=float, default=30.0)
    p.add_argument("--drain-timeout", type=float, default=300.0)
    p.add_argument("--stall-timeout", type=float, default=30.0)
    p.add_argument("--mta-root", type=Path, default=REPO_ROOT,
                   help="the checkout whose mta is run (default: this one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if not (args.mta_root / "mta" / "__init__.py").is_file():  # else Python would run the installed mta
        p.error(f"--mta-root {args.mta_root}: no mta package there (mta/__init__.py)")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in ("accept", "relay") for m in args.modes):
        p.error("--modes: accept, relay or accept,relay")
    for item in args.mta_set:
        if "=" not in item or "\n" in item:
            p.error(f"--mta-set: NAME=VALUE, not {item!r}")
    args.mta_set = [" = ".join(part.strip() for part in item.split("=", 1)) for item in args.mta_set]
    if args.rounds < 1 or args.sessions < 1 or args.scale <= 0:
        p.error("--rounds, --sessions and --scale must be positive")
    args.cells = selectCells(args.cells, p)
    return args


def selectCells(spec: str | None, p) -> list[Cell]:
    if not spec:
        return list(CELLS)
    wanted = set()
    for item in spec.split(","):
        size, _, rcpt = item.strip().upper().partition(":")
        try:
            number, unit = (size[:-2], size[-2:]) if size.endswith(("KB", "MB")) else (size, "")
            nbytes = int(float(number) * {"KB": KB, "MB": MB, "": 1}[unit])
            wanted.add((nbytes, int(rcpt or 1)))
        except ValueError:
            p.error(f"--cells: cannot read {item!r} (e.g. 2KB:1, 10MB:1, 2KB:100)")
    cells = [c for c in CELLS if (c.size, c.recipients) in wanted]
    if len(cells) != len(wanted):
        p.error(f"--cells: the cells are {', '.join(f'{sizeText(c.size)}:{c.recipients}' for c in CELLS)}")
    return cells


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    return run(parseArgs(argv))


def replay(args) -> int:
    """--from-json: the table and the plot of an earlier run."""
    try:
        doc = json.loads(args.from_json.read_text())
        results = [Figures(**f) for f in doc["results"]]
        args.rounds, args.sessions = doc["rounds"], doc["sessions"]
        args.mta_workers, args.mta_set = doc.get("mta_workers", 0), doc.get("mta_set", [])
        loads = tuple(doc["load"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        log(f"--from-json {args.from_json}: cannot read it: {e}")
        return 1
    printTable(results, args, loads)
    if str(args.out) not in ("", "."):
        plot(results, args.out, args, loads)
        log(f"plot: {args.out}")
    return 0 if results and all(f.ok for f in results) else 1


def run(args) -> int:
    if args.from_json is not None:
        return replay(args)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    if str(args.out) not in ("", "."):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            log("matplotlib is missing (for the plot): run bench/setup.sh, or give --out ''")
            return 1
    try:
        findProgram("smtp-source")
        findProgram("smtp-sink")
    except PostfixError as e:
        log(str(e))
        return 1
    rundir = Path(tempfile.mkdtemp(prefix="mta-growth-"))
    os.chmod(rundir, 0o755)  # the postfix user must reach the instances below it
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    results: list[Figures] = []
    try:
        for mode in args.modes:
            results.extend(runMode(mode, args, rundir))
    except KeyboardInterrupt:
        log("interrupted; everything started has been stopped")
        return 130
    finally:
        if args.keep:
            log(f"kept {rundir}")
        else:
            shutil.rmtree(rundir, ignore_errors=True)
    loads = (load0, os.getloadavg()[0])
    log(f"done in {time.monotonic() - t0:.0f}s")
    printTable(results, args, loads)
    if args.json:
        args.json.write_text(json.dumps({"rounds": args.rounds, "sessions": args.sessions,
                                         "mta_workers": args.mta_workers, "mta_set": args.mta_set,
                                         "load": loads,
                                         "results": [asdict(f) for f in results]}, indent=1))
    if str(args.out) not in ("", "."):
        plot(results, args.out, args, loads)
        log(f"plot: {args.out}")
    return 0 if results and all(f.ok for f in results) else 1


if __name__ == "__main__":
    sys.exit(main())
