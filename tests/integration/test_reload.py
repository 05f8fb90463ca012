"""Reloading a real ``twistd mta``: SIGHUP and ``mta reload``, on loopback."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from tests.integration.daemon import environment, freePort, waitFor, waitForBanner

pytestmark = pytest.mark.integration


class Session:
    """A plain SMTP client session (socket and line reader)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.reader = self.sock.makefile("rb")
        self.banner = self.reader.readline().decode()

    def command(self, line):
        """Send C{line}; the reply's lines."""
        self.sock.sendall(line.encode() + b"\r\n")
        lines = []
        while True:
            reply = self.reader.readline().decode()
            assert reply, f"connection closed after {line!r}"
            lines.append(reply.rstrip("\r\n"))
            if reply[3:4] != "-":
                return lines

    def size(self):
        return [line for line in self.command("EHLO client.test") if "SIZE" in line]

    def close(self):
        self.reader.close()
        self.sock.close()


def edit(daemon, old, new):
    with open(daemon.config) as f:
        text = f.read()
    assert old in text, (old, text)
    with open(daemon.config, "w") as f:
        f.write(text.replace(old, new))


def append(daemon, text):
    with open(daemon.config, "a") as f:
        f.write(text)


def sighupAndWait(daemon, what="reload done"):
    """SIGHUP, and wait until the maillog shows one more C{what} line."""
    seen = daemon.maillogText().count(what)
    daemon.process.send_signal(signal.SIGHUP)
    waitFor(lambda: daemon.maillogText().count(what) > seen, what=what)


def mta(daemon, *args):
    return subprocess.run([sys.executable, "-m", "mta.cli.main", "-c", daemon.config, *args],
                          env=environment(), capture_output=True, text=True, timeout=60)


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_sighupReloadsInPlace(makeDaemon):
    """
    SIGHUP used to kill the daemon: now it is the same process on the same
    socket, a new session gets the new settings, one opened before keeps the old.
    """
    d = makeDaemon(main="smtpd_banner = $myhostname ESMTP before\nmessage_size_limit = 100000\n")
    d.start()
    pid = d.process.pid
    assert d.banner.decode().startswith("220 mta.test ESMTP before")
    before = Session(d.port)
    edit(d, "ESMTP before\nmessage_size_limit = 100000", "ESMTP after\nmessage_size_limit = 200000")
    sighupAndWait(d)
    assert d.process.poll() is None and d.process.pid == pid
    after = Session(d.port)
    assert after.banner.startswith("220 mta.test ESMTP after")
    assert after.size() == ["250-SIZE 200000"]
    assert before.size() == ["250-SIZE 100000"]  # opened before the reload
    assert before.command("QUIT")[0].startswith("221 ")
    after.close()
    before.close()
    status = mta(d, "status")
    assert status.returncode == 0 and f"pid {pid}," in status.stdout
    assert f"reload -- version 0.1.0, configuration {d.config}" in d.maillogText()
    code, out, err = d.stop()
    assert code == 0, err
    assert f"[mta/master#info] reload -- version 0.1.0, configuration {d.config}" in out


def test_brokenConfigurationIsRefusedAndTheDaemonKeepsServing(makeDaemon):
    d = makeDaemon(main="smtpd_banner = $myhostname ESMTP before\n")
    d.start()
    edit(d, "ESMTP before", "ESMTP after")
    append(d, "[main]\n")  # a second [main] section: the whole file is refused
    sighupAndWait(d, "reload refused")
    assert (f"mta/master[{d.process.pid}]: error: reload refused, the configuration in force stays: "
            f"{d.config}:") in d.maillogText()
    assert "section defined twice" in d.maillogText()
    assert waitForBanner(d.port, d.process).startswith(b"220 mta.test ESMTP before")
    code, out, err = d.stop()
    assert code == 0, err
    assert "[mta/master#error] error: reload refused" in out
    assert "Traceback" not in out + err


def test_mtaReloadReportsWhatTheDaemonDid(makeDaemon, tmp_path):
    d = makeDaemon(main="smtpd_banner = $myhostname ESMTP before\n")
    d.start()
    edit(d, "ESMTP before", "ESMTP after")
    result = mta(d, "reload")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"mta: refreshing the mta mail system\n"
                             f"mta: mta (pid {d.process.pid}) reloaded {d.config}\n")
    assert waitForBanner(d.port, d.process).startswith(b"220 mta.test ESMTP after")
    # A table that does not open: refused, with the daemon's error, and the old configuration stays.
    edit(d, "ESMTP after", f"ESMTP third\nrelay_domains = texthash:{tmp_path}/absent")
    result = mta(d, "reload")
    assert result.returncode == 1
    assert result.stderr == (f"mta: reload refused, the configuration in force stays: {d.config}:8: [main] "
                             f"relay_domains: {tmp_path}/absent: cannot open table: No such file or directory\n")
    assert waitForBanner(d.port, d.process).startswith(b"220 mta.test ESMTP after")
    # A syntax error too: mta still finds the queue, and the daemon answers.
    append(d, "this is not a parameter\n")
    result = mta(d, "reload")
    assert result.returncode == 1
    assert "expected 'name = value', found: this is not a parameter" in result.stderr
    assert result.stdout == "mta: refreshing the mta mail system\n"
    assert d.process.poll() is None


def test_listenersAddedAndRemovedByReload(makeDaemon):
    d = makeDaemon()
    d.start()
    second = freePort()
    append(d, f"[listener:submission]\nendpoint = tcp:port={second}:interface=127.0.0.1\nmyhostname = submit.test\n")
    result = mta(d, "reload")
    assert result.returncode == 0, result.stderr
    session = Session(second)
    assert session.banner.startswith("220 submit.test ESMTP")
    assert f"submission tcp:port={second}:interface=127.0.0.1" in mta(d, "status").stdout
    edit(d, f"[listener:submission]\nendpoint = tcp:port={second}:interface=127.0.0.1\nmyhostname = submit.test\n", "")
    assert mta(d, "reload").returncode == 0
    assert refused(second)
    assert session.command("NOOP") == ["250 2.0.0 Ok"]  # its open session finishes
    session.close()
    assert waitForBanner(d.port, d.process).startswith(b"220 mta.test")


def test_listenerThatCannotBindIsReportedAndTheRestApplies(makeDaemon):
    d = makeDaemon()
    d.start()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        append(d, f"[listener:busy]\nendpoint = tcp:port={port}:interface=127.0.0.1\n")
        edit(d, "myhostname = mta.test", "myhostname = new.test")
        result = mta(d, "reload")
    assert result.returncode == 1
    assert result.stderr == (f"mta: error: listener busy (tcp:port={port}:interface=127.0.0.1): cannot listen: "
                             "[Errno 98] Address already in use; not listening\n")
    assert waitForBanner(d.port, d.process).startswith(b"220 new.test")


def test_sighupReopensTheMaillogFile(makeDaemon):
    """What log rotation needs: after the file is renamed, SIGHUP starts a new one."""
    d = makeDaemon()
    d.start()
    os.rename(d.maillog, d.maillog + ".1")
    d.process.send_signal(signal.SIGHUP)
    waitFor(lambda: "reload done" in d.maillogText(), what="a new maillog")
    with open(d.maillog + ".1") as f:
        assert "daemon started" in f.read()
    waitForBanner(d.port, d.process)
    waitFor(lambda: "connect from" in d.maillogText(), what="the session in the new maillog")


def test_noStaleSocketOrPidFileAfterReloadsAndSigterm(makeDaemon, tmp_path):
    d = makeDaemon()
    pidfile = str(tmp_path / "mta.pid")
    d.twistdArgs = (f"--pidfile={pidfile}",)
    d.start()
    with open(pidfile) as f:
        assert int(f.read()) == d.process.pid
    sighupAndWait(d)
    sighupAndWait(d)
    code, out, err = d.stop()
    assert code == 0, err
    assert not os.path.exists(pidfile)
    private = os.path.join(d.queue, "private")
    assert os.listdir(private) == []  # neither the control socket nor its lock
    assert refused(d.port)


def test_mtaStopStopsTheDaemonCleanly(makeDaemon, tmp_path):
    """
    mta stop waits until the process has gone; this daemon is a child of
    the test, so after its exit it is a zombie until reaped: gone, too.
    """
    d = makeDaemon()
    pidfile = str(tmp_path / "mta.pid")
    d.twistdArgs = (f"--pidfile={pidfile}",)
    d.start()
    result = mta(d, "stop")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "mta: stopping the mta mail system\n"
    assert d.process.poll() == 0  # mta stop waited until the process had gone
    assert not os.path.exists(pidfile) and os.listdir(os.path.join(d.queue, "private")) == []
    code, out, err = d.stop()
    assert code == 0 and "daemon stopped" in out
    result = mta(d, "stop")
    assert result.returncode == 1
    assert result.stderr.startswith("mta: mta is not running (no control socket at ")
