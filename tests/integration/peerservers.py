"""Peers for the SMTP/LMTP client's integration tests (tests/integration/test_client_peers.py).

Real programs, each run as a child of the test and stopped by its pid:

    SmtpSink        Postfix's smtp-sink on any loopback address and port
                    (port 25 on 127.x.y.z for MX hosts), dumping each
                    message into a directory under /tmp (it drops privileges
                    to the postfix user, so pytest's tmp_path will not do).
    Dnsmasq         a DNS server on 127.0.0.1:PORT serving MX, A, null MX
                    records, with per-domain forwarding; it reads no
                    configuration file (--conf-file=/dev/null), no
                    /etc/hosts, no /etc/resolv.conf, writes no pid file and
                    never touches the system resolver.
    Dovecot         a private Dovecot with its own minimal configuration,
                    base_dir and state_dir in a temporary directory, serving
                    LMTP on a UNIX socket and on 127.0.0.1:PORT.

and servers written here, threads of the test process:

    RcodeResponder      a UDP DNS server that answers SERVFAIL (or another
                        error) to everything, or never answers at all.
    FakeSMTPServer      speaks just enough SMTP and then, at a chosen phase,
                        stalls (says nothing, reads nothing more) or drops the
                        connection.
    ScriptedSMTPServer  SMTP or LMTP whose reply at each phase comes from a
                        script: malformed replies, 552 after some RCPTs,
                        floods of reply text.

Every wait is bounded (a TimeoutError or AssertionError says what did not
happen); every stop() is bounded and idempotent.
"""

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

STOP_TIMEOUT = 10


def waitFor(predicate, timeout=30.0, what="condition", interval=0.05):
    """Poll C{predicate} until it returns something true; return that, or fail after C{timeout}s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def freePort(address="127.0.0.1", udp=False):
    """A port free for TCP (and for UDP too with C{udp}) on C{address}."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((address, 0))
            port = s.getsockname()[1]
        if not udp:
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((address, port))
            return port
        except OSError:
            continue
    raise AssertionError("no free port")


def canBind(address, port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def loopbackNet(hosts=8, port=25):
    """
    A prefix "127.A.B" whose addresses .2 to .(hosts+1) can all be bound on
    C{port}, chosen at random so that concurrent test runs do not collide.
    """
    rng = random.SystemRandom()
    for _ in range(100):
        prefix = f"127.{rng.randint(1, 254)}.{rng.randint(0, 254)}"
        if all(canBind(f"{prefix}.{n}", port) for n in range(2, hosts + 2)):
            return prefix
    raise AssertionError(f"found no 127.x.y.0/24 with port {port} free")


def smtpGreets(address, port, timeout=1.0):
    """True if address:port answers with a 220 greeting (then says QUIT)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            ok = s.recv(512).startswith(b"220")
            with contextlib.suppress(OSError):
                s.sendall(b"QUIT\r\n")
            return ok
    except OSError:
        return False


def stopProcess(process, timeout=STOP_TIMEOUT, group=False):
    """SIGTERM (to its process group with C{group}), wait, then SIGKILL; never hangs."""
    if process is None or process.poll() is not None:
        return process.returncode if process else None

    def send(sig):
        try:
            if group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    send(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        return process.wait(timeout)


def publicTempDir(prefix):
    """A fresh directory under /tmp that unprivileged daemons can reach and write (0777)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o777)
    return path


# -- smtp-sink ------------------------------------------------------------------------


class SmtpSink:
    """
    Postfix's smtp-sink on ADDRESS:PORT; every message dumped into its own
    file in self.dump (one file per transaction, -d).  C{options} go to
    smtp-sink before the address (e.g. "-r", "RCPT" or "-f", "MAIL").
    """

    def __init__(self, address="127.0.0.1", port=None, options=(), dump=None):
        self.address = address
        self.port = port or freePort(address)
        self.options = tuple(options)
        self.ownDump = dump is None
        self.dump = Path(dump) if dump is not None else publicTempDir("mta-sink-")
        self.process = None
        self.stderr = None

    def start(self, timeout=15.0):
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [SMTP_SINK, "-u", "postfix", "-d", f"{self.dump}/%H%M%S.", *self.options,
             f"{self.address}:{self.port}", "64"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr,
        )

        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"smtp-sink on {self.address}:{self.port} exited: {self.errors()}")
            return self._listening()

        waitFor(ready, timeout, f"smtp-sink on {self.address}:{self.port}")
        return self

    def _listening(self):
        # smtp-sink with -r CONNECT or -q CONNECT does not greet with 220: a
        # plain connect tells that it listens.
        try:
            with socket.create_connection((self.address, self.port), timeout=1):
                return True
        except OSError:
            return False

    def errors(self):
        if self.stderr is None:
            return ""
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")

    def files(self):
        """The dump files, oldest first by name (HHMMSS.random)."""
        if not self.dump.is_dir():
            return []
        return sorted(p for p in self.dump.iterdir() if p.is_file())

    def messages(self):
        """The dumped transactions as bytes (LF line ends, smtp-sink's X- headers first)."""
        return [p.read_bytes() for p in self.files()]

    def stop(self):
        stopProcess(self.process)
        if self.stderr is not None:
            self.stderr.close()
            self.stderr = None
        if self.ownDump:
            shutil.rmtree(self.dump, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def envelopeOf(dumped):
    """(MAIL args, [RCPT args]) from a message dumped by smtp-sink: ("<a@b> SIZE=1", ["<c@d> ORCPT=..."])."""
    mail, rcpts = None, []
    for line in dumped.split(b"\n"):
        if line.startswith(b"X-Mail-Args: "):
            mail = line[len(b"X-Mail-Args: "):].decode()
        elif line.startswith(b"X-Rcpt-Args: "):
            rcpts.append(line[len(b"X-Rcpt-Args: "):].decode())
        elif line.startswith(b"Received: "):
            break
    return mail, rcpts


# -- DNS --------------------------------------------------------------------------


class Dnsmasq:
    """
    dnsmasq on 127.0.0.1:PORT (UDP and TCP) as an authoritative-looking
    stub: only its command-line records for the domains in C{local} (names
    there that it does not know get NXDOMAIN, known names without the type
    asked for get NODATA), plus per-domain forwarding (C{servers}: domain ->
    "address#port", or "#" for "the default servers", of which there are
    none: REFUSED).  C{mx}: (domain, exchange, preference) with exchange "."
    for a null MX; C{hosts}: (name, address), with its PTR record; C{ptr}:
    (reverse name, target) PTR records alone; C{txt}: (name, text).
    """

    def __init__(self, mx=(), hosts=(), local=("example",), servers=(), directory=None, txt=(), ptr=()):
        self.ptr = tuple(ptr)
        self.port = freePort(udp=True)
        self.txt = tuple(txt)  # (name, text): in a configuration file, where a text may hold commas
        self.mx = tuple(mx)
        self.hosts = tuple(hosts)
        self.local = tuple(local)
        self.servers = tuple(servers)
        self.ownDirectory = directory is None
        self.directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="mta-dnsmasq-"))
        self.log = self.directory / "dnsmasq.log"
        self.process = None

    def arguments(self):
        args = [
            DNSMASQ,
            "--keep-in-foreground",
            f"--conf-file={self._confFile()}",  # not /etc/dnsmasq.conf nor /etc/dnsmasq.d
            "--no-resolv",  # no /etc/resolv.conf: no upstream servers at all
            "--no-poll",
            "--no-hosts",  # no /etc/hosts
            "--pid-file=",  # no pid file
            "--leasefile-ro",  # no DHCP lease file (and no DHCP is configured)
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--log-queries",
            "--log-facility=-",  # stderr, which is the log file below
        ]
        args += [f"--local=/{d}/" for d in self.local]
        args += [f"--server=/{d}/{s}" for d, s in self.servers]
        args += [f"--mx-host={d},{x},{p}" for d, x, p in self.mx]
        args += [f"--host-record={n},{a}" for n, a in self.hosts]
        args += [f"--ptr-record={n},{t}" for n, t in self.ptr]
        return args

    def _confFile(self):
        """/dev/null, or a file of the txt-record lines (dnsmasq splits a command-line TXT text at commas)."""
        if not self.txt:
            return "/dev/null"
        path = self.directory / "dnsmasq.conf"
        path.write_text("".join(f'txt-record={name},"{text}"\n' for name, text in self.txt))
        return str(path)

    def start(self, timeout=15.0):
        self._logFile = open(self.log, "ab")
        self.process = subprocess.Popen(self.arguments(), stdin=subprocess.DEVNULL, stdout=self._logFile,
                                        stderr=subprocess.STDOUT)

        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"dnsmasq exited with {self.process.returncode}:\n{self.logText()}")
            return self.answers()

        waitFor(ready, timeout, f"dnsmasq on 127.0.0.1:{self.port}")
        return self

    def answers(self):
        import dns.exception
        import dns.message
        import dns.query

        try:
            dns.query.udp(dns.message.make_query("ready.invalid", "A"), "127.0.0.1", port=self.port, timeout=0.5)
            return True
        except (dns.exception.DNSException, OSError):
            return False

    def query(self, name, rdtype):
        """(rcode text, [answer rrset texts]) of a query to this server (for checks and messages)."""
        import dns.message
        import dns.query
        import dns.rcode

        response = dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=self.port, timeout=3)
        return dns.rcode.to_text(response.rcode()), [rrset.to_text() for rrset in response.answer]

    def logText(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        stopProcess(self.process)
        if getattr(self, "_logFile", None) is not None:
            self._logFile.close()
            self._logFile = None
        if self.ownDirectory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class RcodeResponder:
    """
    A UDP DNS server on 127.0.0.1:PORT (a thread) that answers every query
    with the error C{rcode} (SERVFAIL, REFUSED, ...), or with None reads the
    queries and never answers.  self.queries lists the questions seen.
    """

    def __init__(self, rcode="SERVFAIL"):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.rcode = rcode
        self.queries = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dns-rcode-responder", daemon=True)

    def _serve(self):
        import dns.message
        import dns.rcode

        while not self._stopping.is_set():
            try:
                data, peer = self.socket.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:
                continue
            self.queries.append(str(query.question[0]) if query.question else "?")
            if self.rcode is None:
                continue
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.from_text(self.rcode))
            with contextlib.suppress(OSError):
                self.socket.sendto(response.to_wire(), peer)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stopping.set()
        self._thread.join(STOP_TIMEOUT)
        self.socket.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# -- a fake SMTP server that stalls or drops ----------------------------------------------

# The phases, in session order; "stall at P" means: answer everything before P, then say
# nothing and read nothing more.  The client's timeout for each:
PHASES = {
    "greeting": "smtp_helo_timeout",  # connected, no 220
    "ehlo": "smtp_helo_timeout",  # no reply to EHLO
    "mail": "smtp_mail_timeout",  # no reply to MAIL FROM
    "rcpt": "smtp_rcpt_timeout",  # no reply to RCPT TO
    "data": "smtp_data_init_timeout",  # no reply to DATA
    "body": "smtp_data_xfer_timeout",  # 354, then the content is not read (client's writes block)
    "dot": "smtp_data_done_timeout",  # the whole message read, no reply to "."
}


class _ThreadedServer:
    """
    A listening socket on C{address}:C{port} (a free port by default) with an
    accepting thread and a thread per connection running self._session(client,
    number); counts self.connections.  stop() closes everything and joins the
    threads.  C{receiveBuffer}: a small SO_RCVBUF, so that a client's writes
    soon block.
    """

    threadName = "threaded-server"

    def _listen(self, address="127.0.0.1", port=None, receiveBuffer=None):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if receiveBuffer:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receiveBuffer)
        self.address = address
        self.listener.bind((address, port or 0))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._clients = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = []
        self._acceptor = threading.Thread(target=self._accept, name=self.threadName, daemon=True)

    def start(self):
        self._acceptor.start()
        return self

    def _accept(self):
        while not self._stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                self._clients.append(client)
            thread = threading.Thread(target=self._session, args=(client, number), daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self):
        self._stopping.set()
        self._acceptor.join(STOP_TIMEOUT)
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            with contextlib.suppress(OSError):
                client.close()
        for thread in self._threads:
            thread.join(STOP_TIMEOUT)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class FakeSMTPServer(_ThreadedServer):
    """
    A threaded SMTP server on ADDRESS:PORT (127.0.0.1, a free port by default) that speaks SMTP until
    C{phase} (a key of PHASES) and then C{action}s:

      stall   says nothing more and reads nothing more, keeping the
              connection open until the client closes it or stop();
      drop    closes the connection (for "body": after reading C{dropAfter}
              bytes of the content).

    With C{pipelining} EHLO announces PIPELINING.  self.connections counts
    the connections; self.commands lists the command lines read (all
    connections); self.phasesReached counts how often the phase was reached.
    For "body" the listening socket gets a small receive buffer so that the
    client's writes soon block (stall) or are still going on (drop).
    """

    def __init__(self, phase, action="stall", pipelining=False, dropAfter=65536, port=None, address="127.0.0.1"):
        if phase not in PHASES:
            raise ValueError(phase)
        self.phase = phase
        self.action = action
        self.pipelining = pipelining
        self.dropAfter = dropAfter
        self.threadName = f"fake-smtp-{phase}"
        self._listen(address, port, receiveBuffer=4096 if phase == "body" else None)
        self.phasesReached = 0
        self.commands = []
        self.bodyBytes = 0

    def _reached(self, connection):
        with self._lock:
            self.phasesReached += 1
        if self.action == "drop":
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        else:
            self._stopping.wait()  # silence until stop() (or the client goes away: nothing more is read)
        return None

    def _session(self, connection, number):
        connection.settimeout(1.0)
        buffer = b""

        def readLine():
            nonlocal buffer
            while b"\r\n" not in buffer:
                if self._stopping.is_set():
                    raise EOFError
                try:
                    chunk = connection.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    raise EOFError
                buffer += chunk
            line, buffer = buffer.split(b"\r\n", 1)
            self.commands.append(line.decode("latin-1"))
            return line

        def reply(text):
            connection.sendall(text.encode() + b"\r\n")

        try:
            with connection:
                if self.phase == "greeting":
                    return self._reached(connection)
                reply("220 fake.test ESMTP stalling test server")
                while True:
                    line = readLine()
                    verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
                    if verb in (b"EHLO", b"HELO", b"LHLO"):
                        if self.phase == "ehlo":
                            return self._reached(connection)
                        lines = ["fake.test", "SIZE 10240000", "8BITMIME", "ENHANCEDSTATUSCODES"]
                        if self.pipelining:
                            lines.append("PIPELINING")
                        reply("\r\n".join(f"250-{l}" for l in lines[:-1]) + f"\r\n250 {lines[-1]}")
                    elif verb == b"MAIL":
                        if self.phase == "mail":
                            return self._reached(connection)
                        reply("250 2.1.0 Ok")
                    elif verb == b"RCPT":
                        if self.phase == "rcpt":
                            return self._reached(connection)
                        reply("250 2.1.5 Ok")
                    elif verb == b"DATA":
                        if self.phase == "data":
                            return self._reached(connection)
                        reply("354 End data with <CR><LF>.<CR><LF>")
                        if self.phase == "body":
                            if self.action == "stall":
                                return self._reached(connection)
                            # Read some of the content, then drop.
                            while len(buffer) < self.dropAfter:
                                try:
                                    chunk = connection.recv(65536)
                                except socket.timeout:
                                    continue
                                if not chunk:
                                    break
                                buffer += chunk
                                if b"\r\n.\r\n" in buffer:
                                    break
                            self.bodyBytes = len(buffer)
                            return self._reached(connection)
                        while b"\r\n.\r\n" not in buffer and not buffer.startswith(b".\r\n"):
                            try:
                                chunk = connection.recv(65536)
                            except socket.timeout:
                                if self._stopping.is_set():
                                    return None
                                continue
                            if not chunk:
                                return None
                            buffer += chunk
                        end = buffer.find(b"\r\n.\r\n") + 5 if not buffer.startswith(b".\r\n") else 3
                        self.bodyBytes = end
                        buffer = buffer[end:]
                        if self.phase == "dot":
                            return self._reached(connection)
                        reply("250 2.0.0 Ok: queued as FAKE")
                    elif verb == b"RSET":
                        reply("250 2.0.0 Ok")
                    elif verb == b"QUIT":
                        reply("221 2.0.0 Bye")
                        return None
                    else:
                        reply("502 5.5.2 Error: command not recognized")
        except (EOFError, OSError):
            return None



# -- a scripted SMTP/LMTP server -------------------------------------------------------------


class ScriptedSession:
    """What a scripted reply sees: the connection's number, this transaction's recipients, the commands."""

    def __init__(self, number):
        self.number = number  # 1 for the first connection
        self.rcpts = []  # RCPT TO arguments of this transaction, in order (accepted or not)
        self.accepted = []  # those answered 2xx
        self.transactions = 0  # finished with "." on this connection
        self.line = b""  # the command line being answered


class ScriptedSMTPServer(_ThreadedServer):
    """
    A threaded SMTP (or, with C{lmtp}, LMTP) server on 127.0.0.1:PORT whose
    replies come from C{script}: phase -> reply, for the phases "greeting",
    "ehlo" (EHLO, HELO and LHLO), "mail", "rcpt", "data", "dot" (after the
    content), "rset", "quit".  A reply is bytes (sent as they are: CRLFs
    included), or a callable f(session) -> bytes, or a callable returning
    an iterator of bytes, sent piece after piece (a flood) until the client
    goes away, stop(), or C{floodSeconds} pass.  Unscripted phases get
    ordinary positive replies (LMTP: one per accepted recipient after
    ".").  Whether a reply "accepts" a recipient is read from its first
    digit.  self.messages: (mail, [accepted rcpts], content) of each
    transaction that got to "."; self.commands: every command line;
    self.connections; self.bytesSent (of floods).
    """

    threadName = "scripted-smtp"
    EHLO = (b"250-scripted.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n"
            b"250 SIZE 10240000\r\n")

    def __init__(self, script=None, lmtp=False, floodSeconds=30.0):
        self.script = dict(script or {})
        self.lmtp = lmtp
        self.floodSeconds = floodSeconds
        self._listen()
        self.commands = []
        self.messages = []
        self.bytesSent = 0

    def _default(self, phase, session):
        if phase == "greeting":
            return b"220 scripted.test " + (b"LMTP" if self.lmtp else b"ESMTP") + b" ready\r\n"
        if phase == "ehlo":
            return self.EHLO
        if phase == "dot":
            if self.lmtp:
                return b"".join(b"250 2.0.0 %s Saved\r\n" % r for r in session.accepted)
            return b"250 2.0.0 Ok: queued as SCRIPTED\r\n"
        return {"mail": b"250 2.1.0 Ok\r\n", "rcpt": b"250 2.1.5 Ok\r\n", "data": b"354 go ahead\r\n",
                "rset": b"250 2.0.0 Ok\r\n", "quit": b"221 2.0.0 Bye\r\n"}[phase]

    def _answer(self, connection, phase, session):
        """Send the reply for C{phase}; its first bytes (for the caller to judge)."""
        reply = self.script.get(phase)
        if reply is None:
            reply = self._default(phase, session)
        elif callable(reply):
            reply = reply(session)
        if isinstance(reply, (bytes, bytearray)):
            connection.sendall(reply)
            return bytes(reply[:4])
        deadline = time.monotonic() + self.floodSeconds
        first = b""
        for piece in reply:
            if self._stopping.is_set() or time.monotonic() > deadline:
                break
            first = first or bytes(piece[:4])
            connection.sendall(piece)
            with self._lock:
                self.bytesSent += len(piece)
        raise EOFError  # after a flood the conversation is over

    def _session(self, connection, number):
        session = ScriptedSession(number)
        connection.settimeout(1.0)
        buffer = b""

        def receive():
            nonlocal buffer
            while True:
                if self._stopping.is_set():
                    raise EOFError
                try:
                    chunk = connection.recv(65536)
                except socket.timeout:
                    continue
                if not chunk:
                    raise EOFError
                buffer += chunk
                return

        def readLine():
            nonlocal buffer
            while b"\r\n" not in buffer:
                receive()
            line, buffer = buffer.split(b"\r\n", 1)
            with self._lock:
                self.commands.append(line.decode("latin-1"))
            return line

        mail = None
        try:
            with connection:
                self._answer(connection, "greeting", session)
                while True:
                    line = readLine()
                    session.line = line
                    verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper()
                    if verb in (b"EHLO", b"HELO", b"LHLO"):
                        self._answer(connection, "ehlo", session)
                    elif verb == b"MAIL":
                        mail = line[10:].decode("latin-1")
                        session.rcpts, session.accepted = [], []
                        self._answer(connection, "mail", session)
                    elif verb == b"RCPT":
                        rcpt = line[8:].split(b" ", 1)[0]
                        session.rcpts.append(rcpt)
                        if self._answer(connection, "rcpt", session)[:1] == b"2":
                            session.accepted.append(rcpt)
                    elif verb == b"DATA":
                        if self._answer(connection, "data", session)[:3] != b"354":
                            continue
                        while b"\r\n.\r\n" not in b"\r\n" + buffer:
                            receive()
                        end = (b"\r\n" + buffer).find(b"\r\n.\r\n")
                        content, buffer = buffer[:end], buffer[end + 3:]
                        with self._lock:
                            self.messages.append((mail, [r.decode("latin-1") for r in session.accepted], content))
                        session.transactions += 1
                        self._answer(connection, "dot", session)
                    elif verb == b"RSET":
                        session.rcpts, session.accepted = [], []
                        self._answer(connection, "rset", session)
                    elif verb == b"QUIT":
                        self._answer(connection, "quit", session)
                        return
                    else:
                        connection.sendall(b"502 5.5.2 Error: command not recognized\r\n")
        except (EOFError, OSError):
            return



# -- Dovecot --------------------------------------------------------------------------


DOVECOT_CONF = """\
# A private Dovecot for mta's LMTP client tests (tests/integration/peerservers.py).
# Nothing here refers to /etc/dovecot; sockets, pid and state live under {base}.
base_dir = {base}/run
state_dir = {base}/state
instance_name = mta-test-dovecot-{tag}
hostname = lmtp.test
log_path = {base}/dovecot.log
info_log_path = {base}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
shutdown_clients = yes
mail_location = maildir:{base}/mail/%n
first_valid_uid = 1
{plugins}userdb {{
  driver = passwd-file
  args = {base}/users
}}
passdb {{
  driver = passwd-file
  args = {base}/users
}}
service lmtp {{
  unix_listener {base}/lmtp {{
    mode = 0666
  }}
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
"""


class _DovecotProcess:
    """
    A private ``dovecot -F -c self.config`` run as a child in its own process
    group, its output in a temporary file and its log at self.log, under
    self.base (removed at stop()).  Subclasses write the configuration and say
    when the service is ready.
    """

    def _launch(self, ready, timeout, what):
        self.output = tempfile.TemporaryFile()
        self.process = subprocess.Popen([DOVECOT, "-F", "-c", str(self.config)], stdin=subprocess.DEVNULL,
                                        stdout=self.output, stderr=subprocess.STDOUT, start_new_session=True)

        def check():
            if self.process.poll() is not None:
                raise AssertionError(f"dovecot exited with {self.process.returncode}:\n{self.errors()}")
            return ready()

        waitFor(check, timeout, what)
        return self

    def errors(self):
        text = ""
        if self.output is not None:
            self.output.seek(0)
            text = self.output.read().decode("utf-8", "replace")
        return text + self.logText()

    def logText(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        # SIGTERM to the master's process group (it started a new session): the
        # master stops its children; whatever is left gets SIGKILL.
        stopProcess(self.process, group=True)
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self.output is not None:
            self.output.close()
            self.output = None
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Dovecot(_DovecotProcess):
    """
    A private Dovecot serving LMTP on the UNIX socket self.socketPath and on
    127.0.0.1:self.port, for the users (full addresses) given; their
    Maildirs are self.maildir(user).  C{quotas}: user -> storage limit
    (e.g. "1K"), enforced by the quota plugin when a message is saved,
    i.e. in the per-recipient answers after the final "." (552 5.2.2, or
    452 4.2.2 with C{quotaTempfail}).  Run with ``dovecot -F -c CONF`` as a
    child in its own process group; mail is stored as user nobody.
    """

    def __init__(self, users, quotas=None, quotaTempfail=False):
        self.users = tuple(users)
        self.quotas = dict(quotas or {})
        self.quotaTempfail = quotaTempfail
        self.base = publicTempDir("mta-dovecot-")
        os.chmod(self.base, 0o755)
        self.port = freePort()
        self.socketPath = str(self.base / "lmtp")
        self.config = self.base / "dovecot.conf"
        self.log = self.base / "dovecot.log"
        self.process = None
        self.output = None

    def maildir(self, user):
        return self.base / "mail" / user.split("@")[0]

    def write(self):
        for name in ("run", "state"):
            (self.base / name).mkdir(mode=0o755)
        mail = self.base / "mail"
        mail.mkdir()
        os.chmod(mail, 0o777)
        nobody = 65534
        with open(self.base / "users", "w") as f:
            for user in self.users:
                extra = f"userdb_quota_rule=*:storage={self.quotas[user]}" if user in self.quotas else ""
                f.write(f"{user}::{nobody}:{nobody}::{self.maildir(user)}::{extra}\n")
        plugins = ""
        if self.quotas:
            plugins = "mail_plugins = $mail_plugins quota\nplugin {\n  quota = maildir:User quota\n}\n"
            plugins += f"quota_full_tempfail = {'yes' if self.quotaTempfail else 'no'}\n"
        self.config.write_text(DOVECOT_CONF.format(base=self.base, port=self.port, tag=self.base.name,
                                                   plugins=plugins))

    def start(self, timeout=20.0):
        self.write()
        return self._launch(lambda: os.path.exists(self.socketPath) and smtpGreets("127.0.0.1", self.port),
                            timeout, "dovecot's LMTP listeners")


def maildirMessages(maildir):
    """The messages (bytes) delivered to a Maildir's new/ and cur/."""
    found = []
    for sub in ("new", "cur"):
        path = Path(maildir) / sub
        if path.is_dir():
            found += [p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()]
    return found
