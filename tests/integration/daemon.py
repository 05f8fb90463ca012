"""Start and stop a real ``twistd mta`` on a free loopback port."""

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# twistd itself, run by this interpreter (python -m twisted is the other runner, twist).
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def twistd(args, cwd, **kwargs):
    """Popen of ``twistd -n --pidfile= ARGS`` with the checkout importable."""
    return subprocess.Popen(
        [sys.executable, "-c", TWISTD, "-n", "--pidfile=", *args],
        cwd=cwd,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def waitFor(predicate, timeout=30.0, what="condition", interval=0.05):
    """Poll C{predicate} until it returns something true (returned); AssertionError after C{timeout}."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _drain(stream, chunks):
    while True:
        try:
            chunk = stream.read1(65536)
        except (OSError, ValueError):
            return
        if not chunk:
            return
        chunks.append(chunk)


# The mail-log lines of waitForBanner's probe session (mta does no reverse lookup: "unknown").
PROBE_LINES = ("connect from unknown[127.0.0.1]", "disconnect from unknown[127.0.0.1] quit=1 commands=1")


def waitForBanner(port, process, timeout=30.0):
    """
    Wait until the port answers; return the first line of its banner.

    The probe then says QUIT and reads until mta closes, so that mta has ended
    its session (logged it, PROBE_LINES, and no longer counts it against
    smtpd_client_connection_count_limit) before this returns.  A probe that
    only closed its own end would still be a session in mta until mta read
    the EOF, and the caller's next connection can get there first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"mta exited with {process.returncode}:\n{out.decode()}\n{err.decode()}")
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            time.sleep(0.05)
            continue
        with s, s.makefile("rb") as reader:
            try:
                banner = reader.readline()
            except OSError:  # no banner within 2 s: try again
                time.sleep(0.05)
                continue
            s.settimeout(max(deadline - time.monotonic(), 5.0))
            try:
                s.sendall(b"QUIT\r\n")
                reader.read()  # to mta's close
            except TimeoutError:
                raise AssertionError(f"mta did not close the probe's session on port {port} after QUIT") from None
            except OSError:
                pass  # mta closed (reset) first: its session is over too
        return banner
    raise AssertionError(f"mta did not answer on port {port} within {timeout}s")


def stop(process, timeout=15.0):
    """SIGTERM and wait; return (returncode, stdout, stderr)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"mta did not stop within {timeout}s on SIGTERM:\n{out.decode()}\n{err.decode()}")
    return process.returncode, out.decode(), err.decode()


class Daemon:
    """A running mta with its own configuration and queue in C{directory}; C{twistdArgs} go before ``mta``."""

    twistdArgs = ()

    def __init__(self, directory, main="", listeners=None, hold=True):
        self.directory = str(directory)
        self.port = freePort()
        self.queue = os.path.join(self.directory, "spool")
        self.maillog = os.path.join(self.directory, "maillog")
        self.config = os.path.join(self.directory, "mta.ini")
        listeners = listeners or f"[listener:smtp]\nendpoint = tcp:port={self.port}:interface=127.0.0.1\n"
        with open(self.config, "w") as f:
            f.write(
                textwrap.dedent(
                    f"""\
                    [main]
                    queue_directory = {self.queue}
                    maillog_file = {self.maillog}
                    myhostname = mta.test
                    """
                )
                # Accepted mail is put on hold, so the queue manager leaves it
                # where the tests inspect it (the bench does the same with Postfix).
                + (
                    "smtpd_recipient_restrictions = check_recipient_access static:HOLD,\n"
                    "    permit_mynetworks, reject_unauth_destination\n"
                    if hold
                    else ""
                )
                + textwrap.dedent(main)
                # No client name lookups unless a test asks (mta.smtpd.peername): a test's clients
                # (127.0.0.x) would otherwise ask the machine's DNS server for their PTR records.
                # (After the test's own lines, so that their line numbers stay as the tests count them.)
                + ("" if "smtpd_peername_lookup" in main else "\nsmtpd_peername_lookup = no")
                + "\n"
                + listeners
            )
        self.process = None

    def start(self):
        self.process = twistd([*self.twistdArgs, "mta", "-c", self.config], cwd=self.directory)
        # twistd -n logs a few lines per session to stdout: read the pipes
        # while it runs, or the reactor blocks in write() once they are full.
        self._output = {"stdout": [], "stderr": []}
        self._readers = [
            threading.Thread(target=_drain, args=(getattr(self.process, name), chunks), daemon=True)
            for name, chunks in self._output.items()
        ]
        for reader in self._readers:
            reader.start()
        self.banner = waitForBanner(self.port, self.process)
        return self

    def _collected(self):
        for reader in self._readers:
            reader.join(10)
        return tuple(b"".join(self._output[name]).decode("utf-8", "replace") for name in ("stdout", "stderr"))

    def stop(self, timeout=15.0):
        """SIGTERM and wait: (returncode, stdout, stderr)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            out, err = self._collected()
            raise AssertionError(f"mta did not stop within {timeout}s on SIGTERM:\n{out}\n{err}") from None
        out, err = self._collected()
        return self.process.returncode, out, err

    def children(self):
        """The pids of the daemon's child processes (its worker processes, mta.workers)."""
        pids = []
        for task in os.listdir(f"/proc/{self.process.pid}/task"):
            try:
                with open(f"/proc/{self.process.pid}/task/{task}/children") as f:
                    pids += [int(pid) for pid in f.read().split()]
            except OSError:
                pass
        return pids

    def waitForWorkers(self, count, timeout=30.0):
        """Until C{count} worker processes said they are ready (twistd's log on stdout): their pids."""

        def ready():
            text = b"".join(self._output["stdout"]).decode("utf-8", "replace")
            pids = set(re.findall(r"worker \d+\[(\d+)\]: ready", text))
            alive = {str(pid) for pid in self.children()}
            return sorted(int(pid) for pid in pids & alive) if len(pids & alive) >= count else None

        return waitFor(ready, timeout, f"{count} ready worker processes")

    def kill(self, everyone=False):
        """kill -9 (with C{everyone}, its worker processes too, at once) and reap: (returncode, stdout, stderr)."""
        children = self.children() if everyone else []
        self.process.kill()
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(10)
        out, err = self._collected()
        return self.process.returncode, out, err

    def incoming(self):
        """The queue ids of the accepted messages (held, see the configuration above)."""
        path = os.path.join(self.queue, "hold")
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    def maillogText(self, settle=0.1, limit=2.0):
        """
        The mail log so far.  mta writes it in batches (mta.maillog: at most
        50 ms after a line is logged), so this waits until the file has
        stayed the same for C{settle} seconds (at most C{limit} in all):
        what the daemon logged before the call is then in the text.
        """

        def read():
            try:
                with open(self.maillog) as f:
                    return f.read()
            except FileNotFoundError:
                return ""

        deadline = time.monotonic() + limit
        time.sleep(settle)
        text = read()
        while time.monotonic() < deadline:
            time.sleep(settle)
            again = read()
            if again == text:
                break
            text = again
        return text
