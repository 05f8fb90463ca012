"""
TLS-RPT (mta.delivery.tlsrpt) end to end on loopback, through the real reactor: real deliveries
by the smtp transport of a Generation (its reporter wired as the daemon's) to a private Postfix
with STARTTLS (a successful session) and to a next hop that offers STARTTLS and then fails the
handshake (a validation-failure, then the plaintext retry), MX and _smtp._tls TXT records from
dnsmasq; then the day's reports: one POSTed to a loopback Twisted HTTPS server whose
certificate comes from the test CA, one queued as mail in our own queue.  Both are checked
field by field.
"""

import gzip
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.trial import unittest
from twisted.web import resource, server

from mta.config import load, openTables
from mta.generation import Generation
from mta.model import DeliveryRecipient, Envelope, Recipient
from mta.queue.fileformat import dumpQueueFile, readContent, readQueueFile
from mta.queue.store import QueueStore
from mta.tables import Tables
from tests.integration.daemon import freePort
from tests.integration.peerservers import Dnsmasq
from tests.integration.test_client_tls import BrokenTlsServer
from tests.tlssupport import Certificates

pytestmark = pytest.mark.integration


class Collector(resource.Resource):
    """Takes POSTed reports: (headers, body) in C{posts}."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.posts = []

    def render_POST(self, request):
        self.posts.append((request.requestHeaders, request.content.read()))
        request.setResponseCode(202)
        return b"accepted"


class TlsRptLoopbackTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        from bench.postfix_instance import PostfixInstance

        base = Path(tempfile.mkdtemp(prefix="mta-tlsrpt-"))  # not trial's mktemp(): that is under the cwd
        self.addCleanup(shutil.rmtree, base, True)
        (base / "certs").mkdir(parents=True)
        self.certs = certs = Certificates(base / "certs")
        self.postfix = PostfixInstance(freePort(), tls=(certs["server.pem"], certs["server.key"]))
        self.postfix.create()
        self.postfix.start()
        self.addCleanup(self.postfix.stop)
        self.broken = BrokenTlsServer()
        self.addCleanup(self.broken.stop)
        # The HTTPS report receiver, with a certificate from the test CA (for localhost).
        self.collector = Collector()
        pem = (Path(certs["server.pem"]).read_text() + Path(certs["server.key"]).read_text())
        context = ssl.PrivateCertificate.loadPEM(pem).options()
        self.https = reactor.listenSSL(0, server.Site(self.collector), context, interface="127.0.0.1")
        self.addCleanup(self.https.stopListening)
        httpsPort = self.https.getHost().port
        self.dns = Dnsmasq(
            mx=[("tls.example", "mx.tls.example", 10), ("broken.example", "mx.broken.example", 10)],
            hosts=[("mx.tls.example", "127.0.0.1"), ("mx.broken.example", "127.0.0.1")],
            txt=[("_smtp._tls.tls.example", f"v=TLSRPTv1; rua=https://localhost:{httpsPort}/tlsrpt"),
                 ("_smtp._tls.broken.example", "v=TLSRPTv1;rua=mailto:reports@report.example")],
        ).start()
        self.addCleanup(self.dns.stop)
        self.queue = base / "queue"
        main = (f"queue_directory = {self.queue}\nmyhostname = mta.test\nmydomain = test\n"
                f"dns_servers = 127.0.0.1:{self.dns.port}\ninet_protocols = ipv4\nsmtp_tls_security_level = may\n"
                "smtp_tls_loglevel = 1\nsmtp_tlsrpt_enable = yes\n")
        listener = "[listener:smtp]\nendpoint = tcp:port=2525:interface=127.0.0.3\n"
        (base / "mta.ini").write_text(f"[main]\n{main}{listener}")
        config = load(str(base / "mta.ini"), checkEndpoints=False)
        tables = Tables(reactor)
        openTables(config, tables)
        self.store = QueueStore(str(self.queue), reactor)
        os.makedirs(self.queue, exist_ok=True)
        self.store.prepare()
        self.generation = Generation(config, tables, reactor, self.store, lambda listener, generation: None)
        self.reporter = self.generation.tlsReporter
        self.reporter.trustRoot = ssl.Certificate.loadPEM(Path(certs["ca.pem"]).read_text())
        self.reporter.start()
        self.addCleanup(self.reporter.stop)
        self.addCleanup(self.generation.transports.stop)

    def request(self, domain, port, number):
        """A DeliveryRequest of a message in a queue file of its own to rcpt@DOMAIN."""
        from mta.model import DeliveryRequest

        path = str(self.queue / f"message{number}")
        recipient = f"rcpt@{domain}"
        envelope = Envelope(sender="sender@mta.test", recipients=(Recipient(recipient),), arrival_time=time.time())
        with open(path, "wb") as f:
            f.write(dumpQueueFile(envelope, b"Subject: tlsrpt test\r\n\r\nhello\r\n"))
        queueFile = readQueueFile(path)
        return DeliveryRequest(queue_id=f"TEST{number}", transport="smtp", nexthop=f"{domain}:{port}", envelope=envelope,
                               recipients=(DeliveryRecipient(0, recipient, recipient),), path=path,
                               content_offset=queueFile.contentOffset, content_length=queueFile.contentLength)

    @inlineCallbacks
    def test_sessions_are_reported_by_https_and_by_mail(self):
        transport = self.generation.transports("smtp")
        ports = {"tls.example": self.postfix.port, "broken.example": self.broken.port}
        for number, domain in enumerate(("tls.example", "broken.example")):
            request = self.request(domain, ports[domain], number)
            [result] = yield transport.deliver(request)
            self.assertEqual(result.status, "sent", result)
        self.assertEqual(len(self.broken.sessions), 2)  # STARTTLS failed; the plaintext retry delivered
        # The day is over: report it (what the schedule does after midnight UTC).
        yield Deferred.fromCoroutine(self.reporter.reportDue(time.time() + 86400))
        yield DeferredList(list(self.reporter.pending))
        # https: for tls.example, one successful session with no policy.
        [(headers, body)] = self.collector.posts
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/tlsrpt+gzip"])
        report = json.loads(gzip.decompress(body))
        day = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime())
        self.assertEqual(report["organization-name"], "mta.test")
        self.assertEqual(report["contact-info"], "postmaster@test")
        self.assertEqual(report["date-range"], {"start-datetime": day, "end-datetime": day.replace("00:00:00",
                                                                                                     "23:59:59")})
        self.assertEqual(report["report-id"], f"{day}_tls.example@mta.test")
        self.assertEqual(report["policies"], [{
            "policy": {"policy-type": "no-policy-found", "policy-domain": "tls.example"},
            "summary": {"total-successful-session-count": 1, "total-failure-session-count": 0}}])
        # mailto: for broken.example, a message in our own queue.
        files = [os.path.join(d, f) for d, _, names in os.walk(self.queue) for f in names
                 if not f.startswith("message") and not f.endswith(".sqlite") and "/incoming" in d]
        self.assertEqual(len(files), 1, files)
        queued = readQueueFile(files[0])
        self.assertEqual(queued.envelope.sender, "noreply-smtp-tls-reporting@test")
        self.assertEqual([r.address for r in queued.envelope.recipients],
                         ["reports@report.example"])
        content = b"".join(readContent(files[0], queued.contentOffset, queued.contentLength))
        import email
        import email.policy

        message = email.message_from_bytes(content, policy=email.policy.default)
        self.assertEqual(message["Subject"], f"Report Domain: broken.example Submitter: mta.test Report-ID: "
                                             f"<{day}_broken.example@mta.test>")
        self.assertEqual(message["TLS-Report-Domain"], "broken.example")
        self.assertEqual(message.get_content_type(), "multipart/report")
        attachment = list(message.iter_parts())[1]
        self.assertEqual(attachment.get_content_type(), "application/tlsrpt+gzip")
        mailed = json.loads(gzip.decompress(attachment.get_content()))
        [entry] = mailed["policies"]
        self.assertEqual(entry["summary"], {"total-successful-session-count": 0, "total-failure-session-count": 1})
        [detail] = entry["failure-details"]
        self.assertEqual(detail["result-type"], "validation-failure")
        self.assertEqual(detail["sending-mta-ip"], "127.0.0.1")
        self.assertEqual(detail["receiving-mx-hostname"], "mx.broken.example")
        self.assertEqual(detail["receiving-ip"], "127.0.0.1")
        self.assertEqual(detail["failed-session-count"], 1)
        self.assertTrue(detail["failure-reason-code"].startswith("handshake failure"), detail)
        # Everything reported is forgotten.
        self.assertEqual(self.reporter._stored(time.time() + 10 * 86400), [])

    @inlineCallbacks
    def test_an_untrusted_https_certificate_is_not_posted_to(self):
        """Without the test CA (the system trust store only) the POST fails verification and is retried later."""
        from mta.delivery.tlsrpt import TlsReporter
        from mta.delivery.tlspolicy import SitePolicy, TlsResult
        from mta.delivery.smtpclient import RemoteHost

        lines = []
        log = type("Log", (), {"emit": lambda self, text, *a, **k: lines.append(text),
                               "warning": lambda self, text, *a, **k: lines.append("warning: " + text)})()
        reporter = TlsReporter(self.reporter.settings, reactor, None, self.generation.resolver, log)
        reporter.record(SitePolicy(tls=None, domain="tls.example"), RemoteHost("mx.tls.example", "127.0.0.1", 25),
                        TlsResult(True))
        yield Deferred.fromCoroutine(reporter.reportDue(time.time() + 86400))
        from twisted.internet.task import deferLater

        for _ in range(200):  # the first POST's outcome (within smtp_tlsrpt_http_timeout)
            if lines:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.collector.posts, [])
        [line] = lines
        self.assertIn("failed: certificate verify failed", line)
        self.assertIn("trying again in 300s", line)
        self.assertEqual(len(reporter.pending), 1)  # the retry waits
        reporter.stop()
        self.assertEqual(reporter.pending, set())
        self.assertIn("warning: 1 https: report deliveries in progress given up at stop", lines)


def test_the_daemon_records_a_tls_session_and_keeps_it_at_stop(makeDaemon, tmp_path):
    """
    A real mta daemon with smtp_tlsrpt_enable = yes: a STARTTLS delivery to mta's own TLS server
    is in the store after the daemon stops (written at stop, before the minute's flush).
    """
    import sqlite3

    from tests.integration.test_client_peers import send, waitDelivery
    from tests.integration.test_client_tls import mtaNexthop

    (tmp_path / "certs").mkdir()
    certs = Certificates(tmp_path / "certs")
    nexthop = mtaNexthop(makeDaemon, certs.serverMain("may"))
    main = (f"transport_maps = inline:{{ tls.example=smtp:[localhost]:{nexthop.port} }}\nsmtp_host_lookup = native\n"
            "inet_protocols = ipv4\nsmtp_tls_security_level = may\nsmtp_tlsrpt_enable = yes\n")
    d = makeDaemon(main=main, hold=False).start()
    qid = send(d, ["rcpt@tls.example"])
    [line] = waitDelivery(d, qid, "rcpt@tls.example")
    assert line[3] == "sent", line
    d.stop()
    with sqlite3.connect(os.path.join(d.queue, "tlsrpt.sqlite")) as db:
        rows = db.execute("SELECT domain, type, success, failure FROM policy").fetchall()
    assert rows == [("localhost", "no-policy-found", 1, 0)], rows
