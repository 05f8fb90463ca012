"""
mta's SMTP client with STARTTLS against real TLS servers on loopback: a private Postfix
(bench/postfix_instance.py, smtpd_tls_security_level = may with the test certificate) and
mta's own server with TLS, under smtp_tls_security_level may, encrypt and verify (with
smtp_tls_CAfile = the test CA); and encrypt against smtp-sink, which has no TLS. Against
Postfix too: with smtp_tls_connection_reuse = no a second connection resumes the first's TLS
session ("Reusing old session"), with yes the second message goes over the cached TLS
connection ("TLS connection reused to", conn_use=2, one connection and handshake at Postfix).
"""

import os
import re
import subprocess

import pytest

from tests.integration.daemon import freePort
from tests.integration.peers import readQueued, waitFor
from tests.integration.test_client_peers import send, waitDelivery
from tests.integration.test_smtp_client import sink  # noqa: F401 - the fixture
from tests.tlssupport import Certificates

pytestmark = pytest.mark.integration

LEVELS = {
    "may": "smtp_tls_security_level = may\n",
    "encrypt": "smtp_tls_security_level = encrypt\n",
    "verify": "smtp_tls_security_level = verify\nsmtp_tls_CAfile = {ca}\n",
}
TRUST = {"may": "Untrusted", "encrypt": "Untrusted", "verify": "Verified"}


@pytest.fixture
def certs(tmp_path):
    directory = tmp_path / "certs"
    directory.mkdir()
    return Certificates(directory)


@pytest.fixture
def postfixTls(certs):
    from bench.postfix_instance import PostfixInstance

    instance = PostfixInstance(freePort(), tls=(certs["server.pem"], certs["server.key"]))
    instance.create()
    with open(instance.config_dir / "main.cf", "a") as f:
        f.write("smtpd_tls_loglevel = 1\nsmtpd_tls_received_header = yes\n")
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


def sender(makeDaemon, certs, level, nexthop, domain="tls.example"):
    """mta relaying C{domain} to C{nexthop} ([localhost]:port, found with getaddrinfo) under C{level}."""
    main = (f"transport_maps = inline:{{ {domain}=smtp:{nexthop} }}\nsmtp_host_lookup = native\n"
            "inet_protocols = ipv4\nsmtp_tls_loglevel = 1\n" + LEVELS[level].format(ca=certs["ca.pem"]))
    return makeDaemon(main=main, hold=False).start()


def clientLine(daemon, port):
    text = waitFor(lambda: "TLS connection established to" in daemon.maillogText() and daemon.maillogText(),
                   timeout=30, what="the client's TLS line")
    return re.search(rf"(\w+) TLS connection established to localhost\[127\.0\.0\.1\]:{port}: (TLSv1\.\d) with cipher "
                     r"\S+ \(\d+/\d+ bits\)", text)


@pytest.mark.parametrize("level", ["may", "encrypt", "verify"])
def test_relay_to_postfix_over_starttls(makeDaemon, certs, postfixTls, level):
    d = sender(makeDaemon, certs, level, f"[localhost]:{postfixTls.port}", "bench.example")
    qid = send(d, ["rcpt@bench.example"])
    [line] = waitDelivery(d, qid, "rcpt@bench.example")
    assert line[3] == "sent", line
    match = clientLine(d, postfixTls.port)
    assert match and match.group(1) == TRUST[level], d.maillogText()
    log = waitFor(lambda: "disconnect from" in postfixTls.maillog.read_text().split("client=", 1)[-1]
                  and postfixTls.maillog.read_text(), timeout=15, what="Postfix's disconnect line")
    assert "Anonymous TLS connection established from localhost[127.0.0.1]: TLSv1.3" in log, log
    # EHLO twice, STARTTLS once, as Postfix's smtpd counted it.
    assert re.search(r"disconnect from localhost\[127\.0\.0\.1\] ehlo=2 starttls=1 mail=1 rcpt=1 data=1 quit=1", log), log
    [held] = os.listdir(postfixTls.queue_dir / "hold")
    content = subprocess.run(["postcat", "-c", str(postfixTls.config_dir), "-b", "-h",
                              str(postfixTls.queue_dir / "hold" / held)],
                             capture_output=True, text=True, timeout=30).stdout
    assert re.search(r"\(using TLSv1\.3 with cipher \S+", content), content
    assert "with ESMTPS id" in content, content


def mtaNexthop(makeDaemon, main):
    """mta with smtpd TLS as the next hop, calling itself mx.test (the sender is mta.test: no mail loop)."""
    port = freePort()
    d = makeDaemon(main=main, subdir="n", listeners=f"[listener:smtp]\nendpoint = tcp:port={port}:interface=127.0.0.1\n"
                                                      "myhostname = mx.test\n")
    d.port = port
    return d.start()


@pytest.mark.parametrize("level", ["may", "encrypt", "verify"])
def test_relay_to_mta_over_starttls(makeDaemon, certs, level):
    nexthop = mtaNexthop(makeDaemon, certs.serverMain("may", "smtpd_tls_received_header = yes\n"))
    d = sender(makeDaemon, certs, level, f"[localhost]:{nexthop.port}")
    qid = send(d, ["rcpt@tls.example"])
    [line] = waitDelivery(d, qid, "rcpt@tls.example")
    assert line[3] == "sent", line
    match = clientLine(d, nexthop.port)
    assert match and match.group(1) == TRUST[level], d.maillogText()
    [held] = waitFor(lambda: nexthop.incoming(), timeout=15, what="the message at the next hop")
    _, content = readQueued(nexthop, held)
    assert b"with ESMTPS id" in content.split(b"\n\n")[0] or b"with ESMTPS id" in content, content[:600]
    assert b"(using TLSv1.3 with cipher" in content
    assert re.search(r"Anonymous TLS connection established from (localhost|unknown)\[127\.0\.0\.1\]: TLSv1\.3",
                     nexthop.maillogText()), nexthop.maillogText()


def test_verify_defers_a_certificate_for_another_name(makeDaemon, certs):
    nexthop = mtaNexthop(makeDaemon, certs.serverMain("may").replace(certs["server.pem"], certs["other-chain.pem"])
                         .replace(certs["server.key"], certs["other-chain.pem"]))
    d = sender(makeDaemon, certs, "verify", f"[localhost]:{nexthop.port}")
    qid = send(d, ["rcpt@tls.example"])
    [line] = waitDelivery(d, qid, "rcpt@tls.example")
    assert line[2:] == ("4.7.5", "deferred", "Server certificate not verified"), line
    assert nexthop.incoming() == []


def test_encrypt_defers_a_next_hop_without_starttls(makeDaemon, certs, sink):  # noqa: F811
    dump, start = sink
    port = start()
    d = sender(makeDaemon, certs, "encrypt", f"[localhost]:{port}")
    qid = send(d, ["rcpt@tls.example"])
    [line] = waitDelivery(d, qid, "rcpt@tls.example")
    assert line[2:] == ("4.7.4", "deferred", "TLS is required, but was not offered by host localhost[127.0.0.1]"), line
    assert os.listdir(dump) == []


class BrokenTlsServer:
    """
    A next hop on loopback that offers STARTTLS and then fails the handshake (it answers the
    ClientHello with garbage); a session without STARTTLS gets the mail.  Records each session.
    """

    def __init__(self):
        import socket
        import threading

        self.sessions = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                commands = []
                self.sessions.append(commands)
                reader = conn.makefile("rb")
                conn.sendall(b"220 broken.test ESMTP\r\n")
                for line in reader:
                    verb = line.split(b" ", 1)[0].strip().upper()
                    commands.append(verb.decode("ascii", "replace"))
                    if verb == b"EHLO":
                        conn.sendall(b"250-broken.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n")
                    elif verb == b"STARTTLS":
                        conn.sendall(b"220 go ahead\r\n")
                        conn.recv(4096)  # the ClientHello
                        conn.sendall(b"this is no TLS server hello\r\n" * 8)
                        break
                    elif verb == b"DATA":
                        conn.sendall(b"354 go\r\n")
                        for body in reader:
                            if body == b".\r\n":
                                break
                        conn.sendall(b"250 2.0.0 Ok: queued as BROKEN1\r\n")
                    elif verb == b"QUIT":
                        conn.sendall(b"221 bye\r\n")
                        break
                    else:
                        conn.sendall(b"250 ok\r\n")

    def stop(self):
        self.sock.close()


@pytest.mark.parametrize("level", ["may", "encrypt"])
def test_a_failed_handshake(makeDaemon, certs, level):
    """may: retried on a new connection without TLS, as Postfix does; encrypt: deferred."""
    server = BrokenTlsServer()
    try:
        d = sender(makeDaemon, certs, level, f"[localhost]:{server.port}")
        qid = send(d, ["rcpt@tls.example"])
        [line] = waitDelivery(d, qid, "rcpt@tls.example")
        log = d.maillogText()
        assert f"SSL_connect error to localhost[127.0.0.1]:{server.port}: " in log, log
        if level == "may":
            assert line[3] == "sent" and "queued as BROKEN1" in line[4], line
            assert "TLS handshake failed; trying again without TLS" in log
            assert server.sessions[0][:2] == ["EHLO", "STARTTLS"]
            assert "STARTTLS" not in server.sessions[1] and "DATA" in server.sessions[1]
        else:
            assert line[2:] == ("4.7.5", "deferred", "Cannot start TLS: handshake failure"), line
            assert all("MAIL" not in s for s in server.sessions)
    finally:
        server.stop()


def serverDigest(certs, kind="cert"):
    """The sha256 fingerprint of the test server certificate (or of its public key), colon-separated."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(open(certs["server.pem"], "rb").read())
    blob = cert.public_bytes(serialization.Encoding.DER) if kind == "cert" else cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.sha256(blob).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def policySender(makeDaemon, certs, nexthop, entry, tmp_path, domain="tls.example"):
    """mta at level may relaying C{domain} to C{nexthop}, with smtp_tls_policy_maps holding C{entry} for it."""
    table = tmp_path / "tls_policy"
    table.write_text(f"{nexthop} {entry}\n")
    main = (f"transport_maps = inline:{{ {domain}=smtp:{nexthop} }}\nsmtp_host_lookup = native\n"
            f"inet_protocols = ipv4\nsmtp_tls_loglevel = 1\nsmtp_tls_security_level = may\n"
            f"smtp_tls_policy_maps = texthash:{table}\n")
    return makeDaemon(main=main, hold=False).start()


@pytest.mark.parametrize("kind", ["cert", "spki"])
def test_policy_map_fingerprint_to_postfix(makeDaemon, certs, postfixTls, tmp_path, kind):
    """smtp_tls_policy_maps: fingerprint match= the certificate (or its key) of a real Postfix: Verified."""
    nexthop = f"[localhost]:{postfixTls.port}"
    d = policySender(makeDaemon, certs, nexthop, f"fingerprint match={serverDigest(certs, kind)}", tmp_path,
                     "bench.example")
    qid = send(d, ["rcpt@bench.example"])
    [line] = waitDelivery(d, qid, "rcpt@bench.example")
    assert line[3] == "sent", line
    match = clientLine(d, postfixTls.port)
    assert match and match.group(1) == "Verified", d.maillogText()


def test_policy_map_wrong_fingerprint_defers(makeDaemon, certs, tmp_path):
    """The transport says may; the policy map's fingerprint does not match mta's server: 4.7.5."""
    nexthop = mtaNexthop(makeDaemon, certs.serverMain("may"))
    hop = f"[localhost]:{nexthop.port}"
    d = policySender(makeDaemon, certs, hop, "fingerprint match=" + ":".join(["00"] * 32), tmp_path)
    qid = send(d, ["rcpt@tls.example"])
    [line] = waitDelivery(d, qid, "rcpt@tls.example")
    assert line[2:] == ("4.7.5", "deferred", "Server certificate not verified"), line
    assert nexthop.incoming() == []


def test_policy_map_bad_entry_defers(makeDaemon, certs, tmp_path):
    """An entry that cannot be parsed defers with "TLS policy lookup error" and a warning naming the key."""
    nexthop = mtaNexthop(makeDaemon, certs.serverMain("may"))
    hop = f"[localhost]:{nexthop.port}"
    d = policySender(makeDaemon, certs, hop, "secure frobnicate=yes", tmp_path)
    qid = send(d, ["rcpt@tls.example"])
    [line] = waitDelivery(d, qid, "rcpt@tls.example")
    assert line[2:] == ("4.7.5", "deferred", "TLS policy lookup error"), line
    assert f"unknown TLS policy attribute 'frobnicate=yes' (key '{hop}'); deferring mail for {hop}" in d.maillogText()
    assert nexthop.incoming() == []


def reuseSender(makeDaemon, nexthop, extra):
    main = (f"transport_maps = inline:{{ bench.example=smtp:{nexthop} }}\nsmtp_host_lookup = native\n"
            "inet_protocols = ipv4\nsmtp_tls_security_level = encrypt\nsmtp_tls_loglevel = 2\n"
            "smtp_connection_cache_time_limit = 30s\n" + extra)
    return makeDaemon(main=main, hold=False).start()


def test_a_new_connection_to_postfix_resumes_the_tls_session(makeDaemon, postfixTls):
    """smtp_tls_connection_reuse = no: each message its own connection; the second resumes the first's session."""
    d = reuseSender(makeDaemon, f"[localhost]:{postfixTls.port}", "smtp_tls_connection_reuse = no\n")
    for n in (1, 2):
        qid = send(d, ["rcpt@bench.example"])
        [line] = waitDelivery(d, qid, "rcpt@bench.example")
        assert line[3] == "sent", line
    text = d.maillogText()
    assert len(re.findall(r"Untrusted TLS connection established to localhost\[127\.0\.0\.1\]", text)) == 2, text
    assert len(re.findall(rf"smtp:127\.0\.0\.1:{postfixTls.port}: Reusing old session", text)) == 1, text
    assert "conn_use=" not in text  # TLS connections were not cached
    log = waitFor(lambda: postfixTls.maillog.read_text().count("disconnect from") >= 2 and postfixTls.maillog.read_text(),
                  timeout=15, what="Postfix's two disconnect lines")
    assert len(re.findall(r"disconnect from localhost\[127\.0\.0\.1\] ehlo=2 starttls=1 mail=1", log)) == 2, log


def test_a_cached_tls_connection_to_postfix_is_used_again(makeDaemon, postfixTls):
    """smtp_tls_connection_reuse = yes (the default): the second message goes over the first's TLS connection."""
    d = reuseSender(makeDaemon, f"[localhost]:{postfixTls.port}", "")
    for n in (1, 2):
        qid = send(d, ["rcpt@bench.example"])
        [line] = waitDelivery(d, qid, "rcpt@bench.example")
        assert line[3] == "sent", line
    text = d.maillogText()
    assert len(re.findall(r"Untrusted TLS connection established to localhost\[127\.0\.0\.1\]", text)) == 1, text
    assert re.search(r"Untrusted TLS connection reused to localhost\[127\.0\.0\.1\]:\d+: TLSv1\.3", text), text
    assert "conn_use=2" in text, text
    log = waitFor(lambda: postfixTls.maillog.read_text().count("client=") >= 2 and postfixTls.maillog.read_text(),
                  timeout=15, what="Postfix's two messages")
    # Both messages came over one connection, still open (cached): one connect more than disconnects
    # (the harness's start-up probe is the other pair), one TLS handshake.
    connects = len(re.findall(r"\]: connect from localhost", log))
    assert connects - log.count("disconnect from localhost") == 1, log
    assert log.count("Anonymous TLS connection established from localhost[127.0.0.1]") == 1, log
def test_older_names_and_chain_files_against_postfix(makeDaemon, certs, tmp_path):
    """
    smtp_enforce_tls = yes (the older name of verify) with the client key and certificate in one
    smtp_tls_chain_files file: the load warning, a Verified session, and Postfix (which asks for
    client certificates and trusts the test CA) sees the certificate: Trusted, not Anonymous.
    """
    from bench.postfix_instance import PostfixInstance

    chain = tmp_path / "client-chain.pem"
    chain.write_bytes(open(certs["client.key"], "rb").read() + open(certs["client.pem"], "rb").read())
    instance = PostfixInstance(freePort(), tls=(certs["server.pem"], certs["server.key"]))
    instance.create()
    with open(instance.config_dir / "main.cf", "a") as f:
        f.write(f"smtpd_tls_loglevel = 1\nsmtpd_tls_ask_ccert = yes\nsmtpd_tls_CAfile = {certs['ca.pem']}\n")
    try:
        instance.start()
        main = (f"transport_maps = inline:{{ bench.example=smtp:[localhost]:{instance.port} }}\n"
                "smtp_host_lookup = native\ninet_protocols = ipv4\nsmtp_tls_loglevel = 1\n"
                f"smtp_enforce_tls = yes\nsmtp_tls_CAfile = {certs['ca.pem']}\nsmtp_tls_chain_files = {chain}\n")
        d = makeDaemon(main=main, hold=False).start()
        qid = send(d, ["rcpt@bench.example"])
        [line] = waitDelivery(d, qid, "rcpt@bench.example")
        assert line[3] == "sent", line
        text = d.maillogText()
        match = clientLine(d, instance.port)
        assert match and match.group(1) == "Verified", text
        log = waitFor(lambda: "TLS connection established from" in instance.maillog.read_text()
                      and instance.maillog.read_text(), timeout=15, what="Postfix's TLS line")
        assert "Trusted TLS connection established from localhost[127.0.0.1]" in log, log
        # the load-time warning (logged when the configuration is put in force, before maillog_file opens)
        _, out, err = d.stop()
        assert re.search(r"warning: \S+:\d+: \[main\] smtp_enforce_tls: smtp_enforce_tls is obsolete; use "
                         r"smtp_tls_security_level \(smtp_tls_security_level = verify is used\)", out + err), out + err
    finally:
        instance.stop()
