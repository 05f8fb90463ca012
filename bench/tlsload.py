"""A STARTTLS load generator: N messages over S parallel SMTP sessions, each in TLS.

    python bench/tlsload.py [--messages N] [--sessions S] [--size BYTES] [--reuse]
                            [--cafile CERT --servername NAME] [--json] HOST:PORT

Postfix's smtp-source cannot do TLS, so the TLS benchmark (bench/run.py
accept --tls) sends with this instead.  Each of S threads runs sessions:

  default    one message per connection, as smtp-source without -d: connect,
             220, EHLO, STARTTLS, 220, a full TLS handshake (no session
             resumption), EHLO again, MAIL, RCPT, DATA, the message, ".",
             QUIT; so every message costs the server one handshake.
  --reuse    as smtp-source -d: one connection and one handshake per session,
             then MAIL, RCPT, DATA, ... for message after message over it.

Every reply is checked: 220 greeting and STARTTLS, 250 EHLO (which must
offer STARTTLS before TLS), 250 MAIL and RCPT, 354 DATA and 250 after the
message; any other reply, a timeout or a TLS error fails the message, and the
exit status is 1 unless all N got their 250.  The time is the wall time from
the first connection to the last reply.  With --cafile the server's
certificate is verified against that file (and --servername), which proves
that both servers of a comparison present the same certificate; without it
nothing is verified.

The client is Python's ssl module (OpenSSL) in threads; the handshake and the
record layer run in C with the GIL released, but the SMTP dialogue is Python:
on a small machine the client takes CPU from the server, the same for every
server measured.  The result (stdout) is one line, or a JSON object with
--json: messages, ok, failed, seconds, rate, connections, the TLS version and
cipher of the first session, and the first few errors.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import threading
import time

SENDER = "sender@bench.example"
RECIPIENT = "rcpt@bench.example"
HELO = "bench-client.example"


class SmtpError(Exception):
    pass


class Session:
    """One SMTP connection, plaintext until startTls()."""

    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def reply(self, expect):
        lines = []
        while True:
            line = self.file.readline(4096)
            if not line:
                raise SmtpError(f"connection closed (expected {expect})")
            lines.append(line.decode("latin-1").rstrip("\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                break
        code = lines[-1][:3]
        if code != expect:
            raise SmtpError(f"expected {expect}, got: {lines[-1][:200]}")
        return lines

    def command(self, text, expect):
        self.sock.sendall(text.encode("ascii") + b"\r\n")
        return self.reply(expect)

    def startTls(self, context, servername):
        lines = self.command(f"EHLO {HELO}", "250")
        if not any(l[4:].upper().startswith("STARTTLS") for l in lines[1:]):
            raise SmtpError("the server does not offer STARTTLS")
        self.command("STARTTLS", "220")
        self.file.close()
        self.sock = context.wrap_socket(self.sock, server_hostname=servername)
        self.file = self.sock.makefile("rb")
        self.command(f"EHLO {HELO}", "250")
        return self.sock.version(), self.sock.cipher()[0]

    def send(self, message):
        self.command(f"MAIL FROM:<{SENDER}>", "250")
        self.command(f"RCPT TO:<{RECIPIENT}>", "250")
        self.command("DATA", "354")
        self.sock.sendall(message)
        self.reply("250")

    def close(self, quit=True):
        try:
            if quit:
                self.command("QUIT", "221")
        except (OSError, SmtpError):
            pass
        finally:
            try:
                self.file.close()
                self.sock.close()
            except OSError:
                pass


def makeMessage(size):
    head = (f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: tls bench\r\n"
            f"Message-Id: <tlsload@{HELO}>\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    body = (line * (size // len(line) + 1))[:size]
    if body and not body.endswith(b"\r\n"):
        body = body[:-2] + b"\r\n" if len(body) >= 2 else b"\r\n"
    return head + body + b".\r\n"


class Load:
    def __init__(self, args):
        self.args = args
        host, _, port = args.target.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.message = makeMessage(args.size)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if args.cafile:
            self.context.load_verify_locations(args.cafile)
            self.context.check_hostname = bool(args.servername)
        else:
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE
        self.lock = threading.Lock()
        self.left = args.messages
        self.ok = self.failed = self.connections = 0
        self.errors = []
        self.tls = None

    def take(self):
        with self.lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True

    def record(self, ok, error=None):
        with self.lock:
            if ok:
                self.ok += 1
            else:
                self.failed += 1
                if len(self.errors) < 5:
                    self.errors.append(error)

    def connect(self):
        session = Session(self.host, self.port, self.args.timeout)
        session.reply("220")
        tls = session.startTls(self.context, self.args.servername or None)
        with self.lock:
            self.connections += 1
            if self.tls is None:
                self.tls = tls
        return session

    def worker(self):
        session = None
        while self.take():
            try:
                if session is None:
                    session = self.connect()
                session.send(self.message)
                self.record(True)
            except (OSError, SmtpError, ssl.SSLError) as e:
                self.record(False, f"{type(e).__name__}: {e}")
                if session is not None:
                    session.close(quit=False)
                session = None
                continue
            if not self.args.reuse:
                session.close()
                session = None
        if session is not None:
            session.close()

    def run(self):
        threads = [threading.Thread(target=self.worker, daemon=True)
                   for _ in range(min(self.args.sessions, self.args.messages))]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - t0
        return {
            "messages": self.args.messages, "ok": self.ok, "failed": self.failed,
            "seconds": seconds, "rate": self.ok / seconds if seconds else None,
            "connections": self.connections, "reuse": self.args.reuse,
            "tls": {"version": self.tls[0], "cipher": self.tls[1]} if self.tls else None,
            "errors": self.errors,
        }


def parseArgs(argv):
    p = argparse.ArgumentParser(prog="bench/tlsload.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", "-m", type=int, default=2000)
    p.add_argument("--sessions", "-s", type=int, default=20)
    p.add_argument("--size", "-l", type=int, default=2048, help="message body bytes")
    p.add_argument("--reuse", action="store_true", help="many messages per connection (one handshake per session)")
    p.add_argument("--cafile", help="verify the server's certificate against this file")
    p.add_argument("--servername", help="SNI and the name to verify (with --cafile)")
    p.add_argument("--timeout", type=float, default=60.0, help="per-reply timeout, seconds")
    p.add_argument("--json", action="store_true")
    p.add_argument("target", help="HOST:PORT")
    args = p.parse_args(argv)
    if args.messages < 1 or args.sessions < 1 or args.size < 0 or ":" not in args.target:
        p.error("--messages and --sessions must be positive, --size not negative, the target HOST:PORT")
    return args


def main(argv=None):
    args = parseArgs(argv)
    try:
        result = Load(args).run()
    except (OSError, ssl.SSLError, ValueError) as e:
        print(f"tlsload: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        tls = f", {result['tls']['version']} {result['tls']['cipher']}" if result["tls"] else ""
        print(f"tlsload: {result['ok']}/{result['messages']} messages in {result['seconds']:.3f}s "
              f"({result['rate']:.1f}/s) over {result['connections']} connections{tls}")
        for e in result["errors"]:
            print(f"tlsload: error: {e}", file=sys.stderr)
    return 0 if result["failed"] == 0 and result["ok"] == args.messages else 1


if __name__ == "__main__":
    sys.exit(main())
