"""The same restriction configuration in mta and in a real Postfix (bench/postfix_instance.py), the
same scripted sessions against both: every MAIL, RCPT and DATA reply must be the same, code,
enhanced status and text.

The block is written as a Postfix administrator writes main.cf (SMTPD_ACCESS_README's stages,
restriction classes, access values that are lists, DEFER_IF_PERMIT, the null sender) and goes
into mta's [main] unchanged.  Only inline: tables and restrictions that need no DNS are used, so
that both servers see exactly the same facts; client name lookups are off on both (every client
is "unknown").  Clients speak from 127.0.0.2-127.0.0.5 (outside mynetworks) and 127.0.0.1 (in it).
"""

import smtplib

import pytest

from tests.integration.peerservers import freePort

pytestmark = pytest.mark.integration

# A main.cf restriction block, as Postfix reads it.
BLOCK = """\
mydestination =
mynetworks = 127.0.0.1/32
relay_domains = example.net
smtpd_peername_lookup = no
smtpd_delay_reject = {delay}
smtpd_restriction_classes = from_freemail, strict
from_freemail = check_sender_access inline:{{ {{ a@freemail.example = REJECT no freemail here }} }}
strict = reject_non_fqdn_sender, reject_unauth_destination
smtpd_client_restrictions = check_client_access inline:{{ 127.0.0.3=REJECT, {{ 127.0.0.4 = DEFER_IF_PERMIT maybe later }} }}
smtpd_helo_restrictions = reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname
smtpd_sender_restrictions = check_sender_access inline:{{ spammer@example.org=REJECT, <>=DUNNO, {{ null@example.org = 550 5.7.0 go away }} }}
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = reject_non_fqdn_recipient,
    check_recipient_access inline:{{ {{ blocked@example.net = REJECT 5.1.1 no such user }},
        {{ freemail@example.net = from_freemail }}, {{ strict@example.net = strict }},
        {{ list@example.net = check_sender_access inline:{{a@example.org=OK}}, reject }},
        defer@example.net=DEFER, {{ coded@example.net = 451 busy }} }},
    permit
smtpd_data_restrictions = check_sender_access inline:{{ datareject@example.org=REJECT }}
"""

# (client address, HELO name, sender, recipients, then DATA?)
SESSIONS = [
    ("127.0.0.2", "client.example", "<a@example.org>",
     ["<u@example.net>", "<u@elsewhere.example>", "<blocked@example.net>", "<defer@example.net>",
      "<coded@example.net>", "<list@example.net>", "<nofqdn>"], False),
    ("127.0.0.2", "client.example", "<b@example.org>", ["<list@example.net>", "<strict@example.net>"], False),
    ("127.0.0.2", "client.example", "<a@freemail.example>", ["<freemail@example.net>", "<u@example.net>"], False),
    ("127.0.0.2", "client.example", "<spammer@example.org>", ["<u@example.net>"], False),
    ("127.0.0.2", "client.example", "<>", ["<u@example.net>"], False),
    ("127.0.0.2", "bad_helo!", "<a@example.org>", ["<u@example.net>"], False),
    ("127.0.0.2", "nodots", "<a@example.org>", ["<u@example.net>"], False),
    ("127.0.0.3", "client.example", "<a@example.org>", ["<u@example.net>"], False),
    ("127.0.0.4", "client.example", "<a@example.org>", ["<u@example.net>", "<blocked@example.net>"], False),
    ("127.0.0.2", "client.example", "<datareject@example.org>", ["<u@example.net>"], True),
    ("127.0.0.1", "client.example", "<a@example.org>", ["<u@elsewhere.example>", "<blocked@example.net>"], False),
]


def transcript(port, client, helo, sender, recipients, data):
    """The replies (code, text) to MAIL, each RCPT and DATA, from C{client}; the greeting and EHLO too."""
    replies = []
    with smtplib.SMTP(source_address=(client, 0), timeout=60) as smtp:
        code, text = smtp.connect("127.0.0.1", port)
        if code != 220:  # smtpd_client_restrictions at connect (smtpd_delay_reject = no)
            replies.append(("CONNECT", (code, text)))
            replies.append(("EHLO after the refusal", smtp.docmd("EHLO", helo)))
            return replies
        code, _ = smtp.ehlo(helo)
        replies.append(("EHLO", code))
        replies.append(("MAIL", smtp.docmd("MAIL", f"FROM:{sender}")))
        for recipient in recipients:
            replies.append((f"RCPT {recipient}", smtp.docmd("RCPT", f"TO:{recipient}")))
        if data:
            replies.append(("DATA", smtp.docmd("DATA")))
        smtp.docmd("RSET")
    return replies


@pytest.fixture(scope="module")
def postfixFactory():
    from bench.postfix_instance import PostfixInstance

    started = []

    def start(delay):
        instance = PostfixInstance(freePort())
        instance.create()
        with open(instance.config_dir / "main.cf", "a") as f:
            f.write("myhostname = mta.test\n" + BLOCK.format(delay=delay))  # the test daemon's name
        instance.start()
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.stop()


@pytest.mark.parametrize("delay", ["yes", "no"])
def test_mta_and_postfix_give_the_same_replies(makeDaemon, postfixFactory, delay):
    postfix = postfixFactory(delay)
    d = makeDaemon(main=BLOCK.format(delay=delay), hold=False).start()
    differences = []
    for session in SESSIONS:
        expected = transcript(postfix.port, *session)
        got = transcript(d.port, *session)
        for (what, theirs), (_, ours) in zip(expected, got):
            if theirs != ours:
                differences.append(f"{session[0]} {session[1]} {session[2]} {what}:\n  postfix {theirs}\n  mta     {ours}")
    assert not differences, "\n".join(differences)
