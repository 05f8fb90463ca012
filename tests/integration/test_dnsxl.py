"""DNS block lists against a real DNS server (dnsmasq on loopback): reject_rbl_client, TXT reasons, patterns."""

import smtplib

import pytest

from tests.integration.daemon import Daemon
from tests.integration.peerservers import Dnsmasq

pytestmark = pytest.mark.integration


@pytest.fixture
def dnsmasq():
    server = Dnsmasq(
        hosts=[("2.0.0.127.bl.example", "127.0.0.2"), ("3.0.0.127.bl.example", "127.0.0.10"),
               ("spam.example.dbl.example", "127.0.1.2")],
        txt=[("2.0.0.127.bl.example", "listed: see http://bl.example/q?127.0.0.2")],
        local=("example",),
    ).start()
    yield server
    server.stop()


def rcpt(daemon, source, sender="a@example.org"):
    with smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="client.example", timeout=20,
                      source_address=(source, 0)) as client:
        client.ehlo()
        client.mail(sender)
        return client.rcpt("b@mta.test")


def test_block_lists(tmp_path, dnsmasq):
    d = Daemon(tmp_path, hold=False, main=f"""\
        dns_servers = 127.0.0.1:{dnsmasq.port}
        smtpd_recipient_restrictions = reject_rbl_client bl.example=127.0.0.[2..9],
            reject_rhsbl_sender dbl.example, check_recipient_access static:HOLD, permit_mynetworks,
            reject_unauth_destination
        """).start()
    try:
        code, text = rcpt(d, "127.0.0.2")
        assert (code, text.decode()) == (554, "5.7.1 Service unavailable; Client host [127.0.0.2] blocked using "
                                              "bl.example; listed: see http://bl.example/q?127.0.0.2")
        assert rcpt(d, "127.0.0.3")[0] == 250  # listed as 127.0.0.10: outside the pattern
        assert rcpt(d, "127.0.0.4")[0] == 250  # not listed
        code, text = rcpt(d, "127.0.0.4", sender="x@spam.example")
        assert code == 554 and b"Sender address [x@spam.example] blocked using dbl.example" in text
        log = d.maillogText()
        assert "NOQUEUE: reject: RCPT from unknown[127.0.0.2]: 554 5.7.1 Service unavailable; Client host" in log
    finally:
        code, out, err = d.stop()
    assert code == 0 and "Traceback" not in out + err, out + err
    queries = dnsmasq.logText()
    assert "2.0.0.127.bl.example" in queries and "spam.example.dbl.example" in queries
