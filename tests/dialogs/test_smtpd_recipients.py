"""RCPT TO: restriction lists, address classes and unlisted recipients."""

import pytest

from mta.config import ConfigError, load
from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import Dialog

OUTSIDE = "198.51.100.7"


def rcpt(main, recipient, peer=OUTSIDE, sender="<a@example.org>"):
    d = Dialog(serverFactory(main, store=FakeQueueStore()), peer=peer)
    d.send("EHLO c\r\n")
    assert d.send(f"MAIL FROM:{sender}\r\n") == "250 2.1.0 Ok\r\n"
    return d.send(f"RCPT TO:{recipient}\r\n")


VIRTUAL = (
    "virtual_alias_maps = inline:{ alias.example=x, info@alias.example=bob@mx.test, @catch.example=c@mx.test }\n"
    "virtual_alias_domains = alias.example, catch.example\n"
    "virtual_mailbox_domains = box.example\n"
    "virtual_mailbox_maps = inline:{ u@box.example=box.example/u/ }\n"
    "recipient_delimiter = +\n"
)


@pytest.mark.parametrize(
    "recipient, reply",
    [
        ("<info@alias.example>", "250 2.1.5 Ok"),
        ("<info+tag@alias.example>", "250 2.1.5 Ok"),
        ("<nobody@alias.example>", "550 5.1.1 <nobody@alias.example>: Recipient address rejected: User unknown in virtual alias table"),
        ("<anyone@catch.example>", "250 2.1.5 Ok"),
        ("<u@box.example>", "250 2.1.5 Ok"),
        ("<U@BOX.example>", "250 2.1.5 Ok"),
        ("<v@box.example>", "550 5.1.1 <v@box.example>: Recipient address rejected: User unknown in virtual mailbox table"),
        ("<x@elsewhere.example>", "454 4.7.1 <x@elsewhere.example>: Relay access denied"),  # smtpd_relay_restrictions
    ],
)
def test_virtualDomains(recipient, reply):
    assert rcpt(VIRTUAL, recipient) == reply + "\r\n"


def test_unlistedAppliesToTrustedClientsToo():
    assert rcpt(VIRTUAL, "<nobody@alias.example>", peer="127.0.0.1").startswith("550 5.1.1 ")
    assert rcpt(VIRTUAL, "<x@elsewhere.example>", peer="127.0.0.1") == "250 2.1.5 Ok\r\n"


def test_unlistedCanBeTurnedOff():
    assert rcpt(VIRTUAL + "smtpd_reject_unlisted_recipient = no\n", "<nobody@alias.example>") == "250 2.1.5 Ok\r\n"


def test_unknownCodes():
    main = VIRTUAL + "unknown_virtual_alias_reject_code = 450\nrelay_domains_reject_code = 550\n"
    assert rcpt(main, "<nobody@alias.example>").startswith("450 4.1.1 ")
    assert rcpt(main, "<x@elsewhere.example>").startswith("450 4.7.1 ")  # defer_unauth_destination: the code - 100


def test_localAndRelayRecipientMaps():
    main = (
        "local_recipient_maps = inline:{ alice=1 }\n"
        "relay_domains = relay.example\n"
        "relay_recipient_maps = inline:{ r@relay.example=1 }\n"
    )
    assert rcpt(main, "<alice@mx.test>") == "250 2.1.5 Ok\r\n"
    assert rcpt(main, "<postmaster@mx.test>") == "250 2.1.5 Ok\r\n"
    assert rcpt(main, "<bob@mx.test>").startswith("550 5.1.1 <bob@mx.test>: Recipient address rejected: User unknown in local recipient table")
    assert rcpt(main, "<r@relay.example>") == "250 2.1.5 Ok\r\n"
    assert rcpt(main, "<s@relay.example>").startswith("550 5.1.1 <s@relay.example>: Recipient address rejected: User unknown in relay recipient table")


def test_checkRecipientAccess():
    main = (
        "smtpd_recipient_restrictions = check_recipient_access inline:{ "
        "{ blocked@mx.test = REJECT no mail for you }, tempfail.example=DEFER, "
        "{ coded@mx.test = 521 5.7.0 go away }, open.example=OK }, "
        "permit_mynetworks, reject_unauth_destination\n"
        "smtpd_relay_restrictions =\n"  # relay control in the recipient list alone, as Postfix before 2.10
    )
    assert rcpt(main, "<blocked@mx.test>") == "554 5.7.1 <blocked@mx.test>: Recipient address rejected: no mail for you\r\n"
    assert rcpt(main, "<x@sub.tempfail.example>").startswith("450 4.7.1 <x@sub.tempfail.example>: Recipient address rejected")
    assert rcpt(main, "<coded@mx.test>") == "521 5.7.0 <coded@mx.test>: Recipient address rejected: go away\r\n"
    assert rcpt(main, "<y@open.example>") == "250 2.1.5 Ok\r\n"  # OK permits relaying
    assert rcpt(main, "<y@closed.example>").startswith("554 5.7.1 ")


def test_checkSenderAndClientAccess():
    main = (
        "smtpd_recipient_restrictions = check_client_access inline:{ 198.51.100.8=REJECT }, "
        "check_sender_access inline:{ spam.example=REJECT, <>=DUNNO }, permit_mynetworks, reject_unauth_destination\n"
    )
    assert rcpt(main, "<u@mx.test>", sender="<x@spam.example>").startswith("554 5.7.1 <x@spam.example>: Sender address rejected")
    assert rcpt(main, "<u@mx.test>", sender="<>") == "250 2.1.5 Ok\r\n"
    assert rcpt(main, "<u@mx.test>", peer="198.51.100.8").startswith("554 5.7.1 <unknown[198.51.100.8]>: Client host rejected")


def test_deferUnauthDestinationAndNonFqdn():
    main = "smtpd_recipient_restrictions = reject_non_fqdn_recipient, defer_unauth_destination\n"
    assert rcpt(main, "<x@elsewhere.example>") == "454 4.7.1 <x@elsewhere.example>: Relay access denied\r\n"
    assert rcpt(main, "<x@localhost>").startswith("504 5.5.2 <x@localhost>: Recipient address rejected: need fully-qualified address")


def test_emptyRestrictionsPermit():
    assert rcpt("smtpd_recipient_restrictions =\nsmtpd_relay_restrictions =\n", "<x@elsewhere.example>") == \
        "250 2.1.5 Ok\r\n"


@pytest.mark.parametrize(
    "value, message",
    [
        ("permit_mynetworks, reject_everything", "unknown restriction 'reject_everything'"),
        ("check_recipient_access", "check_recipient_access needs a table argument"),
        ("check_recipient_access permit", "'permit' is not a lookup table"),
    ],
)
def test_badRestrictionListsAreConfigErrors(value, message):
    with pytest.raises(ConfigError) as e:
        load("x.ini", f"[main]\nsmtpd_recipient_restrictions = {value}\n")
    assert "x.ini:2: [main] smtpd_recipient_restrictions: " in str(e.value)
    assert message in str(e.value)


def test_holdActionPutsTheMessageOnHoldAndGoesOn():
    store = FakeQueueStore()
    main = "smtpd_recipient_restrictions = check_recipient_access inline:{ held.example=HOLD }, permit_mynetworks, reject_unauth_destination\n" \
        "smtpd_relay_restrictions =\n"
    d = Dialog(serverFactory(main, store=store), peer=OUTSIDE)
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<u@held.example>\r\n").startswith("554 5.7.1 ")  # HOLD is not a permit
    assert d.send("RCPT TO:<u@mx.test>\r\n") == "250 2.1.5 Ok\r\n"
    assert d.send("DATA\r\n").startswith("354")
    d.send("x\r\n.\r\n")
    assert store.committed[0].queue == "incoming"
    main = "smtpd_recipient_restrictions = check_recipient_access inline:{ mx.test=HOLD }, permit_mynetworks, reject_unauth_destination\n" \
        "smtpd_relay_restrictions =\n"
    d = Dialog(serverFactory(main, store=store), peer=OUTSIDE)
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<u@mx.test>\r\nDATA\r\n")
    assert d.send("x\r\n.\r\n").startswith("250 2.0.0 Ok: queued as ")
    assert store.committed[1].queue == "hold"


@pytest.mark.parametrize(
    "restrictions, reply",
    [
        ("permit", "250 2.1.5 Ok"),
        ("reject", "554 5.7.1 <x@elsewhere.example>: Recipient address rejected: Access denied"),
        ("defer", "450 4.3.2 <x@elsewhere.example>: Recipient address rejected: Try again later"),
        ("reject_unauth_destination, permit", "554 5.7.1 <x@elsewhere.example>: Relay access denied"),
    ],
)
def test_regression_constantRestrictions(restrictions, reply):
    """permit/reject/defer used to raise (a sync check awaited) and answer 451 for every RCPT."""
    main = f"smtpd_recipient_restrictions = {restrictions}\nsmtpd_relay_restrictions =\n"
    assert rcpt(main, "<x@elsewhere.example>") == reply + "\r\n"
