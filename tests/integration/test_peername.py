"""The client's name against a real DNS server (dnsmasq on loopback): PTR, forward confirmation, the checks."""

import smtplib

import pytest

from tests.integration.daemon import Daemon, waitFor
from tests.integration.peers import readQueued
from tests.integration.peerservers import Dnsmasq

pytestmark = pytest.mark.integration


@pytest.fixture
def dnsmasq():
    server = Dnsmasq(
        hosts=[("mail.example", "127.0.0.2"), ("elsewhere.example", "127.0.0.99")],
        ptr=[("3.0.0.127.in-addr.arpa", "elsewhere.example")],  # 127.0.0.3 claims a name that is not its own
        local=("example", "0.0.127.in-addr.arpa"),  # every other 127.0.0.x: NXDOMAIN
    ).start()
    yield server
    server.stop()


def session(daemon, source):
    client = smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="client.example", timeout=20,
                          source_address=(source, 0))
    client.ehlo()
    client.mail("a@example.org")
    return client, client.rcpt("b@mta.test")


def test_client_names_from_dns(tmp_path, dnsmasq):
    assert dnsmasq.query("2.0.0.127.in-addr.arpa", "PTR")[0] == "NOERROR"
    d = Daemon(tmp_path, hold=False, main=f"""\
        dns_servers = 127.0.0.1:{dnsmasq.port}
        smtpd_peername_lookup = yes
        smtpd_recipient_restrictions = reject_unknown_client_hostname, check_recipient_access static:HOLD,
            permit_mynetworks, reject_unauth_destination
        """).start()
    try:
        client, reply = session(d, "127.0.0.2")
        assert reply[0] == 250, reply
        client.data(b"Subject: named\r\n\r\nbody\r\n")
        client.quit()
        held = waitFor(lambda: d.incoming(), what="the held message")
        envelope, content = readQueued(d, held[0])
        assert b"Received: from client.example (mail.example [127.0.0.2])" in content

        for source, log in (("127.0.0.3", "warning: hostname elsewhere.example does not resolve to address 127.0.0.3"),
                            ("127.0.0.4", "connect from unknown[127.0.0.4]")):
            client, reply = session(d, source)
            assert reply == (450, f"4.7.25 Client host rejected: cannot find your hostname, [{source}]".encode()), reply
            client.quit()
            assert log in waitFor(lambda: log in d.maillogText() and d.maillogText(), what=log)
        text = d.maillogText()
        assert "connect from mail.example[127.0.0.2]" in text
        assert "connect from unknown[127.0.0.3]" in text
        assert "NOQUEUE: reject: RCPT from unknown[127.0.0.3]: 450 4.7.25" in text
    finally:
        code, out, err = d.stop()
    assert code == 0 and "Traceback" not in out + err, out + err
