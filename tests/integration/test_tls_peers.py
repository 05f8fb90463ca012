"""
The real ``twistd mta`` with TLS against real TLS clients on loopback: swaks (--tls,
--tlsc on the wrapper-mode listener, a client certificate), ``openssl s_client
-starttls smtp``, Python's smtplib (starttls, SMTP_SSL), Postfix's posttls-finger, and a
real Postfix smtp client delivering to mta with smtp_tls_security_level = encrypt
(and, as a satellite, with SASL: smtp_sasl_password_maps).
Certificates are made by tests.tlssupport in the test's directory.
"""

import os
import re
import smtplib
import ssl
import subprocess

import pytest

from tests.integration.daemon import freePort
from tests.integration.peers import maillogLines, readQueued, requireProgram, swaks, waitFor
from tests.tlssupport import Certificates

pytestmark = pytest.mark.integration

TIMEOUT = 60


@pytest.fixture
def certs(tmp_path):
    directory = tmp_path / "certs"
    directory.mkdir()
    return Certificates(directory)


@pytest.fixture
def tlsDaemon(makeDaemon, certs):
    """mta with smtp (may, on daemon.port), submission (encrypt) and submissions (wrapper mode)."""
    submission, submissions = freePort(), freePort()

    def make(main=""):
        d = makeDaemon(
            main=certs.serverMain("may", f"smtpd_tls_CAfile = {certs['ca.pem']}\nsmtpd_tls_received_header = yes\n"
                                         + main),
            listeners=None,
        )
        d.submission, d.submissions = submission, submissions
        with open(d.config, "a") as f:
            f.write(f"\n[listener:submission]\nendpoint = tcp:port={submission}:interface=127.0.0.1\n"
                    "smtpd_tls_security_level = encrypt\n"
                    f"\n[listener:submissions]\nendpoint = tcp:port={submissions}:interface=127.0.0.1\n"
                    "smtpd_tls_wrappermode = yes\n")
        return d.start()

    return make


def clientContext(certs, cert=None):
    context = ssl.create_default_context(cafile=certs["ca.pem"])
    if cert:
        context.load_cert_chain(certs[f"{cert}.pem"], certs[f"{cert}.key"])
    return context


def queuedContent(d, count=1):
    waitFor(lambda: len(d.incoming()) >= count, what="the message in the queue")
    return [readQueued(d, q)[1] for q in d.incoming()]


def test_swaks_starttls_and_tls_on_connect(tlsDaemon):
    d = tlsDaemon()
    for port, option in ((d.port, "--tls"), (d.submissions, "--tlsc")):
        done = swaks(port, option, "--from", "a@example.org", "--to", "bob@mta.test", "--ehlo", "c.test")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "TLS started with cipher TLSv1.3:TLS_AES_256_GCM_SHA384" in done.stdout
        assert re.search(r"<~  250 2\.0\.0 Ok: queued as \w+", done.stdout), done.stdout
    contents = queuedContent(d, 2)
    assert all(b" with ESMTPS id " in c and b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384" in c
               for c in contents)
    lines = [text for _, text in maillogLines(d)]
    assert sum("Anonymous TLS connection established from localhost[127.0.0.1]: TLSv1.3" in t or
               "Anonymous TLS connection established from unknown[127.0.0.1]: TLSv1.3" in t for t in lines) == 2


def test_swaks_with_a_client_certificate_is_trusted(tlsDaemon, certs):
    d = tlsDaemon("smtpd_tls_ask_ccert = yes\n")
    done = swaks(d.port, "--tls", "--tls-cert", certs["client.pem"], "--tls-key", certs["client.key"],
                 "--from", "a@example.org", "--to", "bob@mta.test")
    assert done.returncode == 0, done.stdout + done.stderr
    [content] = queuedContent(d)
    assert b'\t(Client CN "client.test", Issuer "mta test CA" (verified OK))\r\n' in content
    assert any("Trusted TLS connection established" in t for _, t in maillogLines(d))


def test_swaks_is_refused_before_starttls_on_the_encrypt_listener(tlsDaemon):
    d = tlsDaemon()
    done = swaks(d.submission, "--from", "a@example.org", "--to", "bob@mta.test")
    assert "<** 530 5.7.0 Must issue a STARTTLS command first" in done.stdout, done.stdout
    done = swaks(d.submission, "--tls", "--from", "a@example.org", "--to", "bob@mta.test")
    assert done.returncode == 0, done.stdout + done.stderr


def test_openssl_s_client_starttls_smtp(tlsDaemon, certs):
    d = tlsDaemon()
    done = subprocess.run(
        [requireProgram("/usr/bin/openssl"), "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{d.port}",
         "-CAfile", certs["ca.pem"], "-verify_return_error", "-verify_hostname", "mta.test", "-quiet", "-crlf"],
        input="MAIL FROM:<a@example.org>\nQUIT\n", capture_output=True, text=True, timeout=TIMEOUT)
    # s_client sent EHLO and STARTTLS itself; inside TLS the session starts over: no EHLO yet, MAIL is fine
    # (smtpd_helo_required = no), and the certificate verified for the host name.
    assert done.stdout.replace("\r", "") == "250 2.1.0 Ok\n221 2.0.0 Bye\n", done.stdout + done.stderr
    assert "verify return:1" in done.stderr and "Verification error" not in done.stderr
    waitFor(lambda: any("Anonymous TLS connection established" in t for _, t in maillogLines(d)), what="log")


def test_python_smtplib_starttls_and_smtp_ssl(tlsDaemon, certs):
    d = tlsDaemon()
    message = b"From: a@example.org\r\nTo: bob@mta.test\r\nSubject: tls\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", d.submission, timeout=TIMEOUT) as s:
        s.ehlo("c.test")
        assert s.has_extn("starttls")
        s.starttls(context=clientContext(certs))
        s.ehlo("c.test")
        assert not s.has_extn("starttls")
        assert s.sendmail("a@example.org", ["bob@mta.test"], message) == {}
    with smtplib.SMTP_SSL("127.0.0.1", d.submissions, timeout=TIMEOUT, context=clientContext(certs)) as s:
        s.ehlo("c.test")
        assert s.sendmail("a@example.org", ["bob@mta.test"], message) == {}
    assert len(queuedContent(d, 2)) == 2


def test_plaintext_injected_after_starttls_is_not_executed_by_the_real_daemon(tlsDaemon, certs):
    import socket

    d = tlsDaemon()
    with socket.create_connection(("127.0.0.1", d.port), timeout=TIMEOUT) as raw:
        f = raw.makefile("rb")
        assert f.readline().startswith(b"220 ")
        raw.sendall(b"EHLO c.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")  # one write
        assert f.readline() == b"220 2.0.0 Ready to start TLS\r\n"
        tls = clientContext(certs).wrap_socket(raw, server_hostname="mta.test")
        tf = tls.makefile("rb")
        tls.sendall(b"EHLO c.test\r\n")
        while not tf.readline().startswith(b"250 "):
            pass
        tls.sendall(b"RCPT TO:<bob@mta.test>\r\n")
        assert tf.readline() == b"503 5.5.1 Error: need MAIL command\r\n"
        tls.sendall(b"QUIT\r\n")
        assert tf.readline().startswith(b"221")
    waitFor(lambda: any("bytes of plaintext pipelined after STARTTLS" in t for _, t in maillogLines(d)),
            what="the discard warning")


def test_posttls_finger_reports_the_tls_session(tlsDaemon, certs, tmp_path):
    d = tlsDaemon()
    # posttls-finger reads main.cf: an empty one of its own, never the machine's (which may have none)
    config = tmp_path / "posttls-finger"
    config.mkdir()
    (config / "main.cf").write_text("")
    done = subprocess.run(
        [requireProgram("/usr/sbin/posttls-finger"), "-c", "-l", "secure", "-F", certs["ca.pem"],
         "-L", "summary", f"[127.0.0.1]:{d.port}", "mta.test"],
        capture_output=True, text=True, timeout=TIMEOUT, env={**os.environ, "MAIL_CONFIG": str(config)})
    output = done.stdout + done.stderr
    assert re.search(r"Verified TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:\d+: TLSv1\.3 with "
                     r"cipher TLS_AES_256_GCM_SHA384 \(256/256 bits\)", output), output


def test_a_real_postfix_delivers_to_mta_with_encrypt(makeDaemon, certs):
    from bench.postfix_instance import PostfixInstance

    d = makeDaemon(main=certs.serverMain("encrypt", "smtpd_tls_received_header = yes\n")).start()
    instance = PostfixInstance(freePort(), relay_port=d.port)
    try:
        instance.create()
        with open(instance.config_dir / "main.cf", "a") as f:
            f.write(f"smtp_tls_security_level = encrypt\nsmtp_tls_CAfile = {certs['ca.pem']}\n"
                    "smtp_tls_loglevel = 1\n")
        instance.start()
        done = swaks(instance.port, "--from", "a@example.org", "--to", "bob@mta.test")
        assert done.returncode == 0, done.stdout + done.stderr
        [content] = queuedContent(d)
        assert b" with ESMTPS id " in content and b"(using TLSv1.3 with cipher" in content
        waitFor(lambda: "Trusted TLS connection established to 127.0.0.1" in instance.maillog.read_text()
                or "Verified TLS connection established to 127.0.0.1" in instance.maillog.read_text(),
                what="Postfix's TLS log line", timeout=30)
    finally:
        instance.stop()


def test_a_real_postfix_relays_to_mta_with_encrypt_and_sasl(makeDaemon, certs, tmp_path):
    """Postfix's smtp client, as a satellite: STARTTLS required, then AUTH with its smtp_sasl_password_maps."""
    from bench.postfix_instance import PostfixInstance
    from tests.integration.test_sasl_peers import PASSWORD, STRANGER, saslPasswd

    table = tmp_path / "sasl_passwd"
    saslPasswd(table, "satellite@example.org", PASSWORD)
    d = makeDaemon(main=certs.serverMain("encrypt", STRANGER + "smtpd_sasl_auth_enable = yes\n"
                                                   f"smtpd_sasl_type = builtin\nsmtpd_sasl_path = texthash:{table}\n"),
                   listeners=None)
    with open(d.config, "a") as f:  # only a login may relay; accepted mail is held for the test
        f.write("smtpd_recipient_restrictions = check_recipient_access static:HOLD, permit_sasl_authenticated, "
                "reject\n")
    d.start()
    instance = PostfixInstance(freePort(), relay_port=d.port)
    try:
        instance.create()
        passwords = instance.config_dir / "relay_passwd"
        passwords.write_text(f"[127.0.0.1]:{d.port} satellite@example.org:{PASSWORD}\n")
        with open(instance.config_dir / "main.cf", "a") as f:
            f.write(f"smtp_tls_security_level = encrypt\nsmtp_tls_CAfile = {certs['ca.pem']}\n"
                    "smtp_sasl_auth_enable = yes\nsmtp_sasl_security_options = noanonymous\n"
                    f"smtp_sasl_tls_security_options = noanonymous\nsmtp_sasl_password_maps = texthash:{passwords}\n")
        instance.start()
        done = swaks(instance.port, "--from", "a@example.org", "--to", "carol@elsewhere.example")
        assert done.returncode == 0, done.stdout + done.stderr
        [content] = queuedContent(d)
        [queueId] = d.incoming()
        envelope, _ = readQueued(d, queueId)
        assert (envelope.sasl_method, envelope.sasl_username) in {("PLAIN", "satellite@example.org"),
                                                                  ("LOGIN", "satellite@example.org")}
        assert b" with ESMTPSA id " in content
        assert PASSWORD not in d.maillogText()
    finally:
        instance.stop()


@pytest.mark.slow
def test_testssl_finds_nothing_high_or_critical_on_starttls_and_465(makeDaemon, certs, tmp_path):
    """testssl.sh (Debian's testssl.sh) against the STARTTLS listener and the wrapper-mode one, in parallel."""
    import json

    wrapper = freePort()
    d = makeDaemon(
        main=certs.serverMain("may", "tls_preempt_cipherlist = yes\n"),
        listeners=None,
    )
    with open(d.config, "a") as f:
        f.write(f"\n[listener:submissions]\nendpoint = tcp:port={wrapper}:interface=127.0.0.1\n"
                "smtpd_tls_wrappermode = yes\n")
    d.start()
    runs = []
    for port, starttls in ((d.port, ["--starttls", "smtp"]), (wrapper, [])):
        out = tmp_path / f"testssl-{port}.json"
        runs.append((out, subprocess.Popen(
            [requireProgram("/usr/bin/testssl"), "--quiet", "--color", "0", "--warnings", "batch", *starttls,
             "--add-ca", certs["ca.pem"], "--severity", "HIGH", "--jsonfile", str(out), f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    for out, process in runs:
        output, _ = process.communicate(timeout=900)
        findings = json.loads(out.read_text())
        bad = [f for f in findings if f["severity"] in ("HIGH", "CRITICAL")]
        assert not bad, json.dumps(bad, indent=1) + output[-2000:]
        assert "TLSv1.3" in output


def test_sighup_reads_a_renewed_certificate_and_logs_the_older_names(makeDaemon, certs, tmp_path):
    """The certificate files are read again at reload: after SIGHUP new sessions get the new certificate."""
    from tests.integration.test_reload import sighupAndWait

    chain = tmp_path / "chain.pem"
    chain.write_bytes(open(certs["server-chain.pem"], "rb").read())
    d = makeDaemon(main=f"smtpd_use_tls = yes\nsmtpd_tls_chain_files = {chain}\n").start()

    context = clientContext(certs)
    context.check_hostname = False  # other.test's certificate does not name 127.0.0.1; the CA is still checked

    def served():
        with smtplib.SMTP("127.0.0.1", d.port, timeout=TIMEOUT) as s:
            s.starttls(context=context)
            return dict(item[0] for item in s.sock.getpeercert()["subject"])["commonName"]

    assert served() == "mx.test"
    chain.write_bytes(open(certs["other-chain.pem"], "rb").read())
    assert served() == "mx.test"  # read at start, not at each session
    sighupAndWait(d)
    assert served() == "other.test"
    assert "warning: " in d.maillogText() and "smtpd_use_tls is obsolete; use smtpd_tls_security_level = may" \
        in d.maillogText()
