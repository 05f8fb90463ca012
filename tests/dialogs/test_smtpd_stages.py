"""The restriction stages (mta.smtpd.policy): client, HELO, sender, recipient and relay, DATA, end of
data; smtpd_delay_reject; restriction classes; access values that are lists; DISCARD, REDIRECT, BCC;
the rest of smtpd(8)'s small restrictions."""

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mta.model import Address
from mta.smtpd.restrictions import RESTRICTIONS, Request

from mta.config import ConfigError, load
from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import Dialog, MailLog

OUTSIDE = "192.0.2.10"


def dialog(main, store=None, peer=OUTSIDE, clock=None):
    return Dialog(serverFactory(main, store=store or FakeQueueStore(), clock=clock), peer=peer)


# -- smtpd_delay_reject -----------------------------------------------------------------


def test_client_restrictions_wait_for_rcpt_by_default():
    d = dialog("smtpd_client_restrictions = reject\n")
    assert d.banner.startswith("220 ")
    assert d.send("EHLO c.test\r\n").startswith("250-")
    assert d.send("MAIL FROM:<a@example.org>\r\n") == "250 2.1.0 Ok\r\n"
    with MailLog() as log:
        assert d.send("RCPT TO:<b@mx.test>\r\n") == (
            f"554 5.7.1 <unknown[{OUTSIDE}]>: Client host rejected: Access denied\r\n")
    assert log.matching(f"NOQUEUE: reject: RCPT from unknown[{OUTSIDE}]: 554 5.7.1 <unknown[{OUTSIDE}]>: Client host "
                        "rejected: Access denied; from=<a@example.org> to=<b@mx.test> proto=ESMTP helo=<c.test>")


def test_without_delay_reject_the_client_is_refused_at_connect():
    d = dialog("smtpd_delay_reject = no\nsmtpd_client_restrictions = reject\n")
    assert d.banner == f"554 5.7.1 <unknown[{OUTSIDE}]>: Client host rejected: Access denied\r\n"
    assert d.send("EHLO c.test\r\n") == f"503 5.7.0 Error: access denied for unknown[{OUTSIDE}]\r\n"
    assert d.send("MAIL FROM:<a@example.org>\r\n") == f"503 5.7.0 Error: access denied for unknown[{OUTSIDE}]\r\n"
    assert d.send("QUIT\r\n") == "221 2.0.0 Bye\r\n"
    assert d.closed


def test_without_delay_reject_a_permitted_client_is_greeted():
    d = dialog("smtpd_delay_reject = no\nsmtpd_client_restrictions = permit_mynetworks, reject\n", peer="127.0.0.1")
    assert d.banner.startswith("220 ")


def test_without_delay_reject_helo_and_sender_are_judged_at_their_commands():
    main = ("smtpd_delay_reject = no\n"
            "smtpd_helo_restrictions = check_helo_access inline:{ { bad.test = REJECT go away } }\n"
            "smtpd_sender_restrictions = check_sender_access inline:{ spam.example=REJECT }\n")
    d = dialog(main)
    assert d.send("EHLO bad.test\r\n") == "554 5.7.1 <bad.test>: Helo command rejected: go away\r\n"
    assert d.send("MAIL FROM:<a@spam.example>\r\n") == (
        "554 5.7.1 <a@spam.example>: Sender address rejected: Access denied\r\n")
    assert d.send("MAIL FROM:<a@example.org>\r\n") == "250 2.1.0 Ok\r\n"  # the refused MAIL left no sender
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "250 2.1.5 Ok\r\n"


def test_with_delay_reject_helo_and_sender_are_judged_at_rcpt():
    main = ("smtpd_helo_restrictions = check_helo_access inline:{ { bad.test = REJECT go away } }\n"
            "smtpd_sender_restrictions = check_sender_access inline:{ spam.example=REJECT }\n")
    d = dialog(main)
    assert d.send("EHLO bad.test\r\n").startswith("250-")
    assert d.send("MAIL FROM:<a@spam.example>\r\n") == "250 2.1.0 Ok\r\n"
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "554 5.7.1 <bad.test>: Helo command rejected: go away\r\n"
    d = dialog(main)
    d.send("EHLO good.test\r\n")
    d.send("MAIL FROM:<a@spam.example>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == (
        "554 5.7.1 <a@spam.example>: Sender address rejected: Access denied\r\n")


def test_a_permit_ends_only_its_own_stage():
    main = ("smtpd_client_restrictions = permit\n"
            "smtpd_sender_restrictions = check_sender_access inline:{ spam.example=REJECT }\n")
    d = dialog(main)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@spam.example>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n").startswith("554 5.7.1 <a@spam.example>: Sender address rejected")


def test_defer_if_permit_is_carried_to_the_end_of_the_recipient_stage():
    d = dialog("smtpd_client_restrictions = defer_if_permit, permit\n")
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == (
        f"450 4.7.0 <unknown[{OUTSIDE}]>: Client host rejected: defer_if_permit requested\r\n")
    main = ("smtpd_client_restrictions = defer_if_permit, permit\n"
            "smtpd_recipient_restrictions = check_recipient_access inline:{ b@mx.test=REJECT }\n")
    d = dialog(main)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n").startswith("554 5.7.1 <b@mx.test>: Recipient address rejected")


def test_defer_if_permit_at_connect_is_carried_without_delay_reject():
    d = dialog("smtpd_delay_reject = no\nsmtpd_client_restrictions = defer_if_permit, permit\n")
    assert d.banner.startswith("220 ")
    d.send("EHLO c.test\r\n")
    assert d.send("MAIL FROM:<a@example.org>\r\n") == "250 2.1.0 Ok\r\n"
    assert d.send("RCPT TO:<b@mx.test>\r\n").startswith("450 4.7.0 <unknown[")


# -- smtpd_relay_restrictions ------------------------------------------------------------


def test_the_default_relay_restrictions_defer_unauthorized_relaying():
    d = dialog("")
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<x@elsewhere.example>\r\n") == "454 4.7.1 <x@elsewhere.example>: Relay access denied\r\n"
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "250 2.1.5 Ok\r\n"
    d = dialog("", peer="127.0.0.1")  # permit_mynetworks
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<x@elsewhere.example>\r\n") == "250 2.1.5 Ok\r\n"


def test_both_recipient_lists_must_not_refuse_and_the_order_is_configurable():
    access = "check_recipient_access inline:{ { x@elsewhere.example = REJECT listed } }"
    main = f"smtpd_recipient_restrictions = {access}\nsmtpd_relay_restrictions = reject_unauth_destination\n"
    d = dialog(main)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<x@elsewhere.example>\r\n") == (  # the relay list comes first (Postfix 3.6)
        "554 5.7.1 <x@elsewhere.example>: Relay access denied\r\n")
    d = dialog(main + "smtpd_relay_before_recipient_restrictions = no\n")
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<x@elsewhere.example>\r\n") == (
        "554 5.7.1 <x@elsewhere.example>: Recipient address rejected: listed\r\n")
    d = dialog("smtpd_recipient_restrictions = permit\n")  # a permit there does not open the relay
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<x@elsewhere.example>\r\n").startswith("454 4.7.1 ")


# -- DATA and end of data ----------------------------------------------------------------


def test_data_restrictions():
    store = FakeQueueStore()
    d = dialog("smtpd_data_restrictions = check_sender_access inline:{ { a@example.org = REJECT not today } }\n", store)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\n")
    with MailLog() as log:
        assert d.send("DATA\r\n") == "554 5.7.1 <a@example.org>: Sender address rejected: not today\r\n"
    assert log.matching(f"NOQUEUE: reject: DATA from unknown[{OUTSIDE}]: 554 5.7.1 <a@example.org>: Sender address "
                        "rejected: not today; from=<a@example.org> proto=ESMTP helo=<c.test>")
    d = dialog("smtpd_data_restrictions = reject\n", store)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\n")
    assert d.send("DATA\r\n") == "554 5.7.1 <DATA>: Data command rejected: Access denied\r\n"
    assert store.committed == []


def test_reject_unauth_pipelining_in_the_data_stage():
    d = dialog("smtpd_data_restrictions = reject_unauth_pipelining\n")
    d.send("HELO c.test\r\n")  # no EHLO: sending ahead is not allowed
    out = d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    assert out.splitlines()[-1] == "503 5.5.0 <DATA>: Data command rejected: Improper use of SMTP command pipelining"
    d = dialog("smtpd_data_restrictions = reject_unauth_pipelining\n")
    d.send("EHLO c.test\r\n")
    out = d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    assert out.splitlines()[-1].startswith("354 ")


def test_end_of_data_restrictions_refuse_before_the_commit():
    store = FakeQueueStore()
    d = dialog("smtpd_end_of_data_restrictions = reject\n", store)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    assert d.send("Subject: x\r\n\r\nhi\r\n.\r\n") == (
        "554 5.7.1 <END-OF-MESSAGE>: End-of-data rejected: Access denied\r\n")
    assert store.committed == [] and store.messages[0].aborted
    assert d.send("MAIL FROM:<a@example.org>\r\n") == "250 2.1.0 Ok\r\n"  # the session goes on
    d = dialog("smtpd_end_of_data_restrictions = permit\n", store)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    assert d.send("Subject: x\r\n\r\nhi\r\n.\r\n").startswith("250 2.0.0 Ok: queued as ")
    assert len(store.committed) == 1


def test_bdat_meets_the_data_restrictions_at_its_end():
    store = FakeQueueStore()
    d = dialog("smtpd_data_restrictions = reject\n", store)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\n")
    body = b"Subject: x\r\n\r\nhi\r\n"
    assert d.send(b"BDAT %d LAST\r\n" % len(body) + body) == (
        "554 5.7.1 <DATA>: Data command rejected: Access denied\r\n")
    assert store.committed == []


# -- restriction classes and access values that are lists --------------------------------


def test_restriction_classes_as_names_and_as_access_values():
    main = ("smtpd_restriction_classes = strict, lenient\n"
            "strict = reject_non_fqdn_sender, check_sender_access inline:{ { a@example.org = REJECT strict } }\n"
            "lenient = permit\n"
            "smtpd_recipient_restrictions = check_recipient_access inline:{ s@mx.test=strict, l@mx.test=lenient }, "
            "reject_non_fqdn_recipient\n")
    d = dialog(main)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<s@mx.test>\r\n") == "554 5.7.1 <a@example.org>: Sender address rejected: strict\r\n"
    assert d.send("RCPT TO:<l@mx.test>\r\n") == "250 2.1.5 Ok\r\n"
    d = dialog("smtpd_restriction_classes = no_one\nno_one = reject\nsmtpd_client_restrictions = no_one\n")
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n").startswith(f"554 5.7.1 <unknown[{OUTSIDE}]>: Client host rejected")


def test_an_access_value_may_be_a_restriction_list():
    main = ("smtpd_recipient_restrictions = check_sender_access inline:{ "
            "{ a@example.org = reject_non_fqdn_recipient, reject } }\n")
    d = dialog(main)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    # The list's generic reject names what the table looked up: the sender.
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "554 5.7.1 <a@example.org>: Sender address rejected: Access denied\r\n"


def test_an_access_value_that_is_not_a_restriction_is_a_configuration_error():
    main = "smtpd_recipient_restrictions = check_recipient_access inline:{ { b@mx.test = no_such_thing, permit } }\n"
    d = dialog(main)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    with MailLog() as log:
        assert d.send("RCPT TO:<b@mx.test>\r\n") == "451 4.3.5 Server configuration error\r\n"
    assert log.matching("warning: access value 'no_such_thing, permit' is not a restriction list")


def test_classes_that_nest_forever_are_a_configuration_error_not_a_hang():
    d = dialog("smtpd_restriction_classes = a, b\na = b\nb = a\nsmtpd_client_restrictions = a\n")
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "451 4.3.5 Server configuration error\r\n"


@pytest.mark.parametrize(
    "main, message",
    [
        ("smtpd_client_restrictions = nonesuch\n", "unknown restriction 'nonesuch'"),
        ("smtpd_restriction_classes = a\n", "restriction class 'a' needs a definition"),
        ("smtpd_restriction_classes = a\na = permit, nonesuch\n", "unknown restriction 'nonesuch'"),
        ("smtpd_restriction_classes = permit\n", "has the name of a restriction or a parameter"),
        ("smtpd_restriction_classes = mynetworks\n", "has the name of a restriction or a parameter"),
        ("smtpd_data_restrictions = inline:{ x=OK }\n", "needs a check_*_access before it"),
        ("undefined_thing = permit\n", "unknown parameter"),
    ],
)
def test_bad_classes_and_lists_are_configuration_errors(main, message):
    with pytest.raises(ConfigError) as e:
        load("x.ini", "[main]\n" + main).listeners[0].settings
    assert message in str(e.value)


def test_a_bare_table_is_the_stages_own_access_check():
    d = dialog(f"smtpd_client_restrictions = inline:{{ {{ {OUTSIDE} = REJECT you }} }}\n"
               "smtpd_helo_restrictions = inline:{ bad.test=REJECT }\n")
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == f"554 5.7.1 <unknown[{OUTSIDE}]>: Client host rejected: you\r\n"
    d = dialog("smtpd_helo_restrictions = inline:{ bad.test=REJECT }\n", peer="127.0.0.1")
    d.send("EHLO bad.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "554 5.7.1 <bad.test>: Helo command rejected: Access denied\r\n"


# -- DISCARD, REDIRECT, BCC --------------------------------------------------------------


def test_discard_accepts_and_drops_the_message():
    store = FakeQueueStore()
    d = dialog("smtpd_sender_restrictions = check_sender_access inline:{ { a@example.org = DISCARD spam } }\n", store)
    with MailLog() as log:
        d.send("EHLO c.test\r\n")
        d.send("MAIL FROM:<a@example.org>\r\n")
        assert d.send("RCPT TO:<b@mx.test>\r\n") == "250 2.1.5 Ok\r\n"
        assert d.send("RCPT TO:<x@elsewhere.example>\r\n") == "250 2.1.5 Ok\r\n"  # nothing is checked any more
        assert d.send("DATA\r\n").startswith("354 ")
        reply = d.send("Subject: x\r\n\r\nhi\r\n.\r\n")
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    assert store.committed == [] and store.messages[0].aborted
    assert log.matching(f"NOQUEUE: discard: RCPT from unknown[{OUTSIDE}]: <a@example.org>: Sender address triggers "
                        "DISCARD action: spam; from=<a@example.org> to=<b@mx.test> proto=ESMTP helo=<c.test>")
    queueId = reply.split()[-1]
    assert log.matching(f"{queueId}: discard: <a@example.org>: Sender address triggers DISCARD action: spam")


def test_redirect_and_bcc_change_the_recipients():
    store = FakeQueueStore()
    main = ("smtpd_recipient_restrictions = check_recipient_access inline:{ { b@mx.test = REDIRECT r@mx.test } }, "
            "check_sender_access inline:{ { a@example.org = BCC archive@mx.test } }\n")
    d = dialog(main, store)
    with MailLog() as log:
        d.send("EHLO c.test\r\n")
        d.send("MAIL FROM:<a@example.org>\r\n")
        assert d.send("RCPT TO:<b@mx.test>\r\n") == "250 2.1.5 Ok\r\n"
        assert d.send("RCPT TO:<c@mx.test>\r\n") == "250 2.1.5 Ok\r\n"
        d.send("DATA\r\n")
        assert d.send("Subject: x\r\n\r\nhi\r\n.\r\n").startswith("250 2.0.0 Ok: queued as ")
    [message] = store.committed
    recipients = [(r.address, r.orcpt, r.notify) for r in message.envelope.recipients]
    assert recipients == [("r@mx.test", "rfc822;b@mx.test", ()), ("archive@mx.test", None, ("NEVER",))]
    assert log.matching(f"NOQUEUE: redirect: RCPT from unknown[{OUTSIDE}]: triggers REDIRECT r@mx.test;")


def test_redirect_without_an_address_is_a_warning():
    d = dialog("smtpd_recipient_restrictions = check_recipient_access inline:{ { b@mx.test = REDIRECT nobody } }\n")
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    with MailLog() as log:
        assert d.send("RCPT TO:<b@mx.test>\r\n") == "250 2.1.5 Ok\r\n"
    assert log.matching("access value 'REDIRECT nobody' requires user@domain target")


# -- the codes and the small restrictions -------------------------------------------------


def test_the_reply_code_parameters():
    main = ("access_map_reject_code = 550\naccess_map_defer_code = 451\nreject_code = 521\ndefer_code = 421\n"
            "smtpd_recipient_restrictions = check_recipient_access inline:{ r@mx.test=REJECT, d@mx.test=DEFER, "
            "x@mx.test=reject }, check_recipient_access inline:{ y@mx.test=OK }, defer\n"
            "smtpd_client_restrictions = check_client_access inline:{ 192.0.2.11=OK }, reject\n")
    d = dialog(main)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n").startswith(f"521 5.7.1 <unknown[{OUTSIDE}]>: Client host rejected")
    d = dialog(main, peer="192.0.2.11")
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<r@mx.test>\r\n").startswith("550 5.7.1 <r@mx.test>: Recipient address rejected")
    assert d.send("RCPT TO:<d@mx.test>\r\n").startswith("451 4.7.1 <d@mx.test>: Recipient address rejected")
    assert d.send("RCPT TO:<x@mx.test>\r\n").startswith("550 5.7.1 ")  # a value "reject" is REJECT, as Postfix
    assert d.send("RCPT TO:<z@mx.test>\r\n") == "421 4.3.2 <z@mx.test>: Recipient address rejected: Try again later\r\n"


def test_access_values_with_an_enhanced_status_code():
    d = dialog("smtpd_recipient_restrictions = check_recipient_access inline:{ { r@mx.test = REJECT 5.1.1 gone } }\n")
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<r@mx.test>\r\n") == "554 5.1.1 <r@mx.test>: Recipient address rejected: gone\r\n"


def test_the_null_sender_key():
    main = ("smtpd_null_access_lookup_key = <>bounce\n"
            "smtpd_sender_restrictions = check_sender_access inline:{ { <>bounce = REJECT no bounces } }\n")
    d = dialog(main)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "554 5.7.1 <>: Sender address rejected: no bounces\r\n"


def test_sleep_pauses_then_goes_on():
    clock = Clock()
    d = dialog("smtpd_client_restrictions = sleep 5, permit\n", clock=clock)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == ""
    clock.advance(4.9)
    assert d.read() == ""
    clock.advance(0.2)
    assert d.read() == "250 2.1.5 Ok\r\n"


def test_reject_plaintext_session():
    d = dialog("smtpd_client_restrictions = reject_plaintext_session\nplaintext_reject_code = 530\n")
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "530 5.7.1 Session encryption is required\r\n"


def test_permit_inet_interfaces():
    main = "smtpd_client_restrictions = permit_inet_interfaces, reject\n"
    d = Dialog(serverFactory(main), peer="203.0.113.5", host="203.0.113.5")
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "250 2.1.5 Ok\r\n"
    d = Dialog(serverFactory(main), peer="203.0.113.6", host="203.0.113.5")
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n").startswith("554 5.7.1 ")


def test_warn_if_reject_does_not_hide_a_configuration_error():
    main = ("smtpd_recipient_restrictions = warn_if_reject, check_recipient_access inline:{ { b@mx.test = x:y } }, "
            "permit\n")
    d = dialog(main)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "451 4.3.5 Server configuration error\r\n"


def resultOf(d):
    return SynchronousTestCase().successResultOf(d)


class PatternTable:
    """A table of patterns (regexp, pcre, cidr): it must be asked only the whole key."""

    pattern = True

    def __init__(self):
        self.asked = []
        self.spec = "pattern:test"

    def lookup(self, key):
        self.asked.append(key)
        return succeed(None)


def test_pattern_tables_are_asked_the_whole_key_only():
    table = PatternTable()
    f = serverFactory("")
    request = Request("192.0.2.1", "mail.example.com", Address("user+ext", "sub.example.com"), None,
                      client_name="host.example.com")
    for name in ("check_sender_access", "check_client_access", "check_helo_access"):
        check = RESTRICTIONS[name][1](f.policy, table)
        assert resultOf(Deferred.fromCoroutine(check(request))).action == "dunno"
    assert table.asked == ["user+ext@sub.example.com", "host.example.com", "192.0.2.1", "mail.example.com"]


def test_show_user_unknown_table_name():
    main = "virtual_mailbox_domains = box.example\nvirtual_mailbox_maps = inline:{ u@box.example=u/ }\n"
    d = dialog(main)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<v@box.example>\r\n") == (
        "550 5.1.1 <v@box.example>: Recipient address rejected: User unknown in virtual mailbox table\r\n")
    d = dialog(main + "show_user_unknown_table_name = no\n")
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<v@box.example>\r\n") == (
        "550 5.1.1 <v@box.example>: Recipient address rejected: User unknown\r\n")


def test_allow_untrusted_routing():
    d = dialog("")
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<u%elsewhere.example@mx.test>\r\n").startswith("454 4.7.1 ")
    d = dialog("allow_untrusted_routing = yes\n")
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<u%elsewhere.example@mx.test>\r\n") == "250 2.1.5 Ok\r\n"


def test_smtpd_client_port_logging():
    for setting, shown in (("no", f"client=unknown[{OUTSIDE}]"), ("yes", f"client=unknown[{OUTSIDE}]:40000")):
        d = dialog(f"smtpd_client_port_logging = {setting}\n")
        with MailLog() as log:
            d.send("EHLO c.test\r\n")
            d.send("MAIL FROM:<a@example.org>\r\n")
            d.send("RCPT TO:<b@mx.test>\r\n")
            d.send("DATA\r\n")
            assert d.send("Subject: x\r\n\r\nhi\r\n.\r\n").startswith("250 ")
        assert any(line.endswith(": " + shown) for line in log.lines), log.lines


def test_debug_peer_list_logs_the_dialog_of_the_listed_clients():
    with MailLog() as log:
        d = dialog(f"debug_peer_list = {OUTSIDE}/32\n")
        d.send("EHLO c.test\r\n")
        d.send("MAIL FROM:<a@example.org>\r\n")
    client = f"unknown[{OUTSIDE}]"
    assert f"> {client}: 220 mx.test ESMTP mta" in log.lines
    assert f"< {client}: EHLO c.test" in log.lines
    assert f"> {client}: 250-mx.test" in log.lines
    assert f"< {client}: MAIL FROM:<a@example.org>" in log.lines and f"> {client}: 250 2.1.0 Ok" in log.lines
    with MailLog() as log:
        d = dialog("debug_peer_list = 198.51.100.0/24\n")
        d.send("EHLO c.test\r\n")
    assert not any(line.startswith(("< ", "> ")) for line in log.lines)


def test_smtpd_expansion_filter_parses_postfixs_escapes():
    from mta.config.types import expansionFilter
    from mta.smtpd.dnsxl import DEFAULT_FILTER, expandTemplate

    default = load("x.ini", "[main]\n").listeners[0].settings.recipients.expansionFilter
    assert default == DEFAULT_FILTER  # printable ASCII and tab, as Postfix's default
    assert expansionFilter("ab\\40\\t\\\\") == frozenset("ab \t\\")
    assert expandTemplate("$x", {"x": "a b\x01c"}, expansionFilter("abc\\40")) == "a b_c"
    with pytest.raises(ConfigError) as e:
        load("x.ini", "[main]\nsmtpd_expansion_filter = ab\\q\n").listeners[0].settings
    assert "bad escape" in str(e.value)


def test_smtpd_command_filter_replaces_command_lines():
    main = ("smtpd_command_filter = pcre:{ {/^MAIL FROM:<a@example\\.org> BODY=8BITMIME$$/ "
            "MAIL FROM:<b@example.org>} }\n")
    with MailLog() as log:
        d = dialog(main)
        d.send("EHLO c.test\r\n")
        assert d.send("MAIL FROM:<a@example.org> BODY=8BITMIME\r\n") == "250 2.1.0 Ok\r\n"
        assert d.send("RCPT TO:<b@mx.test>\r\nDATA\r\n").startswith("250 2.1.5 Ok\r\n354 ")  # pipelined: in order
    assert log.matching(f"unknown[{OUTSIDE}]: replacing command \"MAIL FROM:<a@example.org> BODY=8BITMIME\" with "
                        "\"MAIL FROM:<b@example.org>\"")
    store = FakeQueueStore()
    d = dialog(main, store)
    d.send("EHLO c.test\r\n")
    d.send("MAIL FROM:<a@example.org> BODY=8BITMIME\r\n")
    d.send("RCPT TO:<b@mx.test>\r\n")
    d.send("DATA\r\n")
    d.send("Subject: x\r\n\r\nhi\r\n.\r\n")
    assert store.committed[0].envelope.sender == "b@example.org"


def test_smtpd_command_filter_that_cannot_answer_leaves_the_command_alone():
    with MailLog() as log:
        d = dialog("smtpd_command_filter = fail:down\n")
        assert d.send("EHLO c.test\r\n").startswith("250-")
        assert d.send("MAIL FROM:<a@example.org>\r\n") == "250 2.1.0 Ok\r\n"
    assert log.matching("warning: fail:down: smtpd_command_filter lookup error; the command is used as it is")


def test_smtpd_discard_ehlo_keyword_address_maps_per_client():
    main = f"smtpd_discard_ehlo_keyword_address_maps = inline:{{ {{ {OUTSIDE} = silent-discard, pipelining, dsn }} }}\n"
    d = dialog(main)
    ehlo = d.send("EHLO c.test\r\n")
    assert "250-PIPELINING" not in ehlo and "DSN" not in ehlo and ehlo.startswith("250-mx.test")
    assert d.send("MAIL FROM:<a@example.org> RET=HDRS\r\n").startswith("555 ")  # DSN is not offered to this client
    other = dialog(main, peer="198.51.100.9")
    ehlo = other.send("EHLO c.test\r\n")
    assert "250-PIPELINING" in ehlo and "DSN" in ehlo
    with MailLog() as log:
        d = dialog("smtpd_discard_ehlo_keyword_address_maps = fail:down\nsmtpd_discard_ehlo_keywords = dsn\n")
        ehlo = d.send("EHLO c.test\r\n")
    assert "DSN" not in ehlo and "PIPELINING" in ehlo  # the table cannot answer: the listener's own list
    assert log.matching("smtpd_discard_ehlo_keyword_address_maps lookup error")
