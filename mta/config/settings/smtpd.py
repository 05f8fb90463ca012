"""mta.config.settings.smtpd - SmtpdSettings: The SMTP server (mta.smtpd), per listener.

The parameters of this area (mta.config.schema), each read by exactly the
settings class that needs it (a parameter may be read by several areas):

    smtpd_banner, smtpd_recipient_limit, smtpd_timeout,
    smtpd_helo_required, strict_rfc821_envelopes, disable_vrfy_command,
    smtpd_noop_commands, smtpd_forbidden_commands,
    smtpd_discard_ehlo_keywords, smtpd_reject_footer,
    smtpd_recipient_overshoot_limit, queue_minfree,
    smtpd_peername_lookup, smtpd_client_connection_count_limit,
    smtpd_client_connection_rate_limit, smtpd_client_message_rate_limit,
    smtpd_client_recipient_rate_limit,
    smtpd_client_new_tls_session_rate_limit, anvil_rate_time_unit,
    smtpd_client_event_limit_exceptions, smtpd_error_sleep_time,
    smtpd_soft_error_limit, smtpd_hard_error_limit,
    smtpd_junk_command_limit, smtpd_forbid_unauth_pipelining,
    smtpd_forbid_bare_newline, smtpd_forbid_bare_newline_exclusions,
    smtpd_forbid_bare_newline_reject_code, smtpd_per_request_deadline,
    smtpd_min_data_rate, postscreen_greet_wait, postscreen_greet_action,
    smtpd_client_port_logging, debug_peer_list, debug_peer_level,
    smtpd_discard_ehlo_keyword_address_maps,
    smtpd_command_filter,
    message_size_limit, line_length_limit, myhostname, mail_name,
    syslog_name, requiretls_enable

SmtpdSettings does here, once per listener at load, what the server
factory did at each start: command names folded to upper case, the EHLO
reply's keyword lines and the set of extensions offered (after
smtpd_discard_ehlo_keywords and disable_vrfy_command), the "discarding EHLO
keywords" log text (empty with silent-discard), the reject footer as the
text appended to a reply, and smtpd_forbid_bare_newline's yes folded into
reject (ALIASES).  Network lists stay lists: the factory builds matchers
with the Tables registry (they may name tables).

SECURITY
    None: values were parsed and checked by mta.config.types.

CONFIGURATION
    As listed above.

DEVIATIONS
    smtpd_discard_ehlo_keywords ignores a word it does not know, as
    Postfix's ehlo_mask() does (so a configuration works across versions);
    it knows BINARYMIME, which Postfix does not have.
    smtpd_forbid_bare_newline_reject_code must be 500 to 599, as Postfix
    requires (mta's schema checked only the 500).
"""

import attrs

from mta.config.settings import Settings, setting, settingsClass

__all__ = ["DISCARD_LOG_ORDER", "EHLO_KEYWORDS", "SmtpdSettings"]

# EHLO keywords in Postfix's order.
EHLO_KEYWORDS = ("PIPELINING", "SIZE", "VRFY", "ETRN", "ENHANCEDSTATUSCODES", "8BITMIME", "BINARYMIME",
                 "DSN", "SMTPUTF8", "CHUNKING")
# The keywords smtpd_discard_ehlo_keywords knows, in the order Postfix logs them (ehlo_mask.c),
# with BINARYMIME, which Postfix does not have; other words are ignored, as in Postfix.
DISCARD_LOG_ORDER = ("8BITMIME", "AUTH", "ETRN", "PIPELINING", "SIZE", "VERP", "VRFY", "XCLIENT", "XFORWARD",
                     "STARTTLS", "ENHANCEDSTATUSCODES", "DSN", "SMTPUTF8", "CHUNKING", "BINARYMIME", "REQUIRETLS")
SILENT_DISCARD = "SILENT-DISCARD"


def _upper(items):
    return frozenset(item.upper() for item in items)


def _forbidden(items):
    """Command names as the session compares them: upper-case bytes (a non-ASCII name never matches)."""
    return frozenset(item.upper().encode("ascii", "replace") for item in items)


def _discarded(items):
    """The known keywords of smtpd_discard_ehlo_keywords, upper case; silent-discard is kept apart."""
    words = _upper(items)
    return frozenset(w for w in words if w in DISCARD_LOG_ORDER) | (words & {SILENT_DISCARD})


def discardedKeywords(text):
    """A smtpd_discard_ehlo_keyword_address_maps value, as smtpd_discard_ehlo_keywords reads its own."""
    from mta.config.types import splitList

    return _discarded(splitList(text))


def _bareNewline(mode):
    return SmtpdSettings.ALIASES["smtpd_forbid_bare_newline"].get(mode, mode)


def _rejectCode(code):
    if not 500 <= code <= 599:
        raise ValueError(f"{code} is not a 5xx reply code (500 to 599)")
    return code


def _footer(text):
    """
    What a 4xx or 5xx reply gets appended to its text: with a leading \\c
    the rest, on the same line; else a new line and the footer, whose \\n
    start further lines.  Empty: nothing.
    """
    if text.startswith("\\c"):
        return text[2:]
    return "\n" + text.replace("\\n", "\n") if text else ""


@settingsClass
class SmtpdSettings(Settings):
    """
    What one listener's SMTP server (mta.smtpd.factory.SMTPServerFactory
    and its sessions) reads of its scope, converted.  The EHLO fields
    (ehloLines, offered, ehloDiscardLog) are derived in __attrs_post_init__
    from discardEhloKeywords, disableVrfy and sizeLimit.
    """

    ALIASES = {"smtpd_forbid_bare_newline": {"yes": "reject"}}

    # -- naming and logging
    hostname: str = setting("myhostname")  # the 250 of HELO/EHLO, 421/500 texts, Received's "by"
    mailName: str = setting("mail_name")  # Received's "(mta)"
    syslogName: str = setting("syslog_name")  # mail-log program name: $syslog_name/smtpd
    banner: str = setting("smtpd_banner")  # the text of the 220 greeting

    # -- time
    timeout: float = setting("smtpd_timeout")  # seconds per request (deadline) or idle (no deadline)
    perRequestDeadline: bool = setting("smtpd_per_request_deadline")  # mta.smtpd.deadline, or an idle timer
    minDataRate: int = setting("smtpd_min_data_rate")  # content bytes/second that earn a second of deadline
    greetWait: float = setting("postscreen_greet_wait")  # greeting delay for the early-talker test; 0: none
    greetAction: str = setting("postscreen_greet_action")  # ignore, enforce or drop an early talker
    clientPortLogging: bool = setting("smtpd_client_port_logging")  # client=NAME[ADDR]:PORT

    # -- sizes and counts
    sizeLimit: int = setting("message_size_limit")  # bytes; 0: no limit (and EHLO's SIZE has no number)
    lineLimit: int = setting("line_length_limit")  # octets of a command or content line, CRLF not counted
    recipientLimit: int = setting("smtpd_recipient_limit")  # recipients per transaction; then 452 4.5.3
    overshootLimit: int = setting("smtpd_recipient_overshoot_limit")  # 452s past the limit that are no error
    queueMinfree: int = setting("queue_minfree")  # free bytes the queue must keep (MAIL: 452 4.3.1)
    peernameLookup: bool = setting("smtpd_peername_lookup")  # the client's name at connect (mta.smtpd.peername)
    connectionLimit: int = setting("smtpd_client_connection_count_limit")  # sessions per client; 0: any
    connectionRateLimit: int = setting("smtpd_client_connection_rate_limit")  # per rateTimeUnit; 0: any
    messageRateLimit: int = setting("smtpd_client_message_rate_limit")  # MAIL commands per unit; 0: any
    recipientRateLimit: int = setting("smtpd_client_recipient_rate_limit")  # RCPT commands per unit; 0: any
    newTlsRateLimit: int = setting("smtpd_client_new_tls_session_rate_limit")  # new TLS sessions per unit
    rateTimeUnit: float = setting("anvil_rate_time_unit")  # seconds of anvil's window (mta.smtpd.anvil)
    eventLimitExceptions: tuple = setting("smtpd_client_event_limit_exceptions")  # networks/tables exempt
    debugPeerList: tuple = setting("debug_peer_list")  # clients whose dialog is logged line by line
    commandFilter: tuple = setting("smtpd_command_filter")  # tables that rewrite command lines
    debugPeerLevel: int = setting("debug_peer_level")  # Postfix's verbose level; any level logs the dialog

    # -- the error tarpit (smtpd's error_count and junk_cmds)
    errorSleep: float = setting("smtpd_error_sleep_time")  # delay of each reply past the soft limit
    softErrorLimit: int = setting("smtpd_soft_error_limit")  # errors before the tarpit
    hardErrorLimit: int = setting("smtpd_hard_error_limit")  # errors before 421 4.7.0 and a close
    junkLimit: int = setting("smtpd_junk_command_limit")  # NOOP/VRFY/ETRN/RSET before each is an error

    # -- commands
    heloRequired: bool = setting("smtpd_helo_required")  # MAIL and ETRN need HELO/EHLO first
    strictEnvelopes: bool = setting("strict_rfc821_envelopes")  # MAIL/RCPT paths need <>
    disableVrfy: bool = setting("disable_vrfy_command")  # VRFY gets 502 and is not offered
    noopCommands: frozenset = setting("smtpd_noop_commands", _upper)  # upper-case verbs answered 250 Ok
    forbiddenCommands: frozenset = setting("smtpd_forbidden_commands", _forbidden)  # upper-case bytes: 221
    forbidUnauthPipelining: bool = setting("smtpd_forbid_unauth_pipelining")  # 554 5.5.0 and a close
    # Known keywords to hide (upper case), and SILENT-DISCARD if listed; unknown words are dropped.
    discardEhloKeywords: frozenset = setting("smtpd_discard_ehlo_keywords", _discarded)
    discardEhloMaps: tuple = setting("smtpd_discard_ehlo_keyword_address_maps")  # per client, by address
    rejectFooter: str = setting("smtpd_reject_footer", _footer)  # appended to 4xx/5xx reply text; "": none
    requiretlsEnable: bool = setting("requiretls_enable")  # RFC 8689: REQUIRETLS offered inside TLS

    # -- bare newlines (mta.smtpd.data)
    bareNewline: str = setting("smtpd_forbid_bare_newline", _bareNewline)  # reject, normalize or no
    bareNewlineExclusions: tuple = setting("smtpd_forbid_bare_newline_exclusions")  # reject -> normalize
    bareNewlineCode: int = setting("smtpd_forbid_bare_newline_reject_code", _rejectCode)  # 500..599

    # -- derived: the EHLO reply
    ehloLines: tuple = attrs.field(init=False)  # keyword lines after the host name, Postfix's order ("SIZE N")
    offered: frozenset = attrs.field(init=False)  # extensions offered, for MAIL/RCPT parameters (after EHLO)
    ehloDiscardLog: str = attrs.field(init=False)  # "discarding EHLO keywords: ..." at each EHLO; "": no line

    @property
    def offerRequireTls(self):
        """Is REQUIRETLS (RFC 8689) offered inside TLS: requiretls_enable, and not discarded?"""
        return self.requiretlsEnable and "REQUIRETLS" not in self.discardEhloKeywords

    def __attrs_post_init__(self):
        discard = set(self.discardEhloKeywords) - {SILENT_DISCARD}
        # Postfix logs the discarded keywords at each EHLO unless silent-discard is given (and,
        # as ehlo_cmd does, not when ENHANCEDSTATUSCODES itself is discarded).
        silent = SILENT_DISCARD in self.discardEhloKeywords or "ENHANCEDSTATUSCODES" in discard
        logged = "" if silent else " ".join(k for k in DISCARD_LOG_ORDER if k in discard)
        if self.disableVrfy:
            discard.add("VRFY")
        offered = [k for k in EHLO_KEYWORDS if k not in discard]
        if "CHUNKING" not in offered:
            offered = [k for k in offered if k != "BINARYMIME"]  # BINARYMIME needs BDAT
        lines = tuple(f"SIZE {self.sizeLimit}" if k == "SIZE" and self.sizeLimit else k for k in offered)
        object.__setattr__(self, "ehloDiscardLog", logged)
        object.__setattr__(self, "offered", frozenset(offered))
        object.__setattr__(self, "ehloLines", lines)


# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.
LISTENER = {"smtpd": SmtpdSettings}
