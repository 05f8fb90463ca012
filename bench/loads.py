"""The loads of bench/run.py: smtp-source and (--tls) tlsload.py runs, and what they need.

    runSmtpSource(...)     Postfix's smtp-source, its wall time
    runTlsLoad(...)        bench/tlsload.py over STARTTLS, its JSON result
    runLoad(server, ...)   the one of the two that the options ask for
    makeCertificate(...)   the self-signed certificate both servers get with --tls
    offersStarttls(port)   does a server list STARTTLS after EHLO?
    treeCpuSeconds(pid)    the CPU of a process and its descendants, from /proc
    stopProcessGroup(...)  stop a child started in its own session, and its group

Everything connects to 127.0.0.1 only; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from postfix_instance import BENCH_DOMAIN, findProgram, tail

TLS_NAME = "bench-tls.example"  # the certificate's name; tlsload verifies it (--tls)
SENDER = f"sender@{BENCH_DOMAIN}"
RECIPIENT = f"rcpt@{BENCH_DOMAIN}"


class BenchFailure(Exception):
    """One server's run failed: a one-line reason for the table, and detail."""

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail


def waitForCount(sink, target: float, timeout: float, stall: float, name: str) -> int:
    """
    Wait until C{sink.count} reaches C{target}; return the count.  Gives up
    after C{timeout} seconds, or after C{stall} seconds without a new
    message (a server that does not relay at all is seen quickly); a sink
    process (C{sink.proc}) that exits is a BenchFailure naming C{name}.
    """
    now = time.monotonic()
    deadline = now + timeout
    last, lastChange = sink.count, now
    while sink.count < target and now < deadline:
        if sink.proc.poll() is not None:
            raise BenchFailure(f"{name} exited (rc={sink.proc.returncode})")
        time.sleep(0.02)
        now = time.monotonic()
        if sink.count != last:
            last, lastChange = sink.count, now
        elif now - lastChange > stall:
            break
    return sink.count


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
    tree = processTree(root)
    if not tree:
        return None
    return sum(ticks for _, ticks in tree) / CLOCK_TICK


def processTree(root: int) -> list[tuple[int, int]]:
    """(pid, utime+stime+cutime+cstime ticks) of process root and every process below it (/proc); [] if gone."""
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
        return []
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append((pid, ticks.get(pid, 0)))
        todo.extend(children.get(pid, ()))
    return found


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
                  timeout: float, phase: str = "timed run", recipients: int = 1) -> float:
    """Send messages with smtp-source; return its wall time in seconds.

    smtp-source's -m is the total over all sessions.  By default it opens a
    new connection for every message (MAIL/RCPT/DATA/QUIT); -d keeps the
    connection and sends the next message over it; -r N gives each message
    N recipients.
    """
    argv = [findProgram("smtp-source"),
            "-s", str(min(sessions, messages)), "-m", str(messages), "-l", str(size),
            "-f", SENDER, "-t", RECIPIENT, "-M", "bench-client.example"]
    if recipients != 1:
        argv += ["-r", str(recipients)]
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
