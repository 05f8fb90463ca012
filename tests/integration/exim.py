"""
Exim as a real SMTP client (Exim) and as a real SMTP server with STARTTLS (EximServer) for the
integration tests, found or fetched from Debian on first use.

Debian's exim4 packages conflict with postfix (both provide mail-transport-agent), so Exim is
never installed: ``apt-get download`` fetches exim4-daemon-light and exim4-base, and those of
the binary's library dependencies that are not installed (on Debian 12: libidn12); ``dpkg -x``
unpacks them into EXIM_ROOT, by default ``/opt/mta-test-peers/exim`` (``$MTA_TEST_PEERS/exim``
if set; ``~/.cache/mta-test-peers/exim`` if /opt is not writable).  The binary runs from there
with ``-C`` and a configuration of its own that sends everything to one smarthost on loopback;
no system file is read or changed.  Exim insists on its compiled-in user Debian-exim: when that
user does not exist, libnss-wrapper (fetched the same way) supplies it from a passwd file of
ours, mapped to nobody (or to the calling user when that is not root).

Both roles share one helper (_EximHome: the directory, the Exim user, the wrapper script that
is also Exim's exim_path).  EximServer is the daemon (``exim -bdf``, foreground, a child of the
test) on 127.0.0.1 only, with the GnuTLS that exim4-daemon-light is built with (libgnutls30, a
dependency fetched like the others when it is missing) and an appendfile transport into a
Maildir.  Its deliveries re-execute Exim as the Exim user, and with -C that loses root: Exim
says so in its panic log ("exim user lost privilege for using -C option"); harmless, since the
transport runs as the Exim user anyway.

scripts/test fetches Exim before the suite (``python3 -m tests.integration.exim``); a test that
finds it missing fetches it too, and fails (never skips) if that is impossible.
"""

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

PACKAGES = ["exim4-daemon-light", "exim4-base"]
EXIM_USER = "Debian-exim"
TIMEOUT = 60


def peersDirectory():
    base = os.environ.get("MTA_TEST_PEERS")
    if base:
        return base
    if os.access("/opt", os.W_OK) or os.path.isdir("/opt/mta-test-peers"):
        return "/opt/mta-test-peers"
    return os.path.expanduser("~/.cache/mta-test-peers")


def eximRoot():
    return os.path.join(peersDirectory(), "exim")


def binaryPath(root):
    return os.path.join(root, "usr", "sbin", "exim4")


def libraryDirectories(root):
    return sorted(glob.glob(os.path.join(root, "usr", "lib", "*-linux-gnu"))) + [os.path.join(root, "usr", "lib")]


def _installed(package):
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return result.returncode == 0 and "install ok installed" in result.stdout


def _userExists(name):
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _missingLibraries():
    """The library packages exim4-daemon-light depends on that are not installed."""
    result = subprocess.run(["apt-cache", "depends", "--no-recommends", "--no-suggests", PACKAGES[0]],
                            capture_output=True, text=True, timeout=TIMEOUT)
    missing = []
    for line in result.stdout.splitlines():
        kind, _, name = line.strip().lstrip("|").partition(":")
        name = name.strip()
        if kind == "Depends" and name.startswith("lib") and not _installed(name):
            missing.append(name)
    return missing


def _download(packages, directory):
    def attempt():
        return subprocess.run(["apt-get", "download", *packages], cwd=directory, capture_output=True,
                              text=True, timeout=300)

    result = attempt()
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
        result = attempt()
    assert result.returncode == 0, f"apt-get download {' '.join(packages)} failed:\n{result.stderr}"


def fetch(root=None):
    """Download and unpack Exim (and what it lacks here) into C{root}; return C{root}."""
    root = root or eximRoot()
    if os.access(binaryPath(root), os.X_OK):
        return root
    os.makedirs(os.path.dirname(root), exist_ok=True)
    packages = PACKAGES + _missingLibraries()
    if not _userExists(EXIM_USER) and not _installed("libnss-wrapper"):
        packages.append("libnss-wrapper")
    with tempfile.TemporaryDirectory() as downloads:
        os.chmod(downloads, 0o755)  # apt's _apt user writes the files
        _download(packages, downloads)
        partial = root + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        for deb in sorted(glob.glob(os.path.join(downloads, "*.deb"))):
            subprocess.run(["dpkg", "-x", deb, partial], check=True, timeout=TIMEOUT)
    # dpkg -x keeps the setuid bit; a setuid binary would ignore LD_LIBRARY_PATH.
    os.chmod(binaryPath(partial), 0o755)
    shutil.rmtree(root, ignore_errors=True)
    os.rename(partial, root)
    return root


def _nssWrapper(root):
    for path in [os.path.join(d, "libnss_wrapper.so") for d in libraryDirectories(root)] + glob.glob(
        "/usr/lib/*-linux-gnu/libnss_wrapper.so"
    ):
        if os.path.exists(path):
            return path
    raise AssertionError("libnss_wrapper.so not found: remove the Exim directory to fetch it again")


class _EximHome:
    """
    A fresh directory under /tmp for one Exim (Exim drops to its own user, which must reach it):
    the Exim user's uid/gid (nobody, or the calling user when that is not root, through
    nss-wrapper when Debian-exim does not exist), spool/ and log/ owned by it, and the script
    C{wrapper} that runs the binary with the library path (and nss-wrapper) set; Exim's
    exim_path, so that its re-executions find the same.
    """

    def __init__(self, root=None, prefix="mta-exim-"):
        self.root = fetch(root)
        self.directory = tempfile.mkdtemp(prefix=prefix)
        os.chmod(self.directory, 0o755)
        if _userExists(EXIM_USER):
            uid, gid = pwd.getpwnam(EXIM_USER)[2:4]
            preload = {}
        else:
            uid = gid = 65534 if os.getuid() == 0 else os.getuid()
            if os.getuid() != 0:
                gid = os.getgid()
            passwd = os.path.join(self.directory, "passwd")
            group = os.path.join(self.directory, "group")
            with open(passwd, "w") as f:
                for entry in pwd.getpwall():
                    if entry.pw_name != EXIM_USER:
                        f.write(":".join(str(field) for field in entry) + "\n")
                f.write(f"{EXIM_USER}:x:{uid}:{gid}:Exim:/nonexistent:/bin/false\n")
            with open(group, "w") as f:
                with open("/etc/group") as system:
                    f.write(system.read())
                f.write(f"{EXIM_USER}:x:{gid}:\n")
            preload = {"LD_PRELOAD": _nssWrapper(self.root), "NSS_WRAPPER_PASSWD": passwd,
                       "NSS_WRAPPER_GROUP": group}
        self.uid, self.gid = uid, gid
        self.spool = self.ownedDirectory("spool")
        self.logs = self.ownedDirectory("log")
        environment = {"LD_LIBRARY_PATH": ":".join(libraryDirectories(self.root)), **preload}
        self.wrapper = os.path.join(self.directory, "exim")
        with open(self.wrapper, "w") as f:
            f.write("#!/bin/sh\n")
            f.writelines(f"{name}='{value}'; export {name}\n" for name, value in environment.items())
            f.write(f"exec '{binaryPath(self.root)}' \"$@\"\n")
        os.chmod(self.wrapper, 0o755)
        self.config = os.path.join(self.directory, "exim.conf")

    def ownedDirectory(self, name):
        """A new directory C{name} in the home, owned by the Exim user; its path."""
        path = os.path.join(self.directory, name)
        os.mkdir(path)
        os.chown(path, self.uid, self.gid)
        return path

    def writeConfig(self, text):
        with open(self.config, "w") as f:
            f.write(text)
        os.chmod(self.config, 0o644)

    def log(self, name="mainlog"):
        try:
            with open(os.path.join(self.logs, name), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def cleanup(self):
        shutil.rmtree(self.directory, ignore_errors=True)


class Exim:
    """
    One Exim with its own configuration, spool and log in a fresh directory under /tmp (Exim
    drops to its own user, which must reach it).  send() submits a message and delivers it at
    once (-odf) to the smarthost 127.0.0.1:C{port}; mainlog() is Exim's log.
    """

    def __init__(self, port, chunking=False, root=None):
        self.home = _EximHome(root)
        self.root, self.directory, self.wrapper = self.home.root, self.home.directory, self.home.wrapper
        self.spool, self.logs, self.config = self.home.spool, self.home.logs, self.home.config
        self.home.writeConfig(textwrap.dedent(f"""\
            primary_hostname = exim.test
            qualify_domain = exim.test
            spool_directory = {self.spool}
            log_file_path = {self.logs}/%slog
            exim_path = {self.wrapper}
            keep_environment =
            untrusted_set_sender = *
            # Exim re-executes itself for the delivery; no daemon, no local deliveries.
            begin routers
            smarthost:
              driver = manualroute
              domains = *
              transport = mta
              route_list = * 127.0.0.1
              self = send
              no_more
            begin transports
            mta:
              driver = smtp
              port = {port}
              allow_localhost
              hosts_avoid_tls = *
              hosts_try_chunking = {"*" if chunking else ":"}
            begin retry
            * * F,1h,15m
            """))

    def send(self, sender, recipients, message):
        """Submit C{message} (bytes) and deliver it now; the CompletedProcess."""
        return subprocess.run(
            # -i: a line with only "." is text, not the end of the message.
            [self.wrapper, "-C", self.config, "-odf", "-i", "-f", sender, "--", *recipients],
            input=message, capture_output=True, timeout=TIMEOUT,
        )

    def mainlog(self):
        return self.home.log()

    def cleanup(self):
        self.home.cleanup()


def _groupLives(group):
    """Whether a process of process group C{group} is alive (zombies, which init reaps in its own time, are not)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(group) and fields[0] not in ("Z", "X"):
            return True
    return False


class EximServer:
    """
    The Exim daemon (``exim -bdf``, in the foreground, a child of the test) as an SMTP server
    on 127.0.0.1:C{port} only, with STARTTLS offered to every client (tls_advertise_hosts = *)
    with C{certFile}/C{keyFile} (copied into its directory, readable by the Exim user), and
    TLS 1.3 session tickets for resumption (tls_resumption_hosts = *; Exim's default is none).
    Every recipient is accepted and delivered at once by an appendfile transport running as
    the Exim user into a Maildir: messages() is the list of stored messages (bytes, each one
    file), oldest first.  C{requireTls}: MAIL without TLS gets 530 (an ACL).  start() waits for
    the 220 banner, and on failure shows Exim's output and its main and panic logs; stop()
    ends the daemon (SIGTERM, then SIGKILL) and removes the directory.
    """

    def __init__(self, port, certFile, keyFile, requireTls=False, hostname="mx.test", root=None):
        self.port = port
        self.hostname = hostname
        self.home = _EximHome(root, prefix="mta-exim-server-")
        self.process = None
        certificate = self._copy(certFile, "server.pem")
        key = self._copy(keyFile, "server.key")
        self.maildir = self.home.ownedDirectory("mail")
        self.home.writeConfig(textwrap.dedent(f"""\
            primary_hostname = {hostname}
            qualify_domain = {hostname}
            spool_directory = {self.home.spool}
            log_file_path = {self.home.logs}/%slog
            exim_path = {self.home.wrapper}
            keep_environment =
            local_interfaces = <; 127.0.0.1.{port}
            daemon_smtp_ports = {port}
            # A port in use fails the start at once (the default retries for 5 minutes).
            daemon_startup_retries = 0
            # No DNS for the client: no reverse lookup, no ident.
            host_lookup =
            rfc1413_hosts =
            tls_advertise_hosts = *
            tls_resumption_hosts = *
            tls_certificate = {certificate}
            tls_privatekey = {key}
            log_selector = +smtp_connection +tls_sni +tls_resumption +received_recipients
            acl_smtp_mail = acl_mail
            acl_smtp_rcpt = acl_rcpt
            begin acl
            acl_mail:
              deny    condition = {"true" if requireTls else "false"}
                      !encrypted = *
                      message = 530 5.7.0 Must issue a STARTTLS command first
              accept
            acl_rcpt:
              accept
            begin routers
            store:
              driver = accept
              transport = maildir
            begin transports
            maildir:
              driver = appendfile
              directory = {self.maildir}
              maildir_format
              create_directory
              user = {EXIM_USER}
              group = {EXIM_USER}
              mode = 0644
              envelope_to_add
              return_path_add
            begin retry
            * * F,1h,15m
            """))

    def _copy(self, source, name):
        path = os.path.join(self.home.directory, name)
        shutil.copyfile(source, path)
        os.chown(path, self.home.uid, self.home.gid)
        os.chmod(path, 0o600)
        return path

    def start(self, timeout=TIMEOUT):
        self.output = tempfile.TemporaryFile()
        # A process group of its own: stop() ends the connection and delivery processes too.
        self.process = subprocess.Popen(
            [self.home.wrapper, "-C", self.home.config, "-bdf", "-oX", f"127.0.0.1.{self.port}"],
            stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        error = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = f"exim exited with {self.process.returncode}"
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    banner = s.makefile("rb").readline()
                    s.sendall(b"QUIT\r\n")
                if banner.startswith(b"220 "):
                    return self
                error = f"banner {banner!r}"
            except OSError as e:
                error = str(e)
            time.sleep(0.1)
        self.stop(cleanup=False)
        self.output.seek(0)
        raise AssertionError(f"Exim did not start on 127.0.0.1:{self.port} ({error}):\n"
                             f"{self.output.read().decode(errors='replace')}\n--- mainlog ---\n{self.mainlog()}"
                             f"\n--- paniclog ---\n{self.paniclog()}")

    def stop(self, cleanup=True):
        """
        SIGTERM to the daemon, SIGKILL after 10 s, then SIGKILL to what is left of its process
        group (a child still serving a client's cached connection would log into the
        directory after it is gone, and outlive the test) until none of it runs (Linux's
        /proc); then the directory goes.
        """
        if self.process is None:
            return
        group = self.process.pid
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _groupLives(group):
            assert time.monotonic() < deadline, f"Exim's process group {group} did not end"
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        if cleanup:
            self.home.cleanup()

    def messages(self):
        """The stored messages (bytes, as Exim wrote them: LF line ends), oldest first."""
        new = os.path.join(self.maildir, "new")
        try:
            names = sorted(os.listdir(new), key=lambda n: os.stat(os.path.join(new, n)).st_mtime_ns)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            with open(os.path.join(new, name), "rb") as f:
                found.append(f.read())
        return found

    def mainlog(self):
        return self.home.log()

    def paniclog(self):
        return self.home.log("paniclog")


if __name__ == "__main__":
    print(f"exim: {binaryPath(fetch())}", file=sys.stderr)
