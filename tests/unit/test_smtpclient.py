"""mta.delivery.smtpclient: scripted servers, no sockets, no sleeps (StringTransport + Clock)."""

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from mta.config import ConfigError, load
from mta.delivery.smtpclient import (
    REPLY_LINE_LIMIT,
    WRITE_SIZE,
    RemoteHost,
    SMTPClientSession,
)
from mta.model import DeliveryRecipient, DeliveryRequest, Envelope, Recipient
from mta.smtpd.data import DataReader

HOST = RemoteHost("mx.example.net", "192.0.2.1", 25)
NAMADDR = "mx.example.net[192.0.2.1]"
BODY = b"Subject: test\r\n\r\nHello\r\n.dot line\r\n"
EHLO_ALL = (
    "250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250-DSN\r\n"
    "250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n"
)
EHLO_PLAIN = "250-mx.example.net\r\n250-SIZE\r\n250 8BITMIME\r\n"


class RecordingTransport(StringTransport):
    """A StringTransport that also remembers each write."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, data):
        self.writes.append(data)
        super().write(data)


def makeRequest(recipients=("bob@example.net",), sender="alice@example.org", size=len(BODY), rcptOptions=None,
                **envelope):
    env = Envelope(sender=sender, recipients=tuple(Recipient(r) for r in recipients), arrival_time=0.0, **envelope)
    rcptOptions = rcptOptions or {}
    rcpts = tuple(
        DeliveryRecipient(index=10 + i, address=a, original=a, **rcptOptions.get(a, {}))
        for i, a in enumerate(recipients)
    )
    return DeliveryRequest("4TbC0hR2x8Zq", "smtp", "example.net", env, rcpts, "/nonexistent", 0, size)


def iniValue(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(value)
    return str(value)


def clientSettings(lmtp=False, **params):
    """
    The smtpClient (lmtpClient) settings of a [main] with C{params}
    (Postfix's names): myhostname (and so the HELO name) is
    client.example.org, and an LMTP session skips the QUIT reply (the
    session's own default before it took its settings from the
    configuration) unless told otherwise.
    """
    params.setdefault("myhostname", "client.example.org")
    if lmtp:
        params.setdefault("lmtp_skip_quit_response", True)
    text = "".join(f"{name} = {iniValue(value)}\n" for name, value in params.items())
    settings = load("<test>", "[main]\n" + text).settings
    return settings.lmtpClient if lmtp else settings.smtpClient


class Session:
    """One client session against a scripted server; C{params}: Postfix parameters."""

    def __init__(self, lmtp=False, **params):
        self.clock = Clock()
        self.settings = clientSettings(lmtp, **params)
        self.protocol = SMTPClientSession(self.settings, self.clock)
        self.transport = RecordingTransport()
        self.protocol.makeConnection(self.transport)
        self.outcomes = []

    def deliver(self, request=None, content=(BODY,), **kw):
        d = self.protocol.deliver(request or makeRequest(), content, HOST, **kw)
        d.addBoth(self.outcomes.append)
        return d

    def reply(self, text, bytewise=False):
        data = text.encode("utf-8") if isinstance(text, str) else text
        if bytewise:
            for i in range(len(data)):
                self.protocol.dataReceived(data[i : i + 1])
        else:
            self.protocol.dataReceived(data)

    def sent(self):
        value = self.transport.value()
        self.transport.clear()
        self.transport.writes = []
        return value.decode("utf-8")

    def lose(self):
        self.protocol.connectionLost(Failure(ConnectionDone()))

    @property
    def outcome(self):
        assert len(self.outcomes) == 1, self.outcomes
        outcome = self.outcomes[0]
        if isinstance(outcome, Failure):
            outcome.raiseException()
        return outcome

    def statuses(self):
        return [(r.index, r.status, r.dsn) for r in self.outcome.results]

    @property
    def closed(self):
        return self.transport.disconnecting


def handshake(s, ehlo=EHLO_ALL, **kw):
    """Greeting and EHLO; deliver() started."""
    s.deliver(**kw)
    s.reply("220 mx.example.net ESMTP\r\n")
    assert s.sent() == "EHLO client.example.org\r\n"
    s.reply(ehlo)


def unstuff(wire):
    out = []
    reader = DataReader(out.append, 1 << 20, 0)
    assert reader.feed(wire) == len(wire)
    assert reader.done and reader.error is None
    return b"".join(out)


# -- whole transactions --------------------------------------------------------------


def test_pipelined_transaction():
    s = Session()
    request = makeRequest(["bob@example.net", "carol@example.net"])
    handshake(s, request=request)
    assert s.transport.writes == [
        b"MAIL FROM:<alice@example.org> SIZE=%d\r\n" % len(BODY)
        + b"RCPT TO:<bob@example.net> ORCPT=rfc822;bob@example.net\r\n"
        + b"RCPT TO:<carol@example.net> ORCPT=rfc822;carol@example.net\r\n"
        + b"DATA\r\n"
    ]
    s.sent()
    s.reply("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n")
    wire = s.sent()
    assert wire == "Subject: test\r\n\r\nHello\r\n..dot line\r\n.\r\nQUIT\r\n"
    assert not s.outcomes
    s.reply("250 2.0.0 Ok: queued as 4Tb1\r\n")
    outcome = s.outcome
    assert s.statuses() == [(10, "sent", "2.0.0"), (11, "sent", "2.0.0")]
    first = outcome.results[0]
    assert first.text == "250 2.0.0 Ok: queued as 4Tb1"
    assert first.relay == "mx.example.net[192.0.2.1]:25"
    assert first.diagnostic == "smtp; 250 2.0.0 Ok: queued as 4Tb1"
    assert first.remote_mta == "dns; mx.example.net"
    assert not outcome.tryNextHost and outcome.reason is None and not outcome.reusable
    assert outcome.dsnOffered and outcome.successAction == "relayed"
    assert s.closed
    assert s.protocol.extensions.keys() >= {"PIPELINING", "SIZE", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING",
                                            "ENHANCEDSTATUSCODES"}
    assert s.protocol.sizeLimit == 10240000 and s.protocol.serverName == "mx.example.net"


def test_non_pipelined_server_gets_one_command_at_a_time():
    s = Session()
    handshake(s, ehlo=EHLO_PLAIN, request=makeRequest(["bob@example.net", "carol@example.net"]))
    assert s.sent() == "MAIL FROM:<alice@example.org> SIZE=%d\r\n" % len(BODY)
    s.reply("250 Ok\r\n")
    assert s.sent() == "RCPT TO:<bob@example.net>\r\n"
    s.reply("250 Ok\r\n")
    assert s.sent() == "RCPT TO:<carol@example.net>\r\n"
    s.reply("250 Ok\r\n")
    assert s.sent() == "DATA\r\n"
    s.reply("354 go\r\n")
    assert s.sent() == BODY.decode().replace("\r\n.dot", "\r\n..dot") + ".\r\n"
    s.reply("250 Ok queued\r\n")
    assert s.sent() == "QUIT\r\n"
    assert s.statuses() == [(10, "sent", "2.0.0"), (11, "sent", "2.0.0")]
    assert s.closed


def test_replies_byte_by_byte_and_all_at_once():
    s = Session()
    s.deliver()
    s.reply("220 mx.example.net ESMTP\r\n", bytewise=True)
    s.reply(EHLO_ALL, bytewise=True)
    s.sent()
    s.reply("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n", bytewise=True)
    s.sent()
    s.reply("250 2.0.0 Ok\r\n", bytewise=True)
    assert s.statuses() == [(10, "sent", "2.0.0")]


def test_greeting_and_ehlo_in_one_read_with_bare_lf_line_ends():
    s = Session()
    s.reply("220 mx.example.net ESMTP\n")  # before deliver(): kept
    s.deliver()
    assert s.sent() == "EHLO client.example.org\r\n"
    s.reply(EHLO_PLAIN.replace("\r\n", "\n"))
    assert s.sent().startswith("MAIL FROM:")


def test_ehlo_rejected_falls_back_to_helo():
    s = Session()
    s.deliver()
    s.reply("220 mx.example.net ESMTP\r\n")
    assert s.sent() == "EHLO client.example.org\r\n"
    s.reply("502 5.5.2 Error: command not recognized\r\n")
    assert s.sent() == "HELO client.example.org\r\n"
    s.reply("250 mx.example.net\r\n")
    assert s.sent() == "MAIL FROM:<alice@example.org>\r\n"  # no extensions, no parameters
    assert s.protocol.extensions == {} and not s.protocol.esmtp


def test_ehlo_421_is_not_retried_with_helo():
    s = Session()
    s.deliver()
    s.reply("220 mx.example.net ESMTP\r\n")
    s.sent()
    s.reply("421 4.7.0 mx.example.net closing\r\n")
    assert s.sent() == ""
    assert s.statuses() == [(10, "deferred", "4.7.0")]
    assert s.outcome.results[0].text == f"host {NAMADDR} refused to talk to me: 421 4.7.0 mx.example.net closing"
    assert s.outcome.tryNextHost and s.closed


def test_helo_rejected():
    s = Session(smtp_never_send_ehlo=True)
    s.deliver()
    s.reply("220 mx.example.net ESMTP\r\n")
    assert s.sent() == "HELO client.example.org\r\n"
    s.reply("550 5.7.1 go away\r\n")
    assert s.statuses() == [(10, "bounced", "5.7.1")]
    assert s.outcome.reason == f"host {NAMADDR} refused to talk to me: 550 5.7.1 go away"
    assert not s.outcome.tryNextHost
    assert s.sent() == "QUIT\r\n"


@pytest.mark.parametrize("greeting, verb", [("220 mx.example.net ESMTP Postfix\r\n", "EHLO"),
                                            ("220 mx.example.net Sendmail\r\n", "HELO")])
def test_always_send_ehlo_off_looks_for_esmtp_in_the_greeting(greeting, verb):
    s = Session(smtp_always_send_ehlo=False)
    s.deliver()
    s.reply(greeting)
    assert s.sent() == f"{verb} client.example.org\r\n"


def test_discarded_ehlo_keywords():
    s = Session(smtp_discard_ehlo_keywords=["pipelining", "Size", "DSN"])
    handshake(s)
    assert s.sent() == "MAIL FROM:<alice@example.org>\r\n"
    assert "PIPELINING" not in s.protocol.extensions and "SMTPUTF8" in s.protocol.extensions


def test_ehlo_keywords_are_case_insensitive():
    s = Session()
    handshake(s, ehlo="250-mx\r\n250-pipelining\r\n250-size 1000\r\n250 auth=login plain\r\n")
    assert s.protocol.extensions == {"PIPELINING": "", "SIZE": "1000", "AUTH": "login plain"}
    assert s.protocol.sizeLimit == 1000
    assert s.transport.writes[0].count(b"\r\n") == 3  # pipelined


# -- per-recipient and per-message failures ---------------------------------------------


def test_recipients_refused_one_by_one():
    s = Session()
    handshake(s, request=makeRequest(["a@example.net", "b@example.net", "c@example.net"]))
    s.sent()
    s.reply("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n450 4.2.0 <b@example.net>: greylisted\r\n"
            "550-5.1.1 <c@example.net>: Recipient address rejected:\r\n550 5.1.1 User unknown\r\n354 go\r\n")
    s.sent()
    s.reply("250 2.0.0 Ok: queued\r\n")
    outcome = s.outcome
    assert s.statuses() == [(10, "sent", "2.0.0"), (11, "deferred", "4.2.0"), (12, "bounced", "5.1.1")]
    assert outcome.results[1].text == (f"host {NAMADDR} said: 450 4.2.0 <b@example.net>: greylisted "
                                       "(in reply to RCPT TO command)")
    assert outcome.results[2].text == (f"host {NAMADDR} said: 550-5.1.1 <c@example.net>: Recipient address "
                                       "rejected: 550 5.1.1 User unknown (in reply to RCPT TO command)")
    assert outcome.results[2].diagnostic == ("smtp; 550-5.1.1 <c@example.net>: Recipient address rejected: "
                                             "550 5.1.1 User unknown")
    assert outcome.results[2].remote_mta == "dns; mx.example.net"
    assert outcome.retry == {11}  # a soft failure may be tried at the next MX, as Postfix does
    assert outcome.reason is None


# 552 after RCPT: RFC 5321 4.5.3.1.10, "too many recipients" is temporary.

TOO_MANY = "552 5.5.3 Error: too many recipients"


def test_552_to_rcpt_defers_the_rest_and_the_accepted_get_the_message():
    s = Session()
    handshake(s, request=makeRequest(["a@example.net", "b@example.net", "c@example.net", "d@example.net"]))
    s.sent()
    s.reply(f"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n{TOO_MANY}\r\n{TOO_MANY}\r\n354 go\r\n")
    assert s.sent().startswith("Subject: test")  # the accepted recipients get the message
    s.reply("250 2.0.0 Ok: queued as 1\r\n")
    assert s.statuses() == [(10, "sent", "2.0.0"), (11, "sent", "2.0.0"), (12, "deferred", "4.5.3"),
                            (13, "deferred", "4.5.3")]
    result = s.outcome.results[2]
    assert result.text == f"host {NAMADDR} said: {TOO_MANY} (in reply to RCPT TO command)"
    assert result.diagnostic == f"smtp; {TOO_MANY}"
    assert s.outcome.retry == {12, 13}


def test_552_to_rcpt_without_an_enhanced_code_is_4_0_0():
    s = Session()
    handshake(s, ehlo=EHLO_PLAIN, request=makeRequest(["a@example.net", "b@example.net"]))
    assert s.sent() == "MAIL FROM:<alice@example.org> SIZE=%d\r\n" % len(BODY)
    s.reply("250 ok\r\n")
    assert s.sent() == "RCPT TO:<a@example.net>\r\n"
    s.reply("250 ok\r\n")
    assert s.sent() == "RCPT TO:<b@example.net>\r\n"
    s.reply("552 Too many recipients\r\n")
    assert s.sent() == "DATA\r\n"
    s.reply("354 go\r\n")
    s.sent()
    s.reply("250 queued\r\n")
    assert s.statuses() == [(10, "sent", "2.0.0"), (11, "deferred", "4.0.0")]


def test_552_to_every_rcpt_defers_all_without_data():
    s = Session()
    handshake(s, ehlo=EHLO_PLAIN, request=makeRequest(["a@example.net"]))
    s.sent()
    s.reply("250 ok\r\n")
    s.sent()
    s.reply(TOO_MANY + "\r\n")
    assert s.sent() == "QUIT\r\n"  # no DATA: nobody was accepted
    assert s.statuses() == [(10, "deferred", "4.5.3")]


def test_552_to_lmtp_rcpt_defers_too():
    s = Session(lmtp=True)
    s.deliver(request=makeRequest(["a@example.net", "b@example.net"]))
    s.reply("220 lmtp ready\r\n")
    s.sent()
    s.reply("250-lmtp\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")
    s.sent()
    s.reply(f"250 2.1.0 ok\r\n250 2.1.5 ok\r\n{TOO_MANY}\r\n354 go\r\n")
    s.sent()
    s.reply("250 2.0.0 <a@example.net> saved\r\n")
    assert s.statuses() == [(10, "sent", "2.0.0"), (11, "deferred", "4.5.3")]


@pytest.mark.parametrize("stage", ["MAIL", "DATA", "."])
def test_552_elsewhere_stays_permanent(stage):
    """Only RCPT's 552 means "too many recipients"; at MAIL, DATA and end of data it is "too much mail data"."""
    s = Session()
    handshake(s)
    s.sent()
    replies = {"MAIL": "250 2.1.0 Ok", "RCPT": "250 2.1.5 Ok", "DATA": "354 go"}
    replies[stage] = "552 5.3.4 Message too big"
    if stage == "MAIL":
        replies.update(RCPT="503 5.5.1 need MAIL", DATA="503 5.5.1 need RCPT")
    s.reply("".join(replies[k] + "\r\n" for k in ("MAIL", "RCPT", "DATA")))
    if stage == ".":
        s.reply("552 5.3.4 Message too big\r\n")
    assert s.statuses() == [(10, "bounced", "5.3.4")]


def test_status_derived_from_the_basic_code():
    s = Session()
    handshake(s, ehlo=EHLO_PLAIN)
    s.sent()
    s.reply("250 ok\r\n")
    s.sent()
    s.reply("550 no such user\r\n")  # no enhanced code
    assert s.statuses() == [(10, "bounced", "5.0.0")]
    assert s.sent() == "QUIT\r\n"  # no DATA


def test_enhanced_code_of_the_wrong_class_is_ignored():
    s = Session()
    handshake(s, ehlo=EHLO_PLAIN)
    s.sent()
    s.reply("250 ok\r\n")
    s.sent()
    s.reply("550 4.1.1 confused\r\n")
    assert s.statuses() == [(10, "bounced", "5.0.0")]


def test_all_recipients_refused_non_pipelined_no_data():
    s = Session()
    handshake(s, ehlo=EHLO_PLAIN, request=makeRequest(["a@example.net", "b@example.net"]))
    s.sent()
    s.reply("250 ok\r\n")
    s.sent()
    s.reply("550 5.1.1 no\r\n")
    s.sent()
    s.reply("450 4.1.1 later\r\n")
    assert s.sent() == "QUIT\r\n"
    assert s.statuses() == [(10, "bounced", "5.1.1"), (11, "deferred", "4.1.1")]
    assert s.closed


def test_all_recipients_refused_pipelined():
    s = Session()
    handshake(s, request=makeRequest(["a@example.net", "b@example.net"]))
    s.sent()
    s.reply("250 2.1.0 ok\r\n550 5.1.1 no\r\n550 5.1.1 no\r\n554 5.5.1 Error: no valid recipients\r\n")
    assert s.sent() == "QUIT\r\n"
    assert s.statuses() == [(10, "bounced", "5.1.1"), (11, "bounced", "5.1.1")]


def test_all_recipients_refused_but_data_accepted_sends_an_empty_message():
    s = Session()
    handshake(s)
    s.sent()
    s.reply("250 2.1.0 ok\r\n550 5.1.1 no\r\n354 go ahead anyway\r\n")
    assert s.sent() == ".\r\n"  # RFC 2920: an empty message, never the content
    s.reply("554 5.5.1 no valid recipients\r\n")
    assert s.sent() == "QUIT\r\n"
    assert s.statuses() == [(10, "bounced", "5.1.1")]


def test_mail_from_refused_pipelined():
    s = Session()
    handshake(s, request=makeRequest(["a@example.net", "b@example.net"]))
    s.sent()
    s.reply("553 5.7.1 <alice@example.org>: Sender address rejected\r\n503 5.5.1 need MAIL\r\n"
            "503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n")
    assert s.sent() == "QUIT\r\n"
    assert s.statuses() == [(10, "bounced", "5.7.1"), (11, "bounced", "5.7.1")]
    assert s.outcome.results[1].text == (f"host {NAMADDR} said: 553 5.7.1 <alice@example.org>: Sender address "
                                         "rejected (in reply to MAIL FROM command)")


def test_mail_from_deferred_non_pipelined():
    s = Session()
    handshake(s, ehlo=EHLO_PLAIN)
    s.sent()
    s.reply("451 4.3.0 try later\r\n")
    assert s.sent() == "QUIT\r\n"
    assert s.statuses() == [(10, "deferred", "4.3.0")]
    assert s.outcome.retry == {10}


def test_data_refused():
    s = Session()
    handshake(s, request=makeRequest(["a@example.net", "b@example.net"]))
    s.sent()
    s.reply("250 ok\r\n250 ok\r\n550 5.1.1 no\r\n554 5.7.1 DATA refused\r\n")
    assert s.sent() == "QUIT\r\n"
    assert s.statuses() == [(10, "bounced", "5.7.1"), (11, "bounced", "5.1.1")]
    assert s.outcome.results[0].text == f"host {NAMADDR} said: 554 5.7.1 DATA refused (in reply to DATA command)"


@pytest.mark.parametrize("reply, status, dsn", [("451 4.3.0 queue trouble", "deferred", "4.3.0"),
                                                ("554 5.7.1 spam", "bounced", "5.7.1"),
                                                ("354 again?", "bounced", "5.5.0")])
def test_end_of_data_refused(reply, status, dsn):
    s = Session()
    handshake(s, request=makeRequest(["a@example.net", "b@example.net"]))
    s.sent()
    s.reply("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    s.sent()
    s.reply(reply + "\r\n")
    assert s.statuses() == [(10, status, dsn), (11, status, dsn)]
    text = f"host {NAMADDR} said: {reply} (in reply to end of DATA command)"
    if dsn == "5.5.0":
        text = "Protocol error: " + text
    assert s.outcome.results[0].text == text
    assert s.outcome.retry == ({10, 11} if status == "deferred" else set())


def test_reply_of_the_wrong_class_is_a_protocol_error():
    s = Session()
    handshake(s)
    s.sent()
    s.reply("250 ok\r\n354 what\r\n554 no recipients\r\n")
    assert s.statuses() == [(10, "bounced", "5.5.0")]
    assert s.outcome.results[0].text == (f"Protocol error: host {NAMADDR} said: 354 what "
                                         "(in reply to RCPT TO command)")


def test_size_limit_of_the_server_is_respected():
    s = Session()
    handshake(s, ehlo="250-mx\r\n250-PIPELINING\r\n250 SIZE 10\r\n", request=makeRequest(size=1000))
    assert s.sent() == "QUIT\r\n"
    assert s.statuses() == [(10, "bounced", "5.3.4")]
    assert s.outcome.results[0].text == f"message size 1000 exceeds size limit 10 of server {NAMADDR}"
    assert s.outcome.results[0].diagnostic is None
    assert not s.outcome.tryNextHost


def test_size_refused_at_mail():
    s = Session()
    handshake(s)
    s.sent()
    s.reply("552 5.3.4 Message size exceeds fixed limit\r\n503 5.5.1 no\r\n503 5.5.1 no\r\n")
    assert s.statuses() == [(10, "bounced", "5.3.4")]


def test_smtputf8_needed_and_not_offered():
    s = Session()
    handshake(s, ehlo=EHLO_PLAIN, request=makeRequest(["jöe@example.net"], smtputf8=True))
    assert s.sent() == "QUIT\r\n"
    assert s.statuses() == [(10, "bounced", "5.6.7")]
    assert s.outcome.results[0].text == f"SMTPUTF8 is required, but was not offered by host {NAMADDR}"
    assert s.outcome.retry == {10}  # another MX may offer it (as Postfix does since 2025)


def test_smtputf8_needed_for_a_non_ascii_address():
    s = Session()
    handshake(s, ehlo=EHLO_PLAIN, request=makeRequest(["jöe@example.net"]))
    assert s.statuses() == [(10, "bounced", "5.6.7")]


def test_smtputf8_offered_and_used():
    s = Session()
    handshake(s, request=makeRequest(["jöe@example.net"], smtputf8=True))
    wire = s.transport.writes[0].decode("utf-8")
    assert wire.startswith("MAIL FROM:<alice@example.org> SIZE=%d SMTPUTF8\r\n" % len(BODY))
    assert "RCPT TO:<jöe@example.net> ORCPT=utf-8;j\\x{F6}e@example.net\r\n" in wire


def test_body_8bitmime_when_offered():
    s = Session()
    handshake(s, request=makeRequest(body="8BITMIME"))
    assert s.sent().startswith("MAIL FROM:<alice@example.org> SIZE=%d BODY=8BITMIME\r\n" % len(BODY))


def test_8bit_mail_to_a_server_without_8bitmime_goes_as_it_is():
    s = Session()
    handshake(s, ehlo="250-mx\r\n250 PIPELINING\r\n", request=makeRequest(body="8BITMIME"))
    assert s.sent().startswith("MAIL FROM:<alice@example.org>\r\n")


def test_dsn_parameters_pass_through_as_xtext():
    request = makeRequest(
        ["x+y@example.net", "z@example.net", "w@example.net"],
        envid="id+1=2 é", ret="HDRS",
        rcptOptions={
            "x+y@example.net": {"notify": ("SUCCESS", "FAILURE")},
            "z@example.net": {"orcpt": "rfc822;Orig=Z@Example.NET", "notify": ("NEVER",)},
            "w@example.net": {"orcpt": "utf-8;jö e@example.net"},
        },
    )
    s = Session()
    handshake(s, request=request)
    assert s.sent() == (
        "MAIL FROM:<alice@example.org> SIZE=%d ENVID=id+2B1+3D2+20+C3+A9 RET=HDRS\r\n" % len(BODY)
        + "RCPT TO:<x+y@example.net> ORCPT=rfc822;x+2By@example.net NOTIFY=SUCCESS,FAILURE\r\n"
        + "RCPT TO:<z@example.net> ORCPT=rfc822;Orig+3DZ@Example.NET NOTIFY=NEVER\r\n"
        + "RCPT TO:<w@example.net> ORCPT=utf-8;j\\x{F6}\\x{20}e@example.net\r\n"
        + "DATA\r\n"
    )


def test_no_dsn_parameters_without_dsn():
    request = makeRequest(envid="abc", ret="FULL", rcptOptions={"bob@example.net": {"notify": ("NEVER",)}})
    s = Session()
    handshake(s, ehlo="250-mx\r\n250 PIPELINING\r\n", request=request)
    assert s.sent() == "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.net>\r\nDATA\r\n"
    s.reply("250 ok\r\n250 ok\r\n354 go\r\n")
    s.sent()
    s.reply("250 ok\r\n")
    assert not s.outcome.dsnOffered


def test_envelope_addresses_are_quoted_as_rfc_5321_wants():
    request = makeRequest(['john smith@example.net', '"jim"@example.net', '"a\\"b"@example.net'], sender="")
    s = Session()
    handshake(s, ehlo="250-mx\r\n250 PIPELINING\r\n", request=request)
    assert s.sent() == ('MAIL FROM:<>\r\nRCPT TO:<"john smith"@example.net>\r\nRCPT TO:<jim@example.net>\r\n'
                        'RCPT TO:<"a\\"b"@example.net>\r\nDATA\r\n')


def test_unquoted_envelope_when_quoting_is_off():
    request = makeRequest(['"jim"@example.net', "john smith@example.net"])
    s = Session(smtp_quote_rfc821_envelope=False)
    handshake(s, ehlo="250-mx\r\n250 PIPELINING\r\n", request=request)
    assert s.sent() == 'MAIL FROM:<alice@example.org>\r\nRCPT TO:<"jim"@example.net>\r\nDATA\r\n'
    s.reply("250 ok\r\n250 ok\r\n354 go\r\n")
    s.sent()
    s.reply("250 ok\r\n")
    assert s.statuses() == [(10, "sent", "2.0.0"), (11, "bounced", "5.1.3")]


def test_damaged_addresses_never_reach_the_wire():
    request = makeRequest(["ok@example.net", "bad\r\nRCPT TO:<x@evil>@example.net", "b@exa>mple.net",
                           "b@example.net NOTIFY=NEVER"])
    s = Session()
    handshake(s, ehlo="250-mx\r\n250 PIPELINING\r\n", request=request)
    assert s.sent() == "MAIL FROM:<alice@example.org>\r\nRCPT TO:<ok@example.net>\r\nDATA\r\n"
    s.reply("250 ok\r\n250 ok\r\n354 go\r\n")
    s.sent()
    s.reply("250 ok\r\n")
    assert s.statuses() == [(10, "sent", "2.0.0"), (11, "bounced", "5.1.3"), (12, "bounced", "5.1.3"),
                            (13, "bounced", "5.1.3")]


def test_damaged_sender_bounces_without_mail():
    s = Session()
    handshake(s, request=makeRequest(sender="a\x00b@example.org"))
    assert s.sent() == "QUIT\r\n"
    assert s.statuses() == [(10, "bounced", "5.1.7")]


# -- greetings ---------------------------------------------------------------------------


def test_5xx_greeting_tries_the_next_host():
    s = Session()
    s.deliver()
    s.reply("554 5.7.1 mx.example.net go away\r\n")
    assert s.sent() == "QUIT\r\n"
    assert s.statuses() == [(10, "deferred", "4.7.1")]
    assert s.outcome.tryNextHost and s.outcome.retry == {10}
    assert s.outcome.reason == f"host {NAMADDR} refused to talk to me: 554 5.7.1 mx.example.net go away"
    assert s.outcome.results[0].diagnostic == "smtp; 554 5.7.1 mx.example.net go away"


def test_5xx_greeting_bounces_without_smtp_skip_5xx_greeting():
    s = Session(smtp_skip_5xx_greeting=False)
    s.deliver()
    s.reply("554 mx.example.net go away\r\n")
    assert s.statuses() == [(10, "bounced", "5.0.0")]
    assert not s.outcome.tryNextHost


def test_4xx_greeting_tries_the_next_host():
    s = Session()
    s.deliver()
    s.reply("421 4.3.2 mx.example.net busy\r\n")
    assert s.sent() == ""  # 421: the server is closing, no QUIT
    assert s.statuses() == [(10, "deferred", "4.3.2")]
    assert s.outcome.tryNextHost and s.closed


def test_mail_loop_is_detected():
    s = Session(myhostname="client.example.org")
    s.deliver()
    s.reply("220 x ESMTP\r\n")
    s.sent()
    s.reply("250-CLIENT.example.org\r\n250 PIPELINING\r\n")
    assert s.sent() == "QUIT\r\n"
    assert s.statuses() == [(10, "bounced", "5.4.6")]
    assert s.outcome.results[0].text == "mail for example.net loops back to myself"


def test_mail_loop_at_a_backup_mx_tries_the_next_host():
    s = Session()
    s.deliver(bestMx=False)
    s.reply("220 x ESMTP\r\n")
    s.sent()
    s.reply("250 client.example.org\r\n")
    assert s.statuses() == [(10, "deferred", "4.4.6")]
    assert s.outcome.tryNextHost


# -- LMTP ----------------------------------------------------------------------------------


def test_lmtp_one_reply_per_accepted_recipient():
    s = Session(lmtp=True, lmtp_skip_quit_response=False)
    s.deliver(makeRequest(["a@example.net", "b@example.net", "c@example.net"]))
    s.reply("220 lmtp.example.net LMTP ready\r\n")
    assert s.sent() == "LHLO client.example.org\r\n"
    s.reply("250-lmtp.example.net\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n")
    assert s.transport.writes == [b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<a@example.net>\r\n"
                                  b"RCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n"]
    s.sent()
    s.reply("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 <b@example.net> User unknown\r\n250 2.1.5 ok\r\n354 go\r\n")
    assert s.sent().endswith("\r\n.\r\nQUIT\r\n")
    s.reply("250 2.0.0 <a@example.net> Saved\r\n")
    assert not s.outcomes
    s.reply("452 4.2.2 <c@example.net> Mailbox full\r\n")
    assert not s.outcomes  # waiting for the QUIT reply (lmtp_skip_quit_response = no)
    s.reply("221 2.0.0 bye\r\n")
    assert s.statuses() == [(10, "sent", "2.0.0"), (11, "bounced", "5.1.1"), (12, "deferred", "4.2.2")]
    assert s.outcome.results[0].text == "250 2.0.0 <a@example.net> Saved"
    assert s.outcome.results[2].text == (f"host {NAMADDR} said: 452 4.2.2 <c@example.net> Mailbox full "
                                         "(in reply to end of DATA command)")
    assert s.closed


def test_lmtp_lhlo_refused_has_no_helo_fallback():
    s = Session(lmtp=True)
    s.deliver()
    s.reply("220 lmtp\r\n")
    s.sent()
    s.reply("500 5.5.1 what\r\n")
    assert s.sent() == "QUIT\r\n"
    assert s.statuses() == [(10, "bounced", "5.5.1")]


def test_lmtp_connection_lost_between_final_replies():
    s = Session(lmtp=True)
    s.deliver(makeRequest(["a@example.net", "b@example.net"]))
    s.reply("220 lmtp\r\n")
    s.reply("250-lmtp\r\n250 PIPELINING\r\n")
    s.reply("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    s.reply("250 2.0.0 a saved\r\n")
    s.lose()
    assert s.statuses() == [(10, "sent", "2.0.0"), (11, "deferred", "4.4.2")]
    assert s.outcome.results[1].text == (f"lost connection with {NAMADDR} while sending end of data -- message "
                                         "may be sent more than once")
    assert not s.outcome.tryNextHost


@pytest.mark.parametrize("assumeFinal, ehlo, action", [(True, "250 PIPELINING", "delivered"),
                                                       (True, "250 DSN", "relayed"),
                                                       (False, "250 PIPELINING", "relayed")])
def test_lmtp_assume_final(assumeFinal, ehlo, action):
    s = Session(lmtp=True, lmtp_assume_final=assumeFinal)
    s.deliver()
    s.reply("220 lmtp\r\n")
    s.reply(f"250-lmtp\r\n{ehlo}\r\n")
    s.reply("250 ok\r\n")
    s.reply("250 ok\r\n")
    s.reply("354 go\r\n")
    s.reply("250 ok\r\n")
    assert s.outcome.successAction == action


# -- timeouts ------------------------------------------------------------------------------

def toMail(s, ehlo=EHLO_PLAIN, **kw):
    handshake(s, ehlo=ehlo, **kw)
    s.sent()


@pytest.mark.parametrize("phase", ["greeting", "ehlo", "mail", "rcpt", "data", "body", "dot"])
def test_every_phase_has_its_own_timeout(phase):
    s = Session(smtp_helo_timeout=11, smtp_mail_timeout=12, smtp_rcpt_timeout=13, smtp_data_init_timeout=14,
                smtp_data_xfer_timeout=15, smtp_data_done_timeout=16, smtp_rset_timeout=17, smtp_quit_timeout=18)
    stage, limit = {
        "greeting": ("receiving the initial server greeting", 11),
        "ehlo": ("performing the EHLO handshake", 11),
        "mail": ("sending MAIL FROM", 12),
        "rcpt": ("sending RCPT TO", 13),
        "data": ("sending DATA command", 14),
        "body": ("sending message body", 15),
        "dot": ("sending end of data -- message may be sent more than once", 16),
    }[phase]

    def stalling():
        yield b"first\r\n"
        s.protocol.pauseProducing()  # the transport's buffer is full, and stays so
        yield b"second\r\n"

    s.deliver(content=stalling if phase == "body" else [BODY])
    for step, reply in [("greeting", "220 mx ESMTP\r\n"), ("ehlo", EHLO_PLAIN), ("mail", "250 ok\r\n"),
                        ("rcpt", "250 ok\r\n"), ("data", "354 go\r\n"), ("body", None)]:
        if phase == step:
            break
        if reply:
            s.reply(reply)
    s.clock.advance(limit - 0.5)
    assert not s.outcomes
    s.clock.advance(1)
    assert s.statuses() == [(10, "deferred", "4.4.2")]
    assert s.outcome.results[0].text == f"conversation with {NAMADDR} timed out while {stage}"
    assert s.outcome.tryNextHost == (phase != "dot")
    assert s.transport.disconnected  # aborted
    assert not s.clock.getDelayedCalls()


def test_a_trickling_server_cannot_extend_the_deadline():
    s = Session(smtp_helo_timeout=10)
    s.deliver()
    for _ in range(9):
        s.reply("2")
        s.clock.advance(1)
    s.clock.advance(1.5)
    assert s.statuses() == [(10, "deferred", "4.4.2")]


def test_data_transfer_timeout_is_renewed_by_progress():
    s = Session(smtp_data_xfer_timeout=10)

    def content():
        for i in range(5):
            yield b"line %d\r\n" % i
            s.protocol.pauseProducing()

    toMail(s, content=content)
    s.reply("250 ok\r\n")
    s.sent()
    s.reply("250 ok\r\n")
    s.sent()
    s.reply("354 go\r\n")
    for _ in range(6):
        s.clock.advance(9)
        s.protocol.resumeProducing()
    assert s.sent().endswith("line 4\r\n.\r\n")
    s.reply("250 ok\r\n")
    assert s.statuses() == [(10, "sent", "2.0.0")]


def test_quit_reply_timeout():
    s = Session(smtp_skip_quit_response=False, smtp_quit_timeout=5)
    toMail(s)
    s.reply("250 ok\r\n")
    s.reply("250 ok\r\n")
    s.reply("354 go\r\n")
    s.reply("250 ok\r\n")
    assert not s.outcomes
    s.clock.advance(6)
    assert s.statuses() == [(10, "sent", "2.0.0")]
    assert s.transport.disconnecting


# -- lost connections ---------------------------------------------------------------------


@pytest.mark.parametrize("phase, stage, retry", [
    ("greeting", "receiving the initial server greeting", True),
    ("ehlo", "performing the EHLO handshake", True),
    ("mail", "sending MAIL FROM", True),
    ("rcpt", "sending RCPT TO", True),
    ("data", "sending DATA command", True),
    ("dot", "sending end of data -- message may be sent more than once", False),
])
def test_lost_connection_at_each_phase(phase, stage, retry):
    s = Session()
    s.deliver()
    for step, reply in [("greeting", "220 mx ESMTP\r\n"), ("ehlo", EHLO_PLAIN), ("mail", "250 ok\r\n"),
                        ("rcpt", "250 ok\r\n"), ("data", "354 go\r\n")]:
        if phase == step:
            break
        s.reply(reply)
    s.lose()
    assert s.statuses() == [(10, "deferred", "4.4.2")]
    assert s.outcome.results[0].text == f"lost connection with {NAMADDR} while {stage}"
    assert s.outcome.results[0].diagnostic is None and s.outcome.results[0].remote_mta is None
    assert s.outcome.tryNextHost is retry
    assert s.outcome.reason == s.outcome.results[0].text
    assert not s.outcome.reusable


def test_lost_connection_during_the_body_after_a_refusal():
    s = Session()

    def content():
        yield b"first\r\n"
        s.protocol.pauseProducing()
        yield b"second\r\n"

    toMail(s, content=content, request=makeRequest(["a@example.net", "b@example.net"]))
    for reply in ("250 ok\r\n", "250 ok\r\n", "250 ok\r\n", "354 go\r\n"):
        s.reply(reply)
    s.reply("552 5.3.4 Message size exceeds fixed limit\r\n")  # a premature refusal, then the close
    s.lose()
    assert s.statuses() == [(10, "bounced", "5.3.4"), (11, "bounced", "5.3.4")]
    assert s.outcome.results[0].text == (f"host {NAMADDR} said: 552 5.3.4 Message size exceeds fixed limit "
                                         "(in reply to end of DATA command)")


def test_lost_connection_during_the_body():
    s = Session()

    def content():
        yield b"first\r\n"
        s.protocol.pauseProducing()
        yield b"second\r\n"

    toMail(s, content=content)
    for reply in ("250 ok\r\n", "250 ok\r\n", "354 go\r\n"):
        s.reply(reply)
    s.reply("250 2.0.0 a bogus early ok\r\n")  # never success before the final dot
    s.lose()
    assert s.statuses() == [(10, "deferred", "4.4.2")]
    assert s.outcome.results[0].text == f"lost connection with {NAMADDR} while sending message body"
    assert s.outcome.tryNextHost
    assert "second" not in s.sent()


def test_lost_connection_after_the_final_dot_defers_all():
    s = Session()
    handshake(s, request=makeRequest(["a@example.net", "b@example.net"]))
    s.reply("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    assert s.sent().endswith("\r\n.\r\nQUIT\r\n")
    s.lose()
    assert s.statuses() == [(10, "deferred", "4.4.2"), (11, "deferred", "4.4.2")]
    assert not s.outcome.tryNextHost  # the RFC 1047 window: maybe delivered, never reported sent


def test_421_in_the_middle_of_recipients():
    s = Session()
    handshake(s, request=makeRequest(["a@example.net", "b@example.net", "c@example.net"]))
    s.sent()
    s.reply("250 ok\r\n250 ok\r\n421 4.4.2 mx.example.net timeout\r\n")
    assert s.statuses() == [(10, "deferred", "4.4.2"), (11, "deferred", "4.4.2"), (12, "deferred", "4.4.2")]
    assert s.outcome.results[1].text == (f"host {NAMADDR} said: 421 4.4.2 mx.example.net timeout "
                                         "(in reply to RCPT TO command)")
    assert s.outcome.results[0].text == f"lost connection with {NAMADDR} while sending RCPT TO"
    assert s.sent() == ""  # no QUIT after 421
    assert s.closed and s.outcome.retry == {10, 11, 12}


def test_deliver_on_a_dead_connection():
    s = Session()
    s.lose()
    s.deliver()
    assert s.statuses() == [(10, "deferred", "4.4.2")]
    assert s.outcome.tryNextHost


# -- hostile servers --------------------------------------------------------------------------


def test_over_long_reply_lines_are_cut():
    s = Session()
    handshake(s, ehlo=EHLO_PLAIN)
    s.sent()
    s.reply("250 ok\r\n")
    s.sent()
    s.reply("550 5.1.1 " + "x" * 100000 + "\r\n")
    result = s.outcome.results[0]
    assert result.status == "bounced" and result.dsn == "5.1.1"
    assert len(result.diagnostic) <= REPLY_LINE_LIMIT + 10


def test_over_long_line_split_across_reads():
    s = Session()
    s.deliver()
    s.reply("220 " + "y" * (REPLY_LINE_LIMIT * 3))
    s.reply("z" * 10000)
    s.reply("zz\r\n")
    assert s.sent() == "EHLO client.example.org\r\n"
    assert s.protocol._parser.buffered == 0


def test_a_long_multi_line_reply_is_read_to_its_end_and_its_text_bounded():
    """As Postfix's smtp_chat_resp(): the text kept stops near line_length_limit, the reply is read to its end."""
    s = Session()
    s.deliver()
    s.reply("220 mx ESMTP\r\n")
    s.sent()
    s.reply("250-mx.example.net\r\n" + "250-x\r\n" * 5000 + "250 PIPELINING\r\n")
    assert s.sent().startswith("MAIL FROM:")  # the reply was complete and positive
    assert "PIPELINING" not in s.protocol.extensions  # beyond the kept text, as in Postfix
    assert s.protocol._parser.buffered == 0


class RecordingMaillog:
    """A MailLogger stand-in: (queue id, line) of each warning."""

    def __init__(self):
        self.lines = []

    def emit(self, text, queue_id=None, level=None, **fields):
        self.lines.append((queue_id, text))


MIXED = "250-first line\r\n550 5.1.1 second line\r\n"

# The phases where a reply is read, the replies that lead there (pipelined SMTP), the stage text.
MIXED_PHASES = {
    "greeting": ([], "receiving the initial server greeting"),
    "ehlo": (["220 mx ESMTP"], "performing the EHLO handshake"),
    "mail": (["220 mx ESMTP", EHLO_ALL.strip()], "sending MAIL FROM"),
    "rcpt": (["220 mx ESMTP", EHLO_ALL.strip(), "250 2.1.0 Ok"], "sending RCPT TO"),
    "rcpt2": (["220 mx ESMTP", EHLO_ALL.strip(), "250 2.1.0 Ok", "250 2.1.5 Ok"], "sending RCPT TO"),
    "data": (["220 mx ESMTP", EHLO_ALL.strip(), "250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok"],
             "sending DATA command"),
    "dot": (["220 mx ESMTP", EHLO_ALL.strip(), "250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok", "354 go"],
            "sending end of data -- message may be sent more than once"),
}


@pytest.mark.parametrize("phase", list(MIXED_PHASES))
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_a_multi_line_reply_with_different_codes_is_a_protocol_error(phase, bytewise):
    """'250-a' then '550 b' is neither 250 nor 550: deferred (4.5.0), the connection dropped, in every phase."""
    maillog = RecordingMaillog()
    s = Session()
    s.protocol.maillog = maillog
    s.deliver(makeRequest(["a@example.net", "b@example.net"]))
    before, stage = MIXED_PHASES[phase]
    for reply in before:
        s.reply(reply + "\r\n")
    assert not s.outcomes
    s.reply(MIXED, bytewise)
    assert s.statuses() == [(10, "deferred", "4.5.0"), (11, "deferred", "4.5.0")]
    result = s.outcome.results[0]
    assert result.text == f"malformed multi-line response from {NAMADDR} while {stage}"
    assert result.diagnostic is None  # not a reply of the server's: no Diagnostic-Code
    assert s.outcome.tryNextHost == (phase != "dot")  # after the ".", it may have been delivered: not elsewhere now
    assert s.transport.disconnected  # aborted: the conversation is out of step
    assert maillog.lines == [("4TbC0hR2x8Zq", f"warning: malformed multi-line response from {NAMADDR}:25: "
                                              "reply code 550 after 250: 550 5.1.1 second line")]
    assert not s.clock.getDelayedCalls()


def test_a_multi_line_reply_with_different_codes_without_pipelining():
    s = Session()
    handshake(s, ehlo=EHLO_PLAIN)
    assert s.sent().startswith("MAIL FROM:")
    s.reply("250 ok\r\n")
    assert s.sent() == "RCPT TO:<bob@example.net>\r\n"
    s.reply("550-5.1.1 no such user\r\n250 2.1.5 ok\r\n")
    assert s.statuses() == [(10, "deferred", "4.5.0")]
    assert s.outcome.results[0].text == f"malformed multi-line response from {NAMADDR} while sending RCPT TO"


def test_lmtp_per_recipient_reply_with_different_codes():
    """LMTP after ".": the first answer counts, the malformed second defers the rest (not elsewhere now)."""
    s = Session(lmtp=True)
    s.deliver(makeRequest(["a@example.net", "b@example.net", "c@example.net"]))
    s.reply("220 lmtp ready\r\n")
    s.sent()
    s.reply("250-lmtp\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")
    s.sent()
    s.reply("250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go\r\n")
    s.sent()
    s.reply("250 2.0.0 <a@example.net> Saved\r\n250-2.0.0 <b@example.net> Saved\r\n452 4.2.2 oops\r\n")
    assert s.statuses() == [(10, "sent", "2.0.0"), (11, "deferred", "4.5.0"), (12, "deferred", "4.5.0")]
    assert s.outcome.results[1].text == (f"malformed multi-line response from {NAMADDR} while sending end of "
                                         "data -- message may be sent more than once")
    assert s.outcome.retry == frozenset()
    assert s.transport.disconnected


# -- unbounded replies: memory stays bounded, the phase's deadline ends them -----------------------


@pytest.mark.parametrize("kind", ["multi-line", "one-line"])
@pytest.mark.parametrize("phase", ["ehlo", "rcpt"])
def test_an_endless_reply_is_read_in_bounded_memory_until_the_deadline(kind, phase):
    """
    100 MB of reply at 1 MB a second, as 64 KiB reads: what is held stays
    under 2 x line_length_limit, and the phase's deadline (not renewed by
    the input) ends it with a deferral.
    """
    maillog = RecordingMaillog()
    s = Session(smtp_helo_timeout=100, smtp_rcpt_timeout=100)
    s.protocol.maillog = maillog
    s.deliver()
    s.reply("220 mx ESMTP\r\n")
    if phase == "rcpt":
        s.reply(EHLO_ALL)
        s.reply("250 2.1.0 Ok\r\n")
    chunk = (b"250-" + b"x" * 1018 + b"\r\n") * 64 if kind == "multi-line" else b"y" * 65536
    s.reply(b"250-start\r\n" if kind == "multi-line" else b"250 ")
    peak = 0
    for second in range(100):
        for _ in range(16):  # 16 x 64 KiB = 1 MiB a second
            s.protocol.dataReceived(chunk)
            peak = max(peak, s.protocol._parser.buffered)
        if second < 99:
            s.clock.advance(1)
            assert not s.outcomes, second
    assert peak <= 2 * REPLY_LINE_LIMIT + 1
    s.clock.advance(1)
    stage = {"ehlo": "performing the EHLO handshake", "rcpt": "sending RCPT TO"}[phase]
    assert s.statuses() == [(10, "deferred", "4.4.2")]
    assert s.outcome.results[0].text == f"conversation with {NAMADDR} timed out while {stage}"
    assert s.transport.disconnected and not s.clock.getDelayedCalls()
    assert maillog.lines == []  # the reply never ended: nothing to warn of yet


def test_an_over_long_reply_is_warned_of_as_postfix_does():
    maillog = RecordingMaillog()
    s = Session()
    s.protocol.maillog = maillog
    handshake(s, ehlo="250-mx.example.net\r\n250-" + "j" * 3000 + "\r\n" + "250-X\r\n" * 3
              + "250-" + "k" * 3000 + "\r\n250 PIPELINING\r\n")
    assert maillog.lines == [
        ("4TbC0hR2x8Zq", f"warning: {NAMADDR}:25: response longer than 2048: {'250-' + 'j' * 26}..."),
        ("4TbC0hR2x8Zq", f"warning: {NAMADDR}:25: multi-line response longer than 2048 250-mx.example.net..."),
    ]
    assert s.sent().startswith("MAIL FROM:")


def test_the_reply_text_limit_is_line_length_limit():
    s = Session(line_length_limit=100)
    handshake(s, ehlo=EHLO_PLAIN)
    s.sent()
    s.reply("250 ok\r\n")
    s.sent()
    s.reply("550 5.1.1 " + "z" * 500 + "\r\n")
    assert s.outcome.results[0].diagnostic == "smtp; 550 5.1.1 " + "z" * 90


def test_garbage_instead_of_a_reply():
    s = Session()
    s.deliver()
    s.reply("HTTP/1.0 400 Bad Request\r\n")
    assert s.statuses() == [(10, "deferred", "4.5.0")]
    assert s.outcome.results[0].text == (f"non-SMTP response from {NAMADDR} while receiving the initial "
                                         "server greeting")
    assert s.outcome.tryNextHost and s.transport.disconnected


@pytest.mark.parametrize("line", ["099 hello", "600 x", "25 short", "2500 long", "250_x", "abc"])
def test_malformed_reply_lines(line):
    s = Session()
    s.deliver()
    s.reply(line + "\r\n")
    assert s.statuses() == [(10, "deferred", "4.5.0")]


def test_unsolicited_replies_are_a_protocol_error():
    s = Session()
    s.deliver()
    s.reply("220 mx ESMTP\r\n250 surprise\r\n250 another\r\n")
    assert s.statuses() == [(10, "deferred", "4.5.0")]
    assert "unexpected response" in s.outcome.results[0].text


def test_control_characters_in_replies_never_reach_the_results():
    s = Session()
    handshake(s, ehlo=EHLO_PLAIN)
    s.sent()
    s.reply("250 ok\r\n")
    s.sent()
    s.reply(b"550 5.1.1 bad\rinjected\x00\x1b[31m\tred \xff\xfe\xe2\x80\xa8end\r\n")
    result = s.outcome.results[0]
    assert result.text == (f"host {NAMADDR} said: 550 5.1.1 bad?injected??[31m?red \ufffd\ufffd?end "
                           "(in reply to RCPT TO command)")
    for field in (result.text, result.diagnostic):
        assert all(c.isprintable() for c in field)


# -- content ---------------------------------------------------------------------------------


def test_dot_stuffing_across_chunk_boundaries():
    s = Session()
    chunks = [b"Subject: x\r\n\r\nline\r\n", b".\r\nMAIL FROM:<evil@example.com>\r\n", b".", b"\r", b"\n",
              b"bare\nlf and bare\rcr", b" no final newline"]
    handshake(s, content=chunks)
    s.sent()
    s.reply("250 ok\r\n250 ok\r\n354 go\r\n")
    wire = s.sent().encode()
    assert wire.endswith(b"\r\n.\r\nQUIT\r\n")
    body = wire[: -len(b"QUIT\r\n")]
    assert unstuff(body) == (b"Subject: x\r\n\r\nline\r\n.\r\nMAIL FROM:<evil@example.com>\r\n.\r\n"
                             b"bare\r\nlf and bare\r\ncr no final newline\r\n")


def test_async_content_source():
    async def chunks():
        yield b"one\r\n"
        yield b".two"

    s = Session()
    handshake(s, content=chunks)
    s.sent()
    s.reply("250 ok\r\n250 ok\r\n354 go\r\n")
    assert s.sent() == "one\r\n..two\r\n.\r\nQUIT\r\n"


def test_large_content_goes_in_bounded_writes():
    s = Session()
    big = b"x" * 900 + b"\r\n"
    content = [big * 300]  # one 270 KB chunk
    handshake(s, content=content)
    s.sent()
    s.reply("250 ok\r\n250 ok\r\n354 go\r\n")
    assert all(len(w) <= WRITE_SIZE for w in s.transport.writes[:-1])
    assert len(s.transport.writes) >= 5
    assert s.transport.producer is None  # unregistered at the end


def test_backpressure_waits_for_the_transport():
    s = Session()
    pieces = [b"a" * 1000 + b"\r\n"] * 5
    pulled = []

    def content():
        for piece in pieces:
            pulled.append(piece)
            yield piece

    handshake(s, content=content)
    s.sent()
    s.protocol.pauseProducing()
    s.reply("250 ok\r\n250 ok\r\n354 go\r\n")
    assert s.transport.producer is s.protocol and s.transport.streaming
    assert len(pulled) == 1 and s.sent() == ""
    s.protocol.resumeProducing()
    assert s.sent().endswith(".\r\nQUIT\r\n") and len(pulled) == 5


def test_unreadable_content_never_sends_the_final_dot():
    def content():
        yield b"first part\r\n"
        raise OSError("I/O error")

    s = Session()
    handshake(s, content=content)
    s.sent()
    s.reply("250 ok\r\n250 ok\r\n354 go\r\n")
    assert s.sent() == "first part\r\n"
    assert s.statuses() == [(10, "deferred", "4.3.0")]
    assert s.outcome.results[0].text == "unreadable mail queue entry"
    assert not s.outcome.tryNextHost
    assert s.transport.disconnected


def test_content_is_not_read_for_refused_mail():
    def content():
        raise AssertionError("must not be called")

    s = Session()
    handshake(s, content=content)
    s.sent()
    s.reply("250 ok\r\n550 no\r\n554 no\r\n")
    assert s.statuses() == [(10, "bounced", "5.0.0")]


# -- connection reuse ------------------------------------------------------------------------


def test_keep_open_then_reuse_reset_and_quit():
    s = Session()
    handshake(s, keepOpen=True)
    s.sent()
    s.reply("250 ok\r\n250 ok\r\n354 go\r\n")
    assert s.sent().endswith("\r\n.\r\n")  # no QUIT
    s.reply("250 2.0.0 queued\r\n")
    assert s.outcome.reusable and not s.closed
    assert not s.clock.getDelayedCalls()

    resets = []
    s.protocol.reset().addCallback(resets.append)
    assert s.sent() == "RSET\r\n"
    s.reply("250 2.0.0 Ok\r\n")
    assert resets == [True]

    s.outcomes = []
    s.deliver(makeRequest(["z@example.net"]), keepOpen=True)
    assert s.sent().startswith("MAIL FROM:<alice@example.org>")  # no greeting, no EHLO
    s.reply("250 ok\r\n550 5.1.1 no\r\n554 no\r\n")
    assert s.sent() == "RSET\r\n"  # the aborted transaction is reset before reuse
    s.reply("250 ok\r\n")
    assert s.statuses() == [(10, "bounced", "5.1.1")]
    assert s.outcome.reusable

    quits = []
    s.protocol.quit().addCallback(quits.append)
    assert s.sent() == "QUIT\r\n" and s.closed and quits == [None]


def test_reset_probe_failure():
    s = Session(smtp_rset_timeout=3)
    handshake(s, keepOpen=True)
    s.reply("250 ok\r\n250 ok\r\n354 go\r\n")
    s.reply("250 ok\r\n")
    resets = []
    s.protocol.reset().addCallback(resets.append)
    assert s.sent().endswith("RSET\r\n")
    s.clock.advance(2.5)
    assert resets == [] and not s.transport.disconnected
    s.clock.advance(1)
    assert resets == [False] and s.transport.disconnected


def test_final_rset_refused_ends_the_session():
    s = Session()
    handshake(s, keepOpen=True)
    s.sent()
    s.reply("451 4.3.0 later\r\n503 no\r\n503 no\r\n")
    assert s.sent() == "RSET\r\n"
    s.reply("500 what\r\n")
    assert s.sent() == "QUIT\r\n"
    assert not s.outcome.reusable and s.closed


def test_reuse_of_a_connection_that_died_while_idle():
    s = Session()
    handshake(s, keepOpen=True)
    s.reply("250 ok\r\n250 ok\r\n354 go\r\n")
    s.reply("250 ok\r\n")
    assert s.outcome.reusable
    s.lose()
    s.outcomes = []
    s.deliver(keepOpen=True)
    assert s.statuses() == [(10, "deferred", "4.4.2")]
    assert s.outcome.tryNextHost and not s.outcome.reusable


def test_deliver_while_busy_is_refused():
    s = Session()
    s.deliver()
    with pytest.raises(RuntimeError):
        s.deliver()


# -- settings ----------------------------------------------------------------------------------


def timeouts(settings):
    return (settings.heloTimeout, settings.mailTimeout, settings.rcptTimeout, settings.dataInitTimeout,
            settings.dataXferTimeout, settings.dataDoneTimeout, settings.rsetTimeout, settings.quitTimeout)


def test_settings_from_postfix_parameters():
    params = {
        "myhostname": "mail.example.org", "smtp_helo_name": "helo.example.org", "smtp_helo_timeout": 1.0,
        "smtp_mail_timeout": 2.0, "smtp_rcpt_timeout": 3.0, "smtp_data_init_timeout": 4.0,
        "smtp_data_xfer_timeout": 5.0, "smtp_data_done_timeout": 6.0, "smtp_rset_timeout": 7.0,
        "smtp_quit_timeout": 8.0, "smtp_discard_ehlo_keywords": ("pipelining",), "smtp_never_send_ehlo": False,
        "smtp_always_send_ehlo": True, "smtp_skip_5xx_greeting": True, "smtp_skip_quit_response": True,
        "smtp_quote_rfc821_envelope": True, "smtp_line_length_limit": 998, "line_length_limit": 4096,
    }
    settings = clientSettings(**params)
    assert settings.heloName == "helo.example.org" and settings.myHostname == "mail.example.org"
    assert timeouts(settings) == (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
    assert settings.discardEhloKeywords == {"PIPELINING"} and not settings.lmtp
    assert settings.replyLimit == 4096
    lmtp = {k.replace("smtp_", "lmtp_").replace("helo", "lhlo").replace("ehlo", "lhlo"): v
            for k, v in params.items() if "send_ehlo" not in k}  # LMTP has no such parameters: always LHLO
    lmtp.update(myhostname="mail.example.org", lmtp_assume_final=True, lmtp_skip_quit_response=False)
    settings = clientSettings(lmtp=True, **lmtp)
    assert settings.lmtp and settings.lmtpAssumeFinal and not settings.skipQuitResponse
    assert settings.heloName == "helo.example.org"


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match=r"^<test>:2: \[main\] smtp_helo_name: "):
        clientSettings(smtp_helo_name="evil\x01MAIL FROM:<x>")
    with pytest.raises(ConfigError, match=r"^<test>:3: \[main\] smtp_line_length_limit: "):
        clientSettings(smtp_helo_name="ok.example", smtp_line_length_limit=1)


def test_a_reply_to_the_end_of_data_before_the_data_is_a_protocol_error():
    s = Session()
    handshake(s)
    s.sent()
    s.reply("250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued before it came\r\n")
    assert s.statuses() == [(10, "deferred", "4.5.0")]
    assert s.outcome.results[0].text == f"unexpected response from {NAMADDR} while sending message body"
    assert s.transport.disconnected and ".\r\n" not in s.sent()


def test_421_reply_is_the_reason():
    s = Session()
    handshake(s)
    s.sent()
    s.reply("421 4.3.0 shutting down\r\n")
    assert s.statuses() == [(10, "deferred", "4.3.0")]
    assert s.outcome.reason == f"host {NAMADDR} said: 421 4.3.0 shutting down (in reply to MAIL FROM command)"
    assert s.outcome.tryNextHost


def test_a_bug_in_the_content_source_fails_loudly_and_drops_the_connection():
    s = Session()
    handshake(s, content=["not bytes"])
    s.sent()
    s.reply("250 ok\r\n250 ok\r\n354 go\r\n")
    assert len(s.outcomes) == 1 and isinstance(s.outcomes[0], Failure)
    assert s.outcomes[0].check(TypeError)
    assert s.transport.disconnected and s.sent() == ""


@pytest.mark.parametrize("seed", range(4))
def test_random_content_through_a_session_decodes_to_the_original(seed):
    import random
    import re

    rng = random.Random(seed)
    atoms = [b".", b"\r", b"\n", b"\r\n", b"\r\n.\r\n", b"a", b"QUIT\r\n", b".\r\n", b"\n.\n", b"x" * 50]
    for _ in range(50):
        content = b"".join(rng.choice(atoms) for _ in range(rng.randint(0, 40)))
        chunks, i = [], 0
        while i < len(content):
            j = i + rng.randint(0, 6)
            chunks.append(content[i:j])
            i = j
        s = Session()
        handshake(s, content=chunks, request=makeRequest(size=len(content)))
        s.sent()
        s.reply("250 ok\r\n250 ok\r\n354 go\r\n")
        wire = s.transport.value()
        assert wire.endswith(b"QUIT\r\n")
        expected = re.sub(rb"\r\n|\r|\n", b"\r\n", content)
        if expected and not expected.endswith(b"\r\n"):
            expected += b"\r\n"
        assert unstuff(wire[: -len(b"QUIT\r\n")]) == expected
        s.reply("250 ok\r\n")
        assert s.statuses() == [(10, "sent", "2.0.0")]


# -- against our own server ---------------------------------------------------------------------


def test_a_transaction_with_our_own_smtpd():
    from twisted.test import iosim

    from mta.testing import FakeQueueStore, serverFactory

    clock = Clock()
    store = FakeQueueStore()
    factory = serverFactory(clock=clock, store=store)
    server = factory.buildProtocol(None)
    client = SMTPClientSession(clientSettings(), clock)
    pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), greet=False)
    bulk = b"0123456789" * 8 + b"\r\n"
    content = b"Subject: hi\r\n\r\n.leading\r\n.\r\nQUIT\r\n" + bulk * 1000 + b"y" * 1500 + b"\r\nlast line"
    chunks = [content[i : i + 7] for i in range(0, 42, 7)] + [content[42:]]
    request = makeRequest(
        ["bob@mx.test", "jöe@mx.test"], size=len(content), smtputf8=True, envid="env+1", ret="HDRS",
        rcptOptions={"bob@mx.test": {"notify": ("SUCCESS", "DELAY"), "orcpt": "rfc822;Bob+Orig@Example.ORG"}},
    )
    outcomes = []
    client.deliver(request, chunks, RemoteHost("mx.test", "127.0.0.1", 25)).addBoth(outcomes.append)
    for _ in range(20):
        pump.flush()
        clock.advance(0.1)
    assert [(r.status, r.dsn) for r in outcomes[0].results] == [("sent", "2.0.0"), ("sent", "2.0.0")]
    assert outcomes[0].results[0].text == "250 2.0.0 Ok: queued as FAKE0000000001"
    message = store.committed[0]
    assert message.content.endswith(b"\r\n\r\n.leading\r\n.\r\nQUIT\r\n" + bulk * 1000 + b"y" * 998
                                    + b"\r\n " + b"y" * 502 + b"\r\nlast line\r\n")
    envelope = message.envelope
    assert envelope.sender == "alice@example.org" and envelope.smtputf8
    assert envelope.envid == "env+1" and envelope.ret == "HDRS"
    assert envelope.recipients[0] == Recipient("bob@mx.test", "rfc822;Bob+Orig@Example.ORG", ("SUCCESS", "DELAY"))
    assert envelope.recipients[1] == Recipient("jöe@mx.test", "utf-8;jöe@mx.test", ())
