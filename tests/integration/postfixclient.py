"""A private Postfix that relays to mta with SMTP AUTH (its smtp(8) client and Cyrus SASL).

The instance lives in a fresh directory under /tmp: its own main.cf and a
master.cf with no inet services (nothing listens), nothing chrooted, mail
injected with its sendmail(1) and relayed to relayhost = [127.0.0.1]:PORT
with smtp_sasl_auth_enable = yes and the login in an inline: password map.
Run as ``postfix -c DIR start-fg`` (as root, as the Debian package runs it;
in the foreground, logging to its standard output, DIR/maillog, since there
is no syslog here) and stopped with ``postfix -c DIR stop``.
"""

import os
import shutil
import subprocess

from tests.integration.peerservers import publicTempDir, stopProcess, waitFor

MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {base}/spool
data_directory = {base}/data
myhostname = client.test
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
maillog_file = /dev/stdout
relayhost = [127.0.0.1]:{port}
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = inline:{{ {{ [127.0.0.1]:{port} = {user}:{password} }} }}
smtp_sasl_security_options = noanonymous
smtp_sasl_mechanism_filter = {mechanism}
smtp_tls_security_level = none
"""


class PostfixClient:
    def __init__(self, port, user, password, mechanism="plain"):
        self.base = publicTempDir("mta-postfix-client-")
        self.etc = self.base / "etc"
        self.port, self.user, self.password, self.mechanism = port, user, password, mechanism

    def _postfix(self, *args):
        return subprocess.run(["postfix", "-c", str(self.etc), *args], capture_output=True, text=True, timeout=60)

    def start(self):
        self.etc.mkdir()
        (self.etc / "master.cf").write_text(MASTER_CF)
        (self.etc / "main.cf").write_text(MAIN_CF.format(base=self.base, port=self.port, user=self.user,
                                                         password=self.password, mechanism=self.mechanism))
        (self.base / "spool").mkdir()
        (self.base / "data").mkdir()
        shutil.chown(self.base / "data", "postfix")
        self.output = open(self.base / "maillog", "wb")
        self.process = subprocess.Popen(["postfix", "-c", str(self.etc), "start-fg"], stdin=subprocess.DEVNULL,
                                        stdout=self.output, stderr=subprocess.STDOUT, start_new_session=True)
        waitFor(lambda: "daemon started" in self.log() or self.process.poll() is not None, 30, "postfix's master")
        assert self.process.poll() is None, self.log()
        return self

    def send(self, sender, recipient, message):
        done = subprocess.run(["/usr/sbin/sendmail", "-C", str(self.etc), "-f", sender, recipient], input=message,
                              capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()

    def log(self):
        try:
            return (self.base / "maillog").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        self._postfix("stop")
        stopProcess(self.process, group=True)
        self.output.close()
        shutil.rmtree(self.base, ignore_errors=True)
        assert not os.path.exists(self.base)
