"""The deployment files in etc/, tried for real without systemd: etc/mta.service's
ExecStart line runs the daemon, which answers SMTP and stops on SIGTERM with
exit status 0; etc/mta.logrotate rotates a running daemon's maillog_file with
logrotate(8), and the daemon's next lines land in the new file."""

import grp
import os
import pwd
import shlex
import signal
import smtplib
import subprocess
import sys

import pytest

from tests.integration.daemon import ROOT, TWISTD, Daemon, environment, waitFor, waitForBanner

pytestmark = pytest.mark.integration

UNIT = os.path.join(ROOT, "etc", "mta.service")
LOGROTATE = os.path.join(ROOT, "etc", "mta.logrotate")


def parseUnit(path):
    """A systemd unit file as {section: [(key, value)]} (comments, blank lines and continuations as systemd)."""
    sections, current, pending = {}, None, ""
    with open(path) as f:
        for raw in f:
            line = pending + raw.strip()
            pending = ""
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            if not line or line[0] in "#;":
                continue
            if line.startswith("[") and line.endswith("]"):
                current = sections.setdefault(line[1:-1], [])
                continue
            key, _, value = line.partition("=")
            assert current is not None, f"{path}: {line!r} outside a section"
            current.append((key.strip(), value.strip()))
    return sections


def values(section, key):
    return [value for k, value in section if k == key]


def one(section, key):
    [value] = values(section, key)
    return value


def test_unitFileDeclaresWhatTheReadmeSays():
    unit = parseUnit(UNIT)
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert one(service, "Type") == "exec"
    assert (one(service, "User"), one(service, "Group")) == ("mta", "mta")
    assert one(service, "AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    assert one(service, "CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert one(service, "KillSignal") == "SIGTERM"
    argv = shlex.split(one(service, "ExecStart"))
    assert argv[0] == "/opt/mta/bin/twistd" and argv[-1] == "mta"
    assert "--nodaemon" in argv and "--pidfile=" in argv
    assert not any(a.startswith("--logfile") for a in argv)  # the journal, see etc/mta.logrotate
    assert values(service, "Environment") == ["MTA_CONFIG=/etc/mta/mta.ini"]
    assert one(unit["Install"], "WantedBy") == "multi-user.target"


def test_execStartRunsTheDaemon(tmp_path):
    """
    ExecStart as systemd would run it (its environment from Environment=),
    with twistd run by this Python instead of /opt/mta/bin/twistd and
    MTA_CONFIG pointed at a configuration in tmp_path (as a drop-in would).
    """
    service = parseUnit(UNIT)["Service"]
    argv = shlex.split(one(service, "ExecStart"))
    assert argv[0] == "/opt/mta/bin/twistd"
    argv = [sys.executable, "-c", TWISTD, *argv[1:]]
    env = environment()
    for assignment in values(service, "Environment"):
        for item in shlex.split(assignment):
            name, _, value = item.partition("=")
            env[name] = value
    assert env["MTA_CONFIG"] == "/etc/mta/mta.ini"
    d = Daemon(tmp_path)
    env["MTA_CONFIG"] = d.config
    workdir = tmp_path / "root"  # systemd's default WorkingDirectory is /; nothing may be written there
    workdir.mkdir()
    process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert waitForBanner(d.port, process).startswith(b"220 mta.test ESMTP mta")
        with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
            assert s.ehlo("client.example")[0] == 250
            s.mail("alice@example.org")
            s.rcpt("bob@example.net")
            code, reply = s.data(b"Subject: systemd\r\n\r\nstarted by ExecStart\r\n")
            assert code == 250, reply
        assert len(waitFor(d.incoming, what="the message on hold")) == 1
    finally:
        process.send_signal(getattr(signal, one(service, "KillSignal")))  # systemctl stop
        try:
            out, err = (b.decode() for b in process.communicate(timeout=int(one(service, "TimeoutStopSec"))))
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise AssertionError("mta did not stop within TimeoutStopSec") from None
    code = process.returncode
    assert code == 0, err
    assert f"configuration {d.config}" in out and "daemon stopped" in out
    assert "Traceback" not in out + err
    assert os.listdir(workdir) == []


def logrotateConfig(tmp_path, maillog):
    """etc/mta.logrotate for C{maillog}, with su as the user running the tests (logrotate needs one it has)."""
    text = open(LOGROTATE).read()
    assert "/var/log/mta/maillog {" in text and "    su mta mta\n" in text
    user, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    text = text.replace("/var/log/mta/maillog {", f"{maillog} {{").replace("su mta mta", f"su {user} {group}")
    path = tmp_path / "logrotate.conf"
    path.write_text(text)
    return path


def send(port, subject):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.example")
        s.mail("alice@example.org")
        s.rcpt("bob@example.net")
        code, reply = s.data(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
        assert code == 250, reply
        return reply.decode().rsplit(" ", 1)[1]


def test_logrotateRotatesTheRunningDaemonsMaillog(makeDaemon, tmp_path):
    d = makeDaemon().start()
    before = send(d.port, "before")
    waitFor(lambda: f"{before}: from=<alice@example.org>" in d.maillogText(), what="the first message's log")
    config = logrotateConfig(tmp_path, d.maillog)
    done = subprocess.run(["logrotate", "--force", "--state", str(tmp_path / "logrotate.state"), str(config)],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    rotated = d.maillog + ".1"  # delaycompress: the newest old log is not compressed yet
    old = open(rotated, encoding="utf-8").read()
    assert f"{before}: from=<alice@example.org>" in old
    after = send(d.port, "after")
    waitFor(lambda: f"{after}: from=<alice@example.org>" in d.maillogText(), what="the second message's log")
    data = open(d.maillog, "rb").read()
    assert b"\x00" not in data  # appended at the start of the emptied file, not at the old offset
    assert before.encode() not in data
    assert data.split(b"\n", 1)[0].split()[3] == b"mta.test"  # a whole syslog-shaped line first
    assert f"{after}:" not in open(rotated, encoding="utf-8").read()  # the old file gets nothing more
