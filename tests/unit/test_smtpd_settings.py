"""SmtpdSettings (mta.config.settings.smtpd): each smtpd parameter read and converted once, at load."""

import pytest

from mta.config import ConfigError, load
from mta.config.settings import listenerSettings
from mta.config.settings.smtpd import SmtpdSettings
from mta.config.types import TableSpec

FILE = "/etc/mta/mta.ini"


def smtpd(text="", listener=""):
    """The first listener's SmtpdSettings of a configuration with [main] C{text}."""
    config = load(FILE, "[main]\nmyhostname = mx.test\n" + text + listener)
    return config.listeners[0].settings.smtpd


def test_registered_for_each_listener():
    assert listenerSettings()["smtpd"] is SmtpdSettings
    config = load(FILE, (
        "[main]\nmyhostname = mx.test\nsmtpd_recipient_limit = 1000\n"
        "[listener:smtp]\nendpoint = tcp:port=25:interface=127.0.0.1\n"
        "[listener:submission]\nendpoint = tcp:port=587:interface=127.0.0.1\nsmtpd_recipient_limit = 100\n"
        "smtpd_banner = $myhostname submission\n"
    ))
    smtp, submission = (l.settings.smtpd for l in config.listeners)
    assert (smtp.recipientLimit, submission.recipientLimit) == (1000, 100)
    assert (smtp.banner, submission.banner) == ("mx.test ESMTP mta", "mx.test submission")


def test_the_defaults():
    s = smtpd()
    assert (s.hostname, s.mailName, s.syslogName, s.banner) == ("mx.test", "mta", "mta", "mx.test ESMTP mta")
    assert (s.timeout, s.perRequestDeadline, s.minDataRate) == (300.0, True, 500)
    assert (s.greetWait, s.greetAction) == (0.0, "ignore")
    assert (s.sizeLimit, s.lineLimit, s.recipientLimit, s.overshootLimit) == (10240000, 2048, 1000, 1000)
    assert (s.queueMinfree, s.connectionLimit) == (0, 50)
    assert (s.errorSleep, s.softErrorLimit, s.hardErrorLimit, s.junkLimit) == (1.0, 10, 20, 100)
    assert (s.heloRequired, s.strictEnvelopes, s.disableVrfy, s.forbidUnauthPipelining) == (False, False, False, True)
    assert s.noopCommands == frozenset()
    assert s.forbiddenCommands == frozenset({b"CONNECT", b"GET", b"POST"})
    assert (s.discardEhloKeywords, s.rejectFooter) == (frozenset(), "")
    assert (s.bareNewline, s.bareNewlineCode) == ("reject", 550)


def test_network_lists_stay_lists_for_the_factory_to_match_with_tables():
    s = smtpd("mynetworks = 192.0.2.0/24\nsmtpd_forbid_bare_newline_exclusions = $mynetworks, texthash:/x\n")
    assert [str(n) for n in s.eventLimitExceptions] == ["192.0.2.0/24"]
    assert str(s.bareNewlineExclusions[0]) == "192.0.2.0/24"
    assert s.bareNewlineExclusions[1] == TableSpec("texthash", "/x")


def test_command_lists_are_folded_to_upper_case():
    s = smtpd("smtpd_noop_commands = xclient, Xforward\nsmtpd_forbidden_commands = connect, get, Post, ünïcode\n")
    assert s.noopCommands == frozenset({"XCLIENT", "XFORWARD"})
    # Bytes, as the session compares the verb before decoding it; a non-ASCII name never matches.
    assert s.forbiddenCommands == frozenset({b"CONNECT", b"GET", b"POST", "ÜNÏCODE".encode("ascii", "replace")})


def test_ehlo_lines_and_the_offered_set_by_default():
    s = smtpd()
    assert s.ehloLines == ("PIPELINING", "SIZE 10240000", "VRFY", "ETRN", "ENHANCEDSTATUSCODES", "8BITMIME",
                           "BINARYMIME", "DSN", "SMTPUTF8", "CHUNKING")
    assert s.offered == frozenset(k.split()[0] for k in s.ehloLines)
    assert s.ehloDiscardLog == ""


def test_size_without_a_limit_has_no_number():
    s = smtpd("message_size_limit = 0\n")
    assert "SIZE" in s.ehloLines and "SIZE" in s.offered


def test_discarded_keywords_are_not_offered_and_are_logged_in_postfixs_order():
    s = smtpd("smtpd_discard_ehlo_keywords = dsn, Pipelining, etrn\n")
    assert s.discardEhloKeywords == frozenset({"DSN", "PIPELINING", "ETRN"})
    assert not {"DSN", "PIPELINING", "ETRN"} & s.offered
    assert s.ehloLines == ("SIZE 10240000", "VRFY", "ENHANCEDSTATUSCODES", "8BITMIME", "BINARYMIME", "SMTPUTF8",
                           "CHUNKING")
    assert s.ehloDiscardLog == "ETRN PIPELINING DSN"  # ehlo_mask.c's order


def test_silent_discard_and_a_discarded_enhancedstatuscodes_log_nothing():
    assert smtpd("smtpd_discard_ehlo_keywords = dsn, silent-discard\n").ehloDiscardLog == ""
    s = smtpd("smtpd_discard_ehlo_keywords = dsn, enhancedstatuscodes\n")
    assert s.ehloDiscardLog == "" and "ENHANCEDSTATUSCODES" not in s.offered


def test_an_unknown_keyword_is_ignored_as_postfixs_ehlo_mask_does():
    """Postfix's ehlo_mask() ignores names it does not know, so configurations move between versions."""
    s = smtpd("smtpd_discard_ehlo_keywords = dsn, x-future, silent-discard\n")
    assert s.discardEhloKeywords == frozenset({"DSN", "SILENT-DISCARD"})
    assert s.offered == smtpd("smtpd_discard_ehlo_keywords = dsn\n").offered


def test_no_chunking_means_no_binarymime():
    s = smtpd("smtpd_discard_ehlo_keywords = chunking\n")
    assert not {"CHUNKING", "BINARYMIME"} & s.offered
    assert s.ehloDiscardLog == "CHUNKING"  # BINARYMIME goes with it, unlogged


def test_disable_vrfy_command_removes_vrfy_without_logging_it():
    s = smtpd("disable_vrfy_command = yes\n")
    assert s.disableVrfy and "VRFY" not in s.offered and "VRFY" not in s.ehloLines
    assert s.ehloDiscardLog == ""


@pytest.mark.parametrize("footer, appended", [
    ("", ""),
    ("For help see example.com", "\nFor help see example.com"),
    ("Line one\\nLine two", "\nLine one\nLine two"),
    ("\\c (see example.com)", " (see example.com)"),
    ("\\c", ""),
])
def test_the_reject_footer_is_the_text_appended_to_a_reply(footer, appended):
    assert smtpd(f"smtpd_reject_footer = {footer}\n").rejectFooter == appended


@pytest.mark.parametrize("mode, compiled", [("reject", "reject"), ("yes", "reject"), ("normalize", "normalize"),
                                            ("no", "no")])
def test_bare_newline_yes_is_an_alias_of_reject(mode, compiled):
    assert SmtpdSettings.ALIASES == {"smtpd_forbid_bare_newline": {"yes": "reject"}}
    assert smtpd(f"smtpd_forbid_bare_newline = {mode}\n").bareNewline == compiled
    assert (smtpd("smtpd_forbid_bare_newline = yes\n") == smtpd("smtpd_forbid_bare_newline = reject\n"))


@pytest.mark.parametrize("code", ["450", "499"])
def test_a_bare_newline_reject_code_below_500_fails_at_load_with_its_line(code):
    with pytest.raises(ConfigError) as info:
        smtpd(f"smtpd_forbid_bare_newline_reject_code = {code}\n")
    assert str(info.value) == (
        f"{FILE}:3: [main] smtpd_forbid_bare_newline_reject_code: {code} is below the minimum 500")


def test_a_bare_newline_reject_code_above_599_fails_at_load_with_its_line():
    """Postfix's range is 500..599 (smtpd.c); a code past 599 is no SMTP reply."""
    with pytest.raises(ConfigError) as info:
        smtpd("smtpd_forbid_bare_newline_reject_code = 650\n")
    assert str(info.value) == (
        f"{FILE}:3: [main] smtpd_forbid_bare_newline_reject_code: 650 is not a 5xx reply code (500 to 599)")
    assert smtpd("smtpd_forbid_bare_newline_reject_code = 599\n").bareNewlineCode == 599


def test_a_listener_override_fails_with_the_listeners_line():
    with pytest.raises(ConfigError) as info:
        load(FILE, (
            "[main]\nmyhostname = mx.test\n"
            "[listener:smtp]\nendpoint = tcp:port=25:interface=127.0.0.1\n"
            "smtpd_forbid_bare_newline_reject_code = 700\n"
        ))
    assert str(info.value).startswith(f"{FILE}:5: [listener:smtp] smtpd_forbid_bare_newline_reject_code: 700 ")


def test_a_bad_value_of_an_smtpd_parameter_fails_at_load():
    with pytest.raises(ConfigError, match=r"^/etc/mta/mta.ini:3: \[main\] postscreen_greet_action: 'later' "):
        smtpd("postscreen_greet_action = later\n")
    with pytest.raises(ConfigError, match=r"^/etc/mta/mta.ini:3: \[main\] smtpd_hard_error_limit: 0 is below"):
        smtpd("smtpd_hard_error_limit = 0\n")


def test_every_field_reads_a_parameter_of_the_area_docstring():
    """The module docstring lists the area's parameters; the class reads exactly those."""
    import mta.config.settings.smtpd as module

    listed = module.__doc__.split("needs it (a parameter may be read by several areas):", 1)[1].split("SmtpdSettings")[0]
    names = {word.strip(",") for word in listed.split()}
    assert set(SmtpdSettings.parameters()) == names
