"""A private, throw-away Postfix instance for side-by-side benchmarks.

PostfixInstance(port) writes its own main.cf and master.cf into a temporary
directory, with its own queue_directory and data_directory, starts it with
``postfix -c DIR start``, waits until 127.0.0.1:<port> answers with a 220
greeting, and on stop() runs ``postfix -c DIR stop``, makes sure that no
process of the instance is left, and removes the directory.  It is a context
manager; stop() also runs on an exception or Ctrl-C inside the ``with``.

Two configurations, each with or without TLS:

accept (the default)
    Mail for the benchmark domain is accepted and queued exactly as a normal
    Postfix does it: smtpd -> cleanup -> queue file written and fsync()ed ->
    250 (the fsync before 250 is Postfix's default and nothing here turns it
    off).  So that deliveries do not compete with the accept path, the
    benchmark recipients are put on hold with an access(5) HOLD action
    (``check_recipient_access inline:{bench.example=HOLD}``): cleanup
    writes, fsyncs and renames the file into the hold queue before it
    answers; the queue manager never sees it.  Why HOLD and not the others:
      * defer_transports still makes qmgr move every message to the active
        queue, ask the bounce daemon to write a defer logfile and move it to
        the deferred queue, i.e. competing disk work that is not accepting
        (measured here: about half the accept rate of HOLD);
      * a discard transport delivers (deletes) the message, so it would
        still compete and nothing would be left to count afterwards;
      * leaving qmgr out of master.cf makes cleanup stall on every message
        (about 20 messages/s): not Postfix's real accept path;
      * HOLD costs one in-memory access-table lookup, one extra log line and
        one rename per message, and keeps the durability path untouched.

relay (relay_port given)
    No hold; everything is relayed to relayhost = [127.0.0.1]:relay_port by
    Postfix's smtp client with Postfix's default scheduling and
    concurrency.  Used for the end-to-end benchmark against smtp-sink.

with tls=(cert, key)
    smtpd_tls_security_level = may with that certificate and key: smtpd
    offers STARTTLS; everything else about TLS is Postfix's default.

Obstacles this module deals with (found on Debian 12, Postfix 3.7):
  * The postfix command and postfix-script report their errors on stderr
    only when stderr is a terminal (otherwise only to syslog, which a
    container usually lacks): commands run under a pseudo-terminal so that
    their messages can be shown.
  * maillog_file must match maillog_file_prefixes (default /var,
    /dev/stdout): the prefix is set to the instance directory, and a
    postlog service is in master.cf so that the log is written there.
  * Debian's master.cf chroots most daemons into the queue directory, which
    would need copies of /etc files and libraries there: this master.cf
    runs nothing chrooted.
  * data_directory must be owned by mail_owner (postfix-script warns
    otherwise): it is created owned by postfix, mode 0700.  The queue
    directory is created root-owned 0755 and ``postfix check`` (run by
    ``postfix start``) creates its subdirectories with the right owners.
    The temporary directory is made 0755 so that the unprivileged daemons
    and postdrop group programs can reach paths under it.
  * A "-o syslog_name=${syslog_name}/..." override in master.cf (as one
    might copy from Debian's relay line) recurses in postconf ("unreasonable
    macro call nesting") and makes postfix check fail: not used.
  * After "postfix stop" the master's children become orphans and linger
    as zombies of PID 1 for a moment; the harness makes itself a child
    subreaper (prctl) and reaps them, so that no Postfix process is left
    when stop() returns.
  * compatibility_level is set to 3.6 to avoid backwards-compatibility
    warnings and to get current defaults.
  * alternate_config_directories in /etc/postfix/main.cf is only checked
    for unprivileged callers: the harness runs as root (needed anyway to
    start a Postfix master), so the system configuration is not touched.
  * The system Postfix (if any) is never used: all sockets, pid files and
    locks live in the private queue and data directories, and smtpd
    listens only on 127.0.0.1:<port>.
"""

from __future__ import annotations

import os
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BENCH_DOMAIN = "bench.example"

# Queue directories that hold messages (not logs: defer, bounce and trace
# hold per-message logfiles, not messages).
MESSAGE_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")

_SEARCH_DIRS = ("/usr/sbin", "/usr/bin", "/usr/lib/postfix/sbin", "/usr/libexec/postfix", "/sbin")


class PostfixError(RuntimeError):
    """The private Postfix instance could not be set up, started or used."""


def findProgram(name: str) -> str:
    """Return the path of a Postfix program (postfix, smtp-source, ...)."""
    path = shutil.which(name)
    if path:
        return path
    for d in _SEARCH_DIRS:
        candidate = os.path.join(d, name)
        if os.access(candidate, os.X_OK):
            return candidate
    raise PostfixError(f"{name} not found (run bench/setup.sh to install postfix)")


def runCaptured(argv, timeout: float = 60.0, env=None) -> tuple[int, str]:
    """Run argv with stdout and stderr on a pseudo-terminal; return (rc, text).

    Postfix commands write their diagnostics to stderr only when it is a tty.
    The wait is bounded: on timeout the child is killed and rc is -9.
    Processes that the command leaves behind (the Postfix master daemon
    detaches and closes its terminal) do not keep this function waiting.
    """
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
            env=env, start_new_session=True, close_fds=True)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            exited = proc.poll() is not None
            wait = 0.05 if exited else 0.2
            ready, _, _ = select.select([master], [], [], wait)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every slave end is closed
                    data = b""
                if data:
                    chunks.append(data)
                    continue
                if exited:
                    break
            elif exited:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait(5)
                chunks.append(f"\n[killed after {timeout:.0f}s]\n".encode())
                break
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        raise
    finally:
        os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    return proc.returncode, text


def tail(text: str, lines: int = 25) -> str:
    """The last lines of text (Postfix can repeat a warning hundreds of times)."""
    parts = text.strip().splitlines()
    if len(parts) <= lines:
        return "\n".join(parts)
    return f"[... {len(parts) - lines} lines cut ...]\n" + "\n".join(parts[-lines:])


def waitForGreeting(host: str, port: int, timeout: float, alive=lambda: True) -> str:
    """Wait until host:port answers with an SMTP 220 greeting; return it.

    Raises TimeoutError after ``timeout`` seconds, or RuntimeError as soon
    as ``alive()`` turns false (the server process died).
    """
    deadline = time.monotonic() + timeout
    lastError = "no answer"
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"server process exited before {host}:{port} answered")
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.settimeout(max(0.5, min(5.0, deadline - time.monotonic())))
                data = b""
                while b"\n" not in data:
                    more = s.recv(1024)
                    if not more:
                        break
                    data += more
                line = data.decode("latin-1").strip()
                if line.startswith("220"):
                    try:
                        s.sendall(b"QUIT\r\n")
                        s.recv(1024)
                    except OSError:
                        pass
                    return line
                lastError = f"unexpected greeting {line!r}" if line else "connection closed without a greeting"
        except OSError as e:
            lastError = str(e)
        time.sleep(0.1)
    raise TimeoutError(f"{host}:{port} gave no SMTP greeting within {timeout:.0f}s ({lastError})")


def countRegularFiles(directory: Path) -> int:
    """Count the regular files below directory (recursively, no symlinks)."""
    n = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            try:
                if os.lstat(os.path.join(root, name)).st_mode & 0o170000 == 0o100000:
                    n += 1
            except FileNotFoundError:  # moved between queues while we walk
                pass
    return n


def _procEnviron(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _procCwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def becomeSubreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux).

    The Postfix master detaches from ``postfix start``; when it exits, its
    children are orphans too.  Without this they become zombies of PID 1
    for a moment after every stop; with it they are re-parented to us and
    stop() reaps them, so nothing of the instance is left when stop()
    returns.
    """
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _procStat(pid: int) -> tuple[str, str, int] | None:
    """(comm, state, ppid) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    comm = data[data.index("(") + 1:data.rindex(")")]
    fields = data[data.rindex(")") + 2:].split()
    return comm, fields[0], int(fields[1])


MAIN_CF = """\
# main.cf of a private benchmark instance, written by bench/postfix_instance.py.
# Everything not set here is Postfix's default (durability included: cleanup
# fsync()s every queue file before smtpd answers 250).
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop

# Logging to a file in the instance directory (no syslog needed).
maillog_file_prefixes = {base}
maillog_file = {base}/maillog
syslog_name = postfix-bench

myhostname = bench-postfix.localdomain
mydomain = localdomain
myorigin = $myhostname
# No local domains: nothing is ever delivered locally.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
biff = no

# Loopback only.
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtp_bind_address = 127.0.0.1
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
{mode_settings}
"""

ACCEPT_SETTINGS = """\
# Accept benchmark: hold the benchmark recipients so that no delivery
# competes with the accept path (see the module docstring for the reasons).
# smtpd -> cleanup -> queue file + fsync -> rename into hold/ -> 250.
smtpd_recipient_restrictions = check_recipient_access inline:{{ {domain}=HOLD }}, permit_mynetworks, reject_unauth_destination
"""

TLS_SETTINGS = """\
# TLS benchmark: STARTTLS offered (may), the harness's key and certificate.
# Everything else is Postfix's default (session tickets on, no session cache
# database, smtpd_tls_loglevel = 0).
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
"""

RELAY_SETTINGS = """\
# End-to-end benchmark: everything goes to the local smtp-sink.
relayhost = [127.0.0.1]:{relay_port}
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
smtp_tls_security_level = none
"""

RELAY_TLS_SETTINGS = """\
# Outbound TLS (relay_tls): TLS required to the next hop, TLS connections
# reused (tlsproxy(8) encrypts, scache(8) keeps them), sessions resumed
# from tlsmgr(8)'s client cache (in place of RELAY_SETTINGS's
# smtp_tls_security_level = none).
smtp_tls_connection_reuse = yes
smtp_tls_session_cache_database = btree:${data_directory}/smtp_scache
smtp_tls_security_level = encrypt
"""

TLSPROXY_SERVICE = """\
tlsproxy   unix  -       -       n       -       0       tlsproxy
"""

# Debian's master.cf minus chroot (column 5 is "n" everywhere) and minus the
# services nothing here uses (local, virtual, pipe examples, postscreen).
MASTER_CF = """\
# master.cf of a private benchmark instance, written by bench/postfix_instance.py.
# service  type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:{port} inet n       -       n       -       -       smtpd
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
tlsmgr     unix  -       -       n       1000?   1       tlsmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
proxywrite unix  -       -       n       -       1       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
postlog    unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:
    """A private Postfix listening on 127.0.0.1:port, in its own directory."""

    def __init__(self, port: int, relay_port: int | None = None, *,
                 domain: str = BENCH_DOMAIN, keep: bool = False,
                 parent_dir: str | None = None, tls: tuple[str, str] | None = None,
                 relay_tls: bool = False):
        self.port = port
        self.relay_tls = relay_tls  # relay over TLS (encrypt), TLS connections reused via tlsproxy
        self.tls = tls  # (certificate file, key file): STARTTLS with smtpd_tls_security_level = may
        self.relay_port = relay_port
        self.domain = domain
        self.keep = keep
        self.parent_dir = parent_dir
        self.base: Path | None = None
        self.started = False
        self.warnings: list[str] = []
        self.postfix = findProgram("postfix")
        self.postqueue = findProgram("postqueue")

    # -- paths ------------------------------------------------------------

    @property
    def config_dir(self) -> Path:
        return self.base / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.base / "spool"

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def maillog(self) -> Path:
        return self.base / "maillog"

    # -- setup ------------------------------------------------------------

    def create(self) -> None:
        """Write the instance's directories and configuration."""
        if os.geteuid() != 0:
            raise PostfixError("a private Postfix instance must be started as root")
        try:
            owner = pwd.getpwnam("postfix")
        except KeyError:
            raise PostfixError("user 'postfix' does not exist (run bench/setup.sh)") from None
        self.base = Path(tempfile.mkdtemp(prefix="mta-bench-postfix-", dir=self.parent_dir))
        # mkdtemp makes 0700; postfix-owned daemons must reach data/ and
        # spool/ by absolute path, so the instance root must be searchable.
        os.chmod(self.base, 0o755)
        self.config_dir.mkdir(mode=0o755)
        self.queue_dir.mkdir(mode=0o755)
        self.data_dir.mkdir(mode=0o700)
        os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)
        if self.relay_port is None:
            mode = ACCEPT_SETTINGS.format(domain=self.domain)
        else:
            mode = RELAY_SETTINGS.format(relay_port=self.relay_port)
        if self.tls is not None:
            mode += TLS_SETTINGS.format(cert=self.tls[0], key=self.tls[1])
        master = MASTER_CF.format(port=self.port)
        if self.relay_tls:
            mode = mode.replace("smtp_tls_security_level = none\n", "") + RELAY_TLS_SETTINGS
            master += TLSPROXY_SERVICE
        (self.config_dir / "main.cf").write_text(MAIN_CF.format(
            queue=self.queue_dir, data=self.data_dir,
            base=self.base, mode_settings=mode))
        (self.config_dir / "master.cf").write_text(master)

    def _postfix(self, *args: str, timeout: float = 60.0) -> tuple[int, str]:
        env = dict(os.environ)
        env.pop("MAIL_CONFIG", None)
        return runCaptured([self.postfix, "-c", str(self.config_dir), *args],
                           timeout=timeout, env=env)

    def start(self, timeout: float = 30.0) -> None:
        """Create, check and start the instance; wait for its 220 greeting."""
        if self.base is None:
            self.create()
        rc, out = self._postfix("check", timeout=timeout)
        if rc != 0:
            raise PostfixError(f"postfix check failed (rc={rc}):\n{tail(out)}")
        problems = [l for l in out.splitlines() if "warning" in l or "fatal" in l]
        if problems:
            # Not fatal, but a sign that the comparison is not clean.
            self.warnings = problems
        else:
            self.warnings = []
        becomeSubreaper()
        rc, out = self._postfix("start", timeout=timeout)
        self.started = True  # even on failure: stop() cleans up whatever began
        if rc != 0:
            raise PostfixError(f"postfix start failed (rc={rc}):\n{tail(out)}\n{self.logTail()}")
        try:
            waitForGreeting("127.0.0.1", self.port, timeout)
        except (TimeoutError, RuntimeError) as e:
            raise PostfixError(f"private Postfix did not answer: {e}\n{self.logTail()}") from None

    def logTail(self, lines: int = 20) -> str:
        try:
            text = self.maillog.read_text(errors="replace").splitlines()
        except (OSError, TypeError):
            return ""
        return "\n".join(text[-lines:])

    # -- processes ----------------------------------------------------------

    def processes(self) -> list[int]:
        """Pids of the processes that belong to this instance.

        Every Postfix process gets MAIL_CONFIG=<config_dir> in its
        environment (import_environment) and runs with the queue directory
        as its working directory; either one identifies it.
        """
        if self.base is None:
            return []
        marker = b"MAIL_CONFIG=" + str(self.config_dir).encode() + b"\0"
        queue = str(self.queue_dir)
        me = os.getpid()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            pid = int(entry)
            cwd = _procCwd(pid)
            if cwd == queue or cwd.startswith(queue + "/") or marker in _procEnviron(pid):
                pids.append(pid)
        return pids

    def _waitGone(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            left = self.processes()
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)

    def _daemonNames(self) -> set[str]:
        names = {"master", "postfix-script", "postlog"}
        try:
            for line in (self.config_dir / "master.cf").read_text().splitlines():
                fields = line.split()
                if len(fields) >= 8 and not line[0].isspace() and not line.startswith("#"):
                    names.add(os.path.basename(fields[7]))
        except OSError:
            pass
        return names

    def _reapZombies(self, timeout: float = 3.0) -> None:
        """Reap the instance's processes that were re-parented to us."""
        names = self._daemonNames()
        me = os.getpid()
        deadline = time.monotonic() + timeout
        while True:
            pending = 0
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                st = _procStat(int(entry))
                if st is None or st[2] != me or st[0] not in names:
                    continue
                if st[1] == "Z":
                    try:
                        os.waitpid(int(entry), os.WNOHANG)
                    except ChildProcessError:
                        pass
                else:
                    pending += 1
            if not pending or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the instance, make sure no process of it remains, clean up."""
        try:
            if self.started and self.base is not None:
                rc, out = self._postfix("stop", timeout=60)
                left = self._waitGone(10)
                if left:
                    self._postfix("abort", timeout=30)
                    left = self._waitGone(5)
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    for pid in left:
                        try:
                            os.kill(pid, sig)
                        except ProcessLookupError:
                            pass
                    left = self._waitGone(5)
                    if not left:
                        break
                self._reapZombies()
                if left:
                    raise PostfixError(f"Postfix processes still running after stop: {left}")
        finally:
            self.started = False
            if self.base is not None and not self.keep:
                shutil.rmtree(self.base, ignore_errors=True)
                self.base = None

    def __enter__(self) -> "PostfixInstance":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- processes' CPU ------------------------------------------------------

    def masterPid(self) -> int | None:
        """The master's pid, from its pid file in the queue directory."""
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError, TypeError):
            return None

    # -- queue ------------------------------------------------------------

    def queueCount(self) -> int:
        """Messages in the queue, by walking the message queue directories."""
        return sum(countRegularFiles(self.queue_dir / q) for q in MESSAGE_QUEUES
                   if (self.queue_dir / q).is_dir())

    def postqueueCount(self, timeout: float = 120.0) -> int:
        """Messages in the queue according to ``postqueue -p``."""
        env = dict(os.environ)
        env.pop("MAIL_CONFIG", None)
        try:
            p = subprocess.run([self.postqueue, "-c", str(self.config_dir), "-p"],
                               stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise PostfixError(f"postqueue -p did not finish within {timeout:.0f}s") from None
        out = p.stdout.decode("utf-8", "replace")
        if p.returncode != 0:
            raise PostfixError(f"postqueue -p failed (rc={p.returncode}): {p.stderr.decode(errors='replace').strip()}")
        if "Mail queue is empty" in out:
            return 0
        m = re.search(r"in (\d+) Requests?\.", out)
        if not m:
            raise PostfixError(f"cannot parse postqueue -p output: {out[-200:]!r}")
        return int(m.group(1))


if __name__ == "__main__":
    # Self-test: start an accept-mode instance, send one message with
    # smtplib, check it is in the hold queue, stop.
    import smtplib
    import sys

    def freePort() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    port = freePort()
    with PostfixInstance(port) as pf:
        print(f"private Postfix on 127.0.0.1:{port} in {pf.base}", file=sys.stderr)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.sendmail(f"sender@{BENCH_DOMAIN}", [f"rcpt@{BENCH_DOMAIN}"],
                       "Subject: self-test\r\n\r\nhello\r\n")
        walk, pq = pf.queueCount(), pf.postqueueCount()
        held = countRegularFiles(pf.queue_dir / "hold")
        print(f"queue files: {walk}, postqueue: {pq}, in hold/: {held}", file=sys.stderr)
        ok = walk == pq == held == 1
    print("self-test", "passed" if ok else "FAILED", file=sys.stderr)
    sys.exit(0 if ok else 1)
