"""A counting SMTP sink with STARTTLS, for ``bench/run.py relay --relay-tls``.

    python3 bench/tlssink.py --cert CERT --key KEY [--require-tls] 127.0.0.1:PORT

smtp-sink has no TLS, so the relay benchmark's next hop over STARTTLS is
this small asyncio server: it answers EHLO with PIPELINING, 8BITMIME and
STARTTLS (before TLS), takes MAIL, RCPT, DATA, RSET, NOOP and QUIT
(pipelined too), and discards the content.  All connections share one
TLS context, so that a client can resume its session (TLS 1.3 tickets or
TLS 1.2 session ids).  With --require-tls, MAIL before STARTTLS gets 530.

After each event it writes one line to stdout:

    conn=C tls=T resumed=R mesg=M

connections accepted (the harness's probe too), TLS handshakes finished,
of them resumed (SSL_session_reused), and messages received (the final
"." answered with 250).  Only 127.0.0.1 (or another loopback address) is
accepted as the listening address.

TlsSink (for bench/run.py) starts it as a child process and reads those
lines, with the shape of run.py's SmtpSink (start, count, waitFor, stop)
and the last counters in ``counters``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import re
import ssl
import subprocess
import sys
import threading
from pathlib import Path

MAX_LINE = 4096


class Counters:
    def __init__(self):
        self.conn = self.tls = self.resumed = self.mesg = 0

    def report(self):
        sys.stdout.write(f"conn={self.conn} tls={self.tls} resumed={self.resumed} mesg={self.mesg}\n")
        sys.stdout.flush()


async def session(reader, writer, context, counters, requireTls):
    counters.conn += 1
    counters.report()
    tls = False

    def send(text):
        writer.write(text.encode("ascii"))

    try:
        send("220 bench-tls-sink.example ESMTP\r\n")
        while True:
            line = await reader.readline()
            if not line:
                return
            if len(line) > MAX_LINE:
                send("500 5.5.0 line too long\r\n")
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO", b"LHLO"):
                keywords = ["PIPELINING", "8BITMIME", "SIZE 0"] + ([] if tls else ["STARTTLS"])
                send("250-bench-tls-sink.example\r\n" + "".join(
                    f"250{' ' if i == len(keywords) - 1 else '-'}{k}\r\n" for i, k in enumerate(keywords)))
            elif line.upper().startswith(b"STARTTLS") and not tls:
                send("220 2.0.0 Ready to start TLS\r\n")
                await writer.drain()
                if reader._buffer:  # noqa: SLF001 - plaintext pipelined after STARTTLS is never used
                    reader._buffer.clear()
                await writer.start_tls(context)
                tls = True
                counters.tls += 1
                if writer.get_extra_info("ssl_object").session_reused:
                    counters.resumed += 1
                counters.report()
            elif verb == b"MAIL":
                send("530 5.7.0 Must issue a STARTTLS command first\r\n" if requireTls and not tls
                     else "250 2.1.0 Ok\r\n")
            elif verb == b"RCPT":
                send("250 2.1.5 Ok\r\n")
            elif verb == b"DATA":
                send("354 End data with <CR><LF>.<CR><LF>\r\n")
                await writer.drain()
                while True:
                    data = await reader.readline()
                    if not data:
                        return
                    if data == b".\r\n":
                        break
                counters.mesg += 1
                counters.report()
                send("250 2.0.0 Ok: queued\r\n")
            elif verb in (b"RSET", b"NOOP"):
                send("250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                send("221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:
                send("502 5.5.2 Error: command not recognized\r\n")
            if not reader._buffer:  # noqa: SLF001 - flush once per batch of pipelined commands
                await writer.drain()
    except (ConnectionError, ssl.SSLError, asyncio.LimitOverrunError, ValueError):
        return
    finally:
        writer.close()


async def serve(host, port, context, requireTls):
    counters = Counters()
    server = await asyncio.start_server(lambda r, w: session(r, w, context, counters, requireTls),
                                        host, port, limit=MAX_LINE * 2, backlog=256)
    async with server:
        await server.serve_forever()


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench/tlssink.py", description="A counting SMTP sink with STARTTLS.")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--require-tls", action="store_true", help="530 to MAIL before STARTTLS")
    p.add_argument("address", help="127.0.0.1:PORT (loopback only)")
    args = p.parse_args(argv)
    host, _, port = args.address.rpartition(":")
    if not ipaddress.ip_address(host.strip("[]")).is_loopback:
        p.error("the sink listens on loopback only")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    try:
        asyncio.run(serve(host.strip("[]"), int(port), context, args.require_tls))
    except KeyboardInterrupt:
        return 0
    return 0


# -- the harness side -------------------------------------------------------------------


class TlsSink:
    """This sink as a child process of bench/run.py; ``count`` is its message count."""

    PATTERN = re.compile(rb"conn=(\d+) tls=(\d+) resumed=(\d+) mesg=(\d+)")

    def __init__(self, port, start_timeout, cert, key):
        self.port = port
        self.start_timeout = start_timeout
        self.cert, self.key = cert, key
        self.proc = None
        self.count = 0
        self.counters = {"conn": 0, "tls": 0, "resumed": 0, "mesg": 0}
        self._thread = None

    def start(self):
        from loads import BenchFailure
        from postfix_instance import waitForGreeting

        argv = [sys.executable, str(Path(__file__).resolve()), "--cert", str(self.cert), "--key", str(self.key),
                "--require-tls", f"127.0.0.1:{self.port}"]
        print(f"bench: sink: starting {' '.join(argv)}", file=sys.stderr, flush=True)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        try:
            waitForGreeting("127.0.0.1", self.port, self.start_timeout, alive=lambda: self.proc.poll() is None)
        except (RuntimeError, TimeoutError) as e:
            self.stop()
            raise BenchFailure(f"bench/tlssink.py did not start: {e}") from None

    def _read(self):
        buf = b""
        while True:
            data = self.proc.stdout.read1(4096) if self.proc else b""
            if not data:
                return
            buf = (buf + data)[-4096:]
            matches = self.PATTERN.findall(buf)
            if matches:
                conn, tls, resumed, mesg = map(int, matches[-1])
                self.counters = {"conn": conn, "tls": tls, "resumed": resumed, "mesg": mesg}
                self.count = mesg

    def snapshot(self):
        return dict(self.counters)

    def waitFor(self, target, timeout, stall):
        from loads import waitForCount

        return waitForCount(self, target, timeout, stall, "bench/tlssink.py")

    def stop(self):
        from loads import stopProcessGroup

        if self.proc is not None:
            stopProcessGroup(self.proc, grace=5)
            if self._thread is not None:
                self._thread.join(5)
            self.proc.stdout.close()
            self.proc = None


if __name__ == "__main__":
    sys.exit(main())
