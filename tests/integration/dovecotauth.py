"""A private Dovecot auth service for the SMTP AUTH tests (smtpd_sasl_type = dovecot).

Dovecot (Debian's dovecot-core) runs with a configuration of its own under a
fresh directory in /tmp: no protocols (no IMAP, POP3 or LMTP), only the auth
service, listening on the UNIX socket self.socketPath (mode 0666) and on
127.0.0.1:self.port, with a passwd-file passdb of the users given.  Started as
``dovecot -F -c CONF`` in its own process group and stopped with it.
"""

import contextlib
import os
import signal
import shutil
import socket
import subprocess
import tempfile

from tests.integration.peerservers import freePort, publicTempDir, stopProcess, waitFor

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"

CONF = """\
# A private Dovecot auth service for mta's SMTP AUTH tests (tests/integration/dovecotauth.py).
base_dir = {base}/run
state_dir = {base}/state
instance_name = mta-test-dovecot-auth-{tag}
log_path = {base}/dovecot.log
info_log_path = {base}/dovecot.log
auth_verbose = yes
protocols =
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
shutdown_clients = yes
passdb {{
  driver = passwd-file
  args = {base}/users
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home=/nonexistent
}}
service auth {{
  unix_listener {base}/auth {{
    mode = 0666
  }}
  inet_listener {{
    address = 127.0.0.1
    port = {port}
  }}
}}
"""


def _answers(address, port):
    try:
        with socket.create_connection((address, port), timeout=1.0) as s:
            return s.recv(512).startswith(b"VERSION\t")
    except OSError:
        return False


class DovecotAuth:
    """Dovecot's auth service for C{users}: {name: password} (stored as {PLAIN} in the passwd-file)."""

    def __init__(self, users):
        self.users = dict(users)
        self.base = publicTempDir("mta-dovecot-auth-")
        os.chmod(self.base, 0o755)
        self.port = freePort()
        self.socketPath = str(self.base / "auth")
        self.config = self.base / "dovecot.conf"
        self.process = None
        self.output = None

    def start(self, timeout=20.0):
        for name in ("run", "state"):
            (self.base / name).mkdir(mode=0o755)
        with open(self.base / "users", "w") as f:
            for user, password in self.users.items():
                f.write(f"{user}:{{PLAIN}}{password}::::::\n")
        os.chmod(self.base / "users", 0o644)
        self.config.write_text(CONF.format(base=self.base, port=self.port, tag=self.base.name))
        self.output = tempfile.TemporaryFile()
        self.process = subprocess.Popen([DOVECOT, "-F", "-c", str(self.config)], stdin=subprocess.DEVNULL,
                                        stdout=self.output, stderr=subprocess.STDOUT, start_new_session=True)

        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"dovecot exited with {self.process.returncode}:\n{self.errors()}")
            return os.path.exists(self.socketPath) and _answers("127.0.0.1", self.port)

        waitFor(ready, timeout, "dovecot's auth listeners")
        return self

    def errors(self):
        text = ""
        if self.output is not None:
            self.output.seek(0)
            text = self.output.read().decode("utf-8", "replace")
        try:
            text += (self.base / "dovecot.log").read_text(errors="replace")
        except OSError:
            pass
        return text

    def stop(self):
        stopProcess(self.process, group=True)
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self.output is not None:
            self.output.close()
        shutil.rmtree(self.base, ignore_errors=True)
