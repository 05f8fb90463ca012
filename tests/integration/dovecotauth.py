"""A private Dovecot auth service for the SMTP AUTH tests (smtpd_sasl_type = dovecot).

Dovecot (Debian's dovecot-core) runs with a configuration of its own under a
fresh directory in /tmp: no protocols (no IMAP, POP3 or LMTP), only the auth
service, listening on the UNIX socket self.socketPath (mode 0666) and on
127.0.0.1:self.port, with a passwd-file passdb of the users given.  Started as
``dovecot -F -c CONF`` in its own process group and stopped with it.
"""

import os
import socket

from tests.integration.peerservers import _DovecotProcess, freePort, publicTempDir

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


class DovecotAuth(_DovecotProcess):
    """Dovecot's auth service for C{users}: {name: password} (stored as {PLAIN} in the passwd-file)."""

    def __init__(self, users):
        self.users = dict(users)
        self.base = publicTempDir("mta-dovecot-auth-")
        os.chmod(self.base, 0o755)
        self.port = freePort()
        self.socketPath = str(self.base / "auth")
        self.config = self.base / "dovecot.conf"
        self.log = self.base / "dovecot.log"
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
        return self._launch(lambda: os.path.exists(self.socketPath) and _answers("127.0.0.1", self.port),
                            timeout, "dovecot's auth listeners")
