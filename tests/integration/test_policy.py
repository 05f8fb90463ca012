"""check_policy_service against real policy servers: postgrey (greylisting) over TCP."""

import shutil
import smtplib
import subprocess
import time

import pytest

from tests.integration.daemon import Daemon, freePort, waitFor
from tests.integration.peers import readQueued

pytestmark = pytest.mark.integration

POSTGREY = shutil.which("postgrey") or "/usr/sbin/postgrey"


@pytest.fixture
def postgrey(tmp_path):
    port = freePort()
    db = tmp_path / "postgrey"
    db.mkdir()
    process = subprocess.Popen(
        [POSTGREY, f"--inet=127.0.0.1:{port}", f"--dbdir={db}", "--delay=1", "--user=root", "--group=root",
         "--whitelist-clients=/dev/null", "--whitelist-recipients=/dev/null", "--auto-whitelist-clients=0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def listening():
        import socket

        if process.poll() is not None:
            raise AssertionError(f"postgrey exited: {process.stdout.read().decode(errors='replace')}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    waitFor(listening, 20, "postgrey")
    yield port
    process.terminate()
    process.wait(10)


def send(daemon):
    with smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="client.example", timeout=30) as client:
        client.ehlo()
        client.mail("sender@example.org")
        code, text = client.rcpt("rcpt@mta.test")
        if code == 250:
            client.data(b"Subject: greylisted\r\n\r\nbody\r\n")
        return code, text.decode()


def test_greylisting_with_postgrey(tmp_path, postgrey):
    d = Daemon(tmp_path, hold=False, main=f"""\
        smtpd_recipient_restrictions = check_recipient_access static:HOLD,
            check_policy_service inet:127.0.0.1:{postgrey}, permit_mynetworks, reject_unauth_destination
        """).start()
    try:
        code, text = send(d)
        assert code == 450 and "Greylisted" in text, (code, text)  # DEFER_IF_PERMIT, then permit_mynetworks
        time.sleep(2.5)  # past --delay
        code, text = send(d)
        assert code == 250, (code, text)
        held = waitFor(lambda: d.incoming(), what="the held message")
        envelope, content = readQueued(d, held[0])
        head = content.split(b"\r\n\r\n", 1)[0]
        assert head.startswith(b"X-Greylist: delayed "), head  # postgrey's PREPEND, before our Received:
        assert b"\r\nReceived: from client.example" in head
        log = d.maillogText()
        assert "NOQUEUE: reject: RCPT from unknown[127.0.0.1]: 450 4.2.0 <rcpt@mta.test>: Recipient address " \
               "rejected: Greylisted" in log
    finally:
        code, out, err = d.stop()
    assert code == 0 and "Traceback" not in out + err, out + err


POLICYD_SPF = shutil.which("policyd-spf") or "/usr/bin/policyd-spf"


@pytest.fixture
def policydSpf():
    """policyd-spf (Postfix's spawn(8) runs it on a socket's stdin and stdout): one process per connection."""
    import socketserver
    import threading

    class Spawn(socketserver.BaseRequestHandler):
        def handle(self):
            process = subprocess.Popen([POLICYD_SPF], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL)

            def answers():
                for line in iter(process.stdout.readline, b""):
                    self.request.sendall(line)

            reader = threading.Thread(target=answers, daemon=True)
            reader.start()
            try:
                while True:
                    data = self.request.recv(65536)
                    if not data:
                        break
                    process.stdin.write(data)
                    process.stdin.flush()
            finally:
                process.stdin.close()
                process.wait(10)
                reader.join(10)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Spawn)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_spf_with_policyd_spf(tmp_path, policydSpf):
    d = Daemon(tmp_path, hold=False, main=f"""\
        smtpd_recipient_restrictions = check_recipient_access static:HOLD,
            check_policy_service inet:127.0.0.1:{policydSpf}, permit_mynetworks, reject_unauth_destination
        """).start()
    try:
        assert send(d)[0] == 250
        held = waitFor(lambda: d.incoming(), what="the held message")
        envelope, content = readQueued(d, held[0])
        # policyd-spf does not check loopback clients and says so in a header it prepends.
        assert content.startswith(b"X-Comment: SPF check N/A for local connections - client-ip=127.0.0.1; "
                                  b"helo=client.example; envelope-from=sender@example.org; receiver=mta.test\r\n"
                                  b"Received: from client.example"), content[:300]
    finally:
        code, out, err = d.stop()
    assert code == 0 and "Traceback" not in out + err, out + err
