"""mta.config.settings.client - SmtpClientSettings, LmtpClientSettings: the SMTP and LMTP client and the smtp/relay/lmtp transports (mta.delivery).

NAME
    SmtpClientSettings  registered as ``smtpClient``: what smtp(8) reads (the
                        smtp and relay transports, and their sessions)
    LmtpClientSettings  registered as ``lmtpClient``: what lmtp(8) reads
    ClientSettings      their common base: what both read alike

DESCRIPTION
    One settings object carries everything a transport and its sessions
    read: the session (mta.delivery.smtpclient: HELO name, per-phase
    timeouts, EHLO handling, quoting, the line bound of the content and the
    reply bound of line_length_limit), the connection (connect timeout,
    bind addresses, the connection cache), the choice of hosts
    (mta.delivery.mx: the MX and host-lookup parameters, inet_protocols,
    the loop detection's myhostname and proxy_interfaces,
    best_mx_transport), the 7-bit conversion, the fall-back relays, and
    what the session transcripts for the postmaster need (notify_classes
    and the notice parameters, as mta.transcript.TranscriptNotices takes
    them).

    The two classes have the same attribute names.  The LMTP one reads the
    lmtp_* parameters where the schema has them (lmtp_lhlo_name,
    lmtp_*_timeout, lmtp_discard_lhlo_keywords, lmtp_skip_5xx_greeting,
    lmtp_skip_quit_response, lmtp_quote_rfc821_envelope,
    lmtp_line_length_limit, lmtp_assume_final, lmtp_tcp_port) and the
    smtp_* ones for the rest (smtp_connect_timeout, smtp_bind_address,
    the MX, fall-back and connection-cache parameters), as mta has always
    done; an LMTP session always sends LHLO (neverSendEhlo and
    alwaysSendEhlo are constants there).

    Checked here, so that load() and mta-config --check fail on them with
    the file, line, section and key: a HELO/LHLO name that is empty or
    holds white space or control characters (it would end up inside a
    command line), a *_line_length_limit of 1 or below 0, a bind address
    that is not an address of its family (Postfix's smtp stops with
    "bad smtp_bind_address parameter" too).

SECURITY
    The HELO name reaches the wire: it may hold no line end, NUL or white
    space (checked here and again when the command is written).

CONFIGURATION
    smtp_*, lmtp_* (above), inet_protocols, ignore_mx_lookup_error,
    disable_dns_lookups, disable_mime_output_conversion,
    best_mx_transport, proxy_interfaces, line_length_limit, relayhost,
    myhostname, syslog_name.  The postmaster transcripts of client
    sessions read NoticeSettings (mta.config.settings.notices).
"""

import ipaddress

from mta.config.settings import Settings, setting, settingsClass

__all__ = ["ClientSettings", "LmtpClientSettings", "SmtpClientSettings"]


def _hasControl(text):
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)


def validHeloName(value):
    """A name fit for HELO/EHLO/LHLO: not empty, no white space, no control character."""
    if not value or _hasControl(value) or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not a host name to send in HELO, EHLO or LHLO")
    return value


def validLineLimit(value):
    """smtp_line_length_limit: 0 (no limit) or at least 2 (a line break needs room)."""
    if value < 0 or value == 1:
        raise ValueError(f"{value} must be 0 (no limit) or at least 2")
    return value


def keywordSet(values):
    """EHLO keywords, compared in upper case."""
    return frozenset(str(v).upper() for v in values)


def inetProtocols(values):
    """inet_protocols as address families in Postfix's order: all is ipv4 and ipv6."""
    wanted = set()
    for value in values:
        wanted.update(("ipv4", "ipv6") if value == "all" else (value,))
    return tuple(family for family in ("ipv4", "ipv6") if family in wanted)


def _bindAddress(version):
    def convert(value):
        if not value:
            return None
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            address = None
        if address is None or address.version != version:
            raise ValueError(f"{value!r} is not an IPv{version} address")
        return str(address)

    return convert


@settingsClass
class ClientSettings(Settings):
    """
    What the smtp and lmtp transports read alike (see the module
    docstring); the attributes of the session part are declared by the
    subclasses.  C{lmtp} (a class constant) tells the protocol.
    """

    lmtp = False

    # -- the session --------------------------------------------------------------------
    myHostname: str = setting("myhostname")  # loop detection (EHLO reply, MX names); names a UNIX-socket peer
    replyLimit: int = setting("line_length_limit")  # bytes kept of a reply line; about twice that of a reply

    # -- connections ------------------------------------------------------------------------
    connectTimeout: float = setting("smtp_connect_timeout")  # the TCP (or UNIX) connect, LMTP too
    bind4: str | None = setting("smtp_bind_address", _bindAddress(4))  # local IPv4 address; None: any
    bind6: str | None = setting("smtp_bind_address6", _bindAddress(6))  # local IPv6 address; None: any
    cacheOnDemand: bool = setting("smtp_connection_cache_on_demand")  # cache every finished connection
    cacheDestinations: frozenset = setting("smtp_connection_cache_destinations", frozenset)  # always cached
    cacheTimeLimit: float = setting("smtp_connection_cache_time_limit")  # idle time before QUIT
    reuseTimeLimit: float = setting("smtp_connection_reuse_time_limit")  # age after which it is not reused
    reuseCountLimit: int = setting("smtp_connection_reuse_count_limit")  # uses per connection; 0: no limit

    # -- destinations and hosts (mta.delivery.mx) -------------------------------------------------
    relayhost: str = setting("relayhost")  # a next-hop equal to it is a relay (problems become 4.3.5)
    fallbackRelays: tuple = setting("smtp_fallback_relay", tuple)  # tried after the destination's hosts
    randomize: bool = setting("smtp_randomize_addresses")  # shuffle hosts of equal preference
    mxAddressLimit: int = setting("smtp_mx_address_limit")  # addresses tried per destination; 0: all
    mxSessionLimit: int = setting("smtp_mx_session_limit")  # sessions per destination; 0: no limit
    ignoreMxLookupError: bool = setting("ignore_mx_lookup_error")  # a failed MX lookup: use the A/AAAA
    deferIfNoMxAddressFound: bool = setting("smtp_defer_if_no_mx_address_found")  # 4.4.4, not 5.4.4
    disableDnsLookups: bool = setting("disable_dns_lookups")  # no MX lookup; addresses from getaddrinfo()
    hostLookup: tuple = setting("smtp_host_lookup")  # "dns" and/or "native", in that order of use
    families: tuple = setting("inet_protocols", inetProtocols)  # ("ipv4", "ipv6"), ("ipv4",) or ("ipv6",)
    addressPreference: str = setting("smtp_address_preference")  # any, ipv4 or ipv6 first
    balanceInetProtocols: bool = setting("smtp_balance_inet_protocols")  # both families within the limit
    proxyInterfaces: tuple = setting("proxy_interfaces", tuple)  # more of "myself" for loop detection
    bestMxTransport: str = setting("best_mx_transport")  # transport[:nexthop] when we are the best MX

    # -- content ------------------------------------------------------------------------------
    disableMimeOutputConversion: bool = setting("disable_mime_output_conversion")  # no 8-bit to QP

    # (session transcripts for the postmaster: NoticeSettings, mta.config.settings.notices)
    syslogName: str = setting("syslog_name")  # mail-log program names: $syslog_name/smtp


@settingsClass
class SmtpClientSettings(ClientSettings):
    """smtp(8): the smtp and relay transports; see the module docstring."""

    lmtp = False
    lmtpAssumeFinal = False  # an SMTP server's success is always "relayed"
    defaultPort = None  # the port of a next-hop without one: smtp's service

    heloName: str = setting("smtp_helo_name", validHeloName)  # sent in EHLO or HELO
    heloTimeout: float = setting("smtp_helo_timeout")  # the greeting and the EHLO/HELO reply
    mailTimeout: float = setting("smtp_mail_timeout")  # the reply to MAIL FROM
    rcptTimeout: float = setting("smtp_rcpt_timeout")  # each reply to RCPT TO
    dataInitTimeout: float = setting("smtp_data_init_timeout")  # the reply to DATA
    dataXferTimeout: float = setting("smtp_data_xfer_timeout")  # no progress while sending the content
    dataDoneTimeout: float = setting("smtp_data_done_timeout")  # the reply to the final "."
    rsetTimeout: float = setting("smtp_rset_timeout")  # the reply to RSET
    quitTimeout: float = setting("smtp_quit_timeout")  # the reply to QUIT (unless skipped)
    discardEhloKeywords: frozenset = setting("smtp_discard_ehlo_keywords", keywordSet)  # ignored, upper case
    neverSendEhlo: bool = setting("smtp_never_send_ehlo")  # HELO only
    alwaysSendEhlo: bool = setting("smtp_always_send_ehlo")  # no: EHLO only when the greeting says ESMTP
    skip5xxGreeting: bool = setting("smtp_skip_5xx_greeting")  # a 5xx greeting defers, next host
    skipQuitResponse: bool = setting("smtp_skip_quit_response")  # close after QUIT without its reply
    quoteRfc821Envelope: bool = setting("smtp_quote_rfc821_envelope")  # quote local parts that need it
    lineLengthLimit: int = setting("smtp_line_length_limit", validLineLimit)  # longer lines are broken


@settingsClass
class LmtpClientSettings(ClientSettings):
    """lmtp(8): the lmtp transport; see the module docstring."""

    lmtp = True
    neverSendEhlo = False  # LMTP always sends LHLO
    alwaysSendEhlo = True

    heloName: str = setting("lmtp_lhlo_name", validHeloName)  # sent in LHLO
    heloTimeout: float = setting("lmtp_lhlo_timeout")  # the greeting and the LHLO reply
    mailTimeout: float = setting("lmtp_mail_timeout")  # the reply to MAIL FROM
    rcptTimeout: float = setting("lmtp_rcpt_timeout")  # each reply to RCPT TO
    dataInitTimeout: float = setting("lmtp_data_init_timeout")  # the reply to DATA
    dataXferTimeout: float = setting("lmtp_data_xfer_timeout")  # no progress while sending the content
    dataDoneTimeout: float = setting("lmtp_data_done_timeout")  # each reply after the final "."
    rsetTimeout: float = setting("lmtp_rset_timeout")  # the reply to RSET
    quitTimeout: float = setting("lmtp_quit_timeout")  # the reply to QUIT (unless skipped)
    discardEhloKeywords: frozenset = setting("lmtp_discard_lhlo_keywords", keywordSet)  # ignored, upper case
    skip5xxGreeting: bool = setting("lmtp_skip_5xx_greeting")  # a 5xx greeting defers, next host
    skipQuitResponse: bool = setting("lmtp_skip_quit_response")  # close after QUIT without its reply
    quoteRfc821Envelope: bool = setting("lmtp_quote_rfc821_envelope")  # quote local parts that need it
    lineLengthLimit: int = setting("lmtp_line_length_limit", validLineLimit)  # longer lines are broken
    lmtpAssumeFinal: bool = setting("lmtp_assume_final")  # success without DSN is "delivered"
    defaultPort: str = setting("lmtp_tcp_port")  # the port of a next-hop without one


# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.
MAIN = {"smtpClient": SmtpClientSettings, "lmtpClient": LmtpClientSettings}
