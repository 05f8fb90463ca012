"""Client certificates, the TLS restrictions, SNI, session tickets and reload, over in-memory TLS."""

import pytest
from OpenSSL import SSL

from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import MailLog
from tests.tlssupport import Certificates, TLSDialog, clientContext

OUTSIDE = "198.51.100.7"  # not in mynetworks
RELAY = "RCPT TO:<carol@example.net>\r\n"  # not a local destination: a relay attempt


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certificates(tmp_path_factory.mktemp("certs"))


def factory(certs, extra="", level="may", store=None):
    return serverFactory(certs.serverMain(level, f"smtpd_tls_CAfile = {certs['ca.pem']}\n" + extra), store=store)


def client(certs, which="client"):
    if which is None:
        return clientContext(certs)
    return clientContext(certs, cert=certs[f"{which}.pem"], key=certs[f"{which}.key"])


def tlsSession(f, certs, which="client", peer="127.0.0.1"):
    d = TLSDialog(f, peer=peer, context=client(certs, which))
    d.send("EHLO c.test\r\n")
    d.starttls()
    d.send("EHLO c.test\r\n")
    return d


# -- asking for a certificate, and what the session knows of it -----------------------------------

def test_without_ask_ccert_no_certificate_is_requested(certs):
    d = tlsSession(factory(certs), certs)
    assert d.protocol.session.tls.peer is None


@pytest.mark.parametrize("which, trust", [("client", "Trusted"), ("rogue", "Untrusted")])
def test_ask_ccert_logs_trusted_or_untrusted_as_postfix(certs, which, trust):
    with MailLog() as log:
        d = tlsSession(factory(certs, "smtpd_tls_ask_ccert = yes\n"), certs, which)
    peer = d.protocol.session.tls.peer
    assert peer.subjectCN == f"{which}.test" and peer.trusted == (which == "client")
    assert peer.fingerprint == certs.fingerprint(which)
    assert log.matching(f"{trust} TLS connection established from unknown[127.0.0.1]: TLSv1.3 with cipher")
    assert log.matching(f"unknown[127.0.0.1]: {trust}: subject_CN={which}.test, issuer_CN=")
    assert log.matching(f"fingerprint={certs.fingerprint(which)}, pkey_fingerprint=")


def test_a_client_without_a_certificate_is_anonymous_when_asked(certs):
    with MailLog() as log:
        d = tlsSession(factory(certs, "smtpd_tls_ask_ccert = yes\n"), certs, None)
    assert d.protocol.session.tls.peer is None
    assert log.matching("Anonymous TLS connection established")


def test_the_fingerprint_digest_is_configurable(certs):
    d = tlsSession(factory(certs, "smtpd_tls_ask_ccert = yes\nsmtpd_tls_fingerprint_digest = sha1\n"), certs)
    assert d.protocol.session.tls.peer.fingerprint == certs.fingerprint("client", "sha1")


@pytest.mark.parametrize("which, comment", [
    ("client", b'\t(Client CN "client.test", Issuer "mta test CA" (verified OK))\r\n'),
    ("rogue", b'\t(Client CN "rogue.test", Issuer "rogue.test" (not verified))\r\n'),
    (None, b"\t(Client did not present a certificate)\r\n"),
])
def test_the_received_header_names_the_client_certificate(certs, which, comment):
    store = FakeQueueStore()
    d = tlsSession(factory(certs, "smtpd_tls_ask_ccert = yes\nsmtpd_tls_received_header = yes\n", store=store),
                   certs, which)
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@mx.test>\r\nDATA\r\n")
    d.send("Subject: x\r\n\r\nhi\r\n.\r\n")
    assert comment + b"\tby mx.test (mta) with ESMTPS id " in store.committed[0].content


def test_req_ccert_under_encrypt_refuses_a_client_without_a_trusted_certificate(certs):
    f = factory(certs, "smtpd_tls_req_ccert = yes\n", level="encrypt")
    for which in (None, "rogue"):
        d = TLSDialog(f, context=client(certs, which))
        d.send("EHLO c.test\r\n")
        assert d.send("STARTTLS\r\n").startswith("220")
        with MailLog() as log:
            try:
                d.handshake()
                d.send("EHLO c.test\r\n")  # TLS 1.3: the client hears of the refusal after its Finished
            except SSL.Error:
                pass
        assert not d.protocol.session.tlsActive
        assert log.matching("SSL_accept error from unknown[127.0.0.1]")
    d = tlsSession(f, certs, "client")
    assert d.protocol.session.tls.peer.trusted


# -- restrictions ------------------------------------------------------------------------------------

def test_permit_tls_clientcerts_lets_a_listed_certificate_relay(certs, tmp_path):
    table = tmp_path / "relay_clientcerts"
    table.write_text(f"{certs.fingerprint('rogue')} rogue.test\n")  # pinned: listed, trusted or not
    f = factory(certs, f"smtpd_tls_ask_ccert = yes\nrelay_clientcerts = texthash:{table}\n"
                       "smtpd_relay_restrictions = permit_tls_clientcerts, reject_unauth_destination\n")
    assert tlsSession(f, certs, "rogue", OUTSIDE).codes("MAIL FROM:<a@example.org>\r\n" + RELAY) == [250, 250]
    refused = tlsSession(f, certs, "client", OUTSIDE).send("MAIL FROM:<a@example.org>\r\n" + RELAY)
    assert refused.endswith("554 5.7.1 <carol@example.net>: Relay access denied\r\n")


def test_permit_tls_all_clientcerts_lets_every_trusted_certificate_relay(certs):
    f = factory(certs, "smtpd_tls_ask_ccert = yes\n"
                       "smtpd_relay_restrictions = permit_tls_all_clientcerts, reject_unauth_destination\n")
    assert tlsSession(f, certs, "client", OUTSIDE).codes("MAIL FROM:<a@example.org>\r\n" + RELAY) == [250, 250]
    assert tlsSession(f, certs, "rogue", OUTSIDE).codes("MAIL FROM:<a@example.org>\r\n" + RELAY) == [250, 554]
    assert tlsSession(f, certs, None, OUTSIDE).codes("MAIL FROM:<a@example.org>\r\n" + RELAY) == [250, 554]


def test_without_tls_the_certificate_restrictions_do_not_match(certs):
    f = factory(certs, "smtpd_relay_restrictions = permit_tls_all_clientcerts, permit_tls_clientcerts, "
                       "reject_unauth_destination\n")
    d = TLSDialog(f, peer=OUTSIDE, context=client(certs))
    d.send("EHLO c.test\r\n")
    assert d.codes("MAIL FROM:<a@example.org>\r\n" + RELAY) == [250, 554]


def test_check_ccert_access_looks_up_the_fingerprints(certs, tmp_path):
    table = tmp_path / "ccert_access"
    table.write_text(f"{certs.fingerprint('rogue')} REJECT go away\n{certs.fingerprint('client')} OK\n")
    f = factory(certs, "smtpd_tls_ask_ccert = yes\n"
                       f"smtpd_relay_restrictions = check_ccert_access texthash:{table}, reject_unauth_destination\n")
    assert tlsSession(f, certs, "client", OUTSIDE).codes("MAIL FROM:<a@example.org>\r\n" + RELAY) == [250, 250]
    refused = tlsSession(f, certs, "rogue", OUTSIDE).send("MAIL FROM:<a@example.org>\r\n" + RELAY)
    assert refused.endswith("554 5.7.1 <rogue.test>: Client certificate rejected: go away\r\n")


# -- SNI, tickets, reload --------------------------------------------------------------------------

def test_tls_server_sni_maps_chooses_the_certificate_by_server_name(certs):
    f = factory(certs, f"tls_server_sni_maps = inline:{{other.test={certs['other-chain.pem']}}}\n")
    for name, cn in (("other.test", "other.test"), ("mx.test", "mx.test"), (None, "mx.test")):
        d = TLSDialog(f, context=clientContext(certs), serverName=name)
        d.send("EHLO c.test\r\n")
        d.starttls()
        subject = d.client.get_peer_certificate().get_subject().CN
        assert subject == cn, name


def test_sessions_resume_with_tickets(certs):
    f = factory(certs)
    context = clientContext(certs)
    first = TLSDialog(f, context=context)
    first.send("EHLO c.test\r\n")
    first.starttls()
    first.send("NOOP\r\n")
    with MailLog() as log:
        second = TLSDialog(f, context=context, session=first.client.get_session())
        second.send("EHLO c.test\r\n")
        second.starttls()
    assert second.protocol.session.tls.reused
    assert log.matching("Anonymous TLS connection reused from unknown[127.0.0.1]: TLSv1.3")


def test_a_zero_session_cache_timeout_turns_resumption_off(certs):
    f = factory(certs, "smtpd_tls_session_cache_timeout = 0\n")
    context = clientContext(certs)
    first = TLSDialog(f, context=context)
    first.send("EHLO c.test\r\n")
    first.starttls()
    first.send("NOOP\r\n")
    second = TLSDialog(f, context=context, session=first.client.get_session())
    second.send("EHLO c.test\r\n")
    second.starttls()
    assert not second.protocol.session.tls.reused


def test_certificate_files_are_read_again_when_the_factory_is_rebuilt(certs, tmp_path):
    """A reload builds new factories from a new load: a renewed certificate is served at once."""
    chain = tmp_path / "chain.pem"
    chain.write_bytes(open(certs["server-chain.pem"], "rb").read())
    main = f"smtpd_tls_security_level = may\nsmtpd_tls_chain_files = {chain}\n"
    before = TLSDialog(serverFactory(main), context=clientContext(certs))
    before.send("EHLO c.test\r\n")
    before.starttls()
    assert before.client.get_peer_certificate().get_subject().CN == "mx.test"
    chain.write_bytes(open(certs["other-chain.pem"], "rb").read())
    after = TLSDialog(serverFactory(main), context=clientContext(certs))
    after.send("EHLO c.test\r\n")
    after.starttls()
    assert after.client.get_peer_certificate().get_subject().CN == "other.test"


@pytest.mark.parametrize("which, local", [("client", True), ("rogue", False), (None, False)])
def test_local_header_rewrite_clients_knows_trusted_certificates(certs, which, local):
    """A client with a trusted certificate is local: cleanup adds its missing headers, as for this host."""
    store = FakeQueueStore()
    f = factory(certs, "smtpd_tls_ask_ccert = yes\nlocal_header_rewrite_clients = permit_tls_all_clientcerts\n",
                store=store)
    d = tlsSession(f, certs, which, OUTSIDE)
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@mx.test>\r\nDATA\r\n")
    d.send("Subject: x\r\n\r\nhi\r\n.\r\n")
    assert (b"\r\nMessage-Id: <" in store.committed[0].content) == local


def test_local_header_rewrite_clients_knows_listed_certificates(certs, tmp_path):
    table = tmp_path / "relay_clientcerts"
    table.write_text(f"{certs.fingerprint('rogue')} pinned\n")
    store = FakeQueueStore()
    f = factory(certs, f"smtpd_tls_ask_ccert = yes\nrelay_clientcerts = texthash:{table}\n"
                       "local_header_rewrite_clients = permit_tls_clientcerts\n", store=store)
    for which in ("rogue", "client"):
        d = tlsSession(f, certs, which, OUTSIDE)
        d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@mx.test>\r\nDATA\r\n")
        d.send("Subject: x\r\n\r\nhi\r\n.\r\n")
    assert [b"\r\nMessage-Id: <" in m.content for m in store.committed] == [True, False]


def test_sni_tries_parent_domains_then_the_default_and_warns_only_of_a_broken_file(certs, tmp_path):
    from twisted.logger import formatEvent, globalLogPublisher

    broken = tmp_path / "broken.pem"
    broken.write_text("no key here\n")
    f = factory(certs, f"tls_server_sni_maps = inline:{{.other.test={certs['other-chain.pem']}, bad.test={broken}}}\n")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        for name, cn in (("mail.other.test", "other.test"), ("nowhere.test", "mx.test"), ("bad.test", "mx.test")):
            d = TLSDialog(f, context=clientContext(certs), serverName=name)
            d.send("EHLO c.test\r\n")
            d.starttls()
            assert d.client.get_peer_certificate().get_subject().CN == cn, name
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [formatEvent(e) for e in events if "tls_server_sni_maps" in formatEvent(e)]
    assert len(warnings) == 1 and "cannot load" in warnings[0] and "bad.test" in warnings[0]
