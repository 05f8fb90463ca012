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

    REQUIRETLS (RFC 8689): requiretls_enable, tls_required_enable and
    smtp_requiretls_policy (lmtp_requiretls_policy), whose items must be
    actions or type:table specs (mta.delivery.requiretls).

    TLS: the smtp_tls_* (lmtp_tls_*) parameters are compiled into C{tls},
    a ClientTls (the effective level, protocol ranges and cipher lists as
    mta.config.settings.tls parses them for the server, the key-exchange
    groups set explicitly, CA and client-certificate files read and
    checked here with their file:line).

SIZE
    Over 700 lines, and still one job: the compiled settings of the SMTP
    and LMTP client, which share one base class, their older-name mapping
    and their TLS, SASL and per-server controls.  Most of the length is
    field declarations (a line per parameter) and the older names' table;
    the natural split, if it grows, is the TLS and per-server controls
    into a module of their own beside it.

SECURITY
    The HELO name reaches the wire: it may hold no line end, NUL or white
    space (checked here and again when the command is written).

    The rest of smtp(8)'s controls (mta.delivery.smtpquirks) are read in
    one block at the end of each class; the older names are mapped here
    and each one set gives a line in C{notes} (logged as a warning by the
    generation, at start and reload): PREFIX_use_tls and PREFIX_enforce_tls
    (with PREFIX_tls_enforce_peername) give the level when
    PREFIX_tls_security_level is not set (Postfix's global_tls_level());
    PREFIX_tls_chain_files replace the cert/key, eccert and dcert files,
    which are otherwise loaded beside PREFIX_tls_cert_file (C{tls.keyPairs},
    every file read and its key checked); fallback_relay is the default of
    smtp_fallback_relay; PREFIX_tls_per_site is a table list for the TLS
    policy (mta.delivery.tlspersite).  The fall-back relays and
    lmtp_tcp_port are parsed with mta.config.nexthop.

DEVIATIONS
    fingerprint needs smtp_tls_fingerprint_cert_match (a load error
    otherwise).  dane and
    dane-only are real levels only with smtp_dns_support_level = dnssec
    (mta.delivery.dane decides per MX host); without it, as Postfix's
    dane_init(), dane is may and dane-only defers every delivery (4.7.5
    "client TLS configuration problem"), each with the warning
    "DEST: dane configured with dnssec lookups disabled"
    (C{ClientTls.daneProblem}); likewise with ignore_mx_lookup_error
    ("... with MX lookup errors ignored") or without dns in
    smtp_host_lookup.  Empty smtp_tls_CAfile and smtp_tls_CApath mean the system
    trust store (Postfix: no CAs unless tls_append_default_CA = yes).
    The older TLS names apply when smtp_tls_security_level is not set in
    the file (mta's default is may, as Postfix 3.11's; Postfix also takes
    an explicitly empty level).  A chain file gives its first key and
    certificate only (as the server's smtpd_tls_chain_files).
    smtp_skip_4xx_greeting and lmtp_cache_connection act as in Postfix 2.0
    and 2.2 (later Postfix ignores them).

CONFIGURATION
    smtp_*, lmtp_* (above), smtp_tls_*, lmtp_tls_*, smtp_starttls_timeout,
    lmtp_starttls_timeout, tls_*_cipherlist, tls_eecdh_auto_curves,
    tls_ffdhe_auto_groups, inet_protocols, ignore_mx_lookup_error,
    disable_dns_lookups, disable_mime_output_conversion,
    best_mx_transport, proxy_interfaces, line_length_limit, relayhost,
    myhostname, syslog_name.  The postmaster transcripts of client
    sessions read NoticeSettings (mta.config.settings.notices).

SIZE
    Past 700 lines, one job (compiling the client parameters):
    SmtpClientSettings and LmtpClientSettings declare every parameter twice
    (Postfix's smtp_/lmtp_ twins, one typed field each), and check() holds
    the TLS compile (levels, DANE, protocols, ciphers, key files, the older
    names), which reads both classes' fields alike.  The SASL compile is
    apart already (mta.config.settings.clientsasl); the TLS compile is the
    next to move out if the module grows.
"""

import ipaddress
import os

import attrs

from mta.config.errors import ConfigError
from mta.config.settings import Settings, setting, settingsClass
from mta.config.settings.clientsasl import ClientSasl, compileClientSasl
from mta.config.settings.tls import compileCipherList, knownGroups, parseProtocols

__all__ = ["ClientSettings", "ClientTls", "LmtpClientSettings", "SmtpClientSettings"]

# Levels that never send mail in plaintext, and those that check the certificate's chain and name.
TLS_REQUIRED = frozenset({"encrypt", "dane", "dane-only", "fingerprint", "verify", "secure"})
# A "dane" level reaches a session only with usable TLSA records (mta.delivery.dane evolves it per
# host); without them judging by CAs and names fails closed (no name to match).
TLS_MATCH = frozenset({"dane", "dane-only", "verify", "secure"})
DANE_LEVELS = frozenset({"dane", "dane-only"})
# Every smtp_tls_security_level (and smtp_tls_policy_maps level) Postfix knows.
TLS_LEVELS = ("none", "may", "encrypt", "dane", "dane-only", "fingerprint", "verify", "secure")


@attrs.frozen(cache_hash=True)  # hashed per delivery: in cache keys and the TLS context table
class ClientTls:
    """
    The client's TLS policy, compiled at load from the smtp_tls_* (lmtp_tls_*)
    parameters: what mta.delivery.smtptls builds its contexts from.
    """

    level: str = "none"  # none, may, encrypt, dane, dane-only, verify or secure (effective)
    configuredLevel: str = "none"  # as written (dane without dnssec shows here; level is may)
    wrapperMode: bool = False
    caFile: str = ""
    caPath: str = ""  # both empty: the system trust store
    certFile: str = ""
    keyFile: str = ""
    protocolRange: tuple = ("TLSv1", "TLSv1.3")  # under may
    mandatoryProtocolRange: tuple = ("TLSv1", "TLSv1.3")  # under encrypt and above
    cipherList: str = "DEFAULT"
    mandatoryCipherList: str = "DEFAULT"
    groups: tuple = ()  # key-exchange groups, explicitly (no post-quantum share by surprise)
    serverName: str = ""  # "", "hostname", "nexthop" or a literal name
    verifyCertMatch: tuple = ("hostname",)
    secureCertMatch: tuple = ("nexthop", "dot-nexthop")
    starttlsTimeout: float = 300.0
    loglevel: int = 0
    noteStarttlsOffer: bool = False
    fingerprintCertMatch: tuple = ()  # the fingerprint level's digests, as written
    fingerprintDigest: str = "sha256"
    # DANE (mta.delivery.dane): smtp_tls_dane_insecure_mx_policy (resolved), and why DANE cannot be
    # used at all (Postfix's NONDANE_CONFIG warning text, without the destination), or "".
    insecureMxPolicy: str = "may"
    daneProblem: str = ""
    keyPairs: tuple = ()  # (certFile, keyFile) loaded after certFile: smtp_tls_chain_files, eccert, dcert

    @property
    def required(self):
        """No plaintext: encrypt and above, or wrapper mode."""
        return self.level in TLS_REQUIRED or self.wrapperMode

    @property
    def mustMatch(self):
        return self.level in TLS_MATCH

    @property
    def activeProtocolRange(self):
        return self.mandatoryProtocolRange if self.required else self.protocolRange

    @property
    def activeCipherList(self):
        return self.mandatoryCipherList if self.required else self.cipherList

    @property
    def matchNames(self):
        """The smtp_tls_verify_cert_match (verify) or smtp_tls_secure_cert_match (secure) list."""
        return self.secureCertMatch if self.level == "secure" else self.verifyCertMatch if self.level == "verify" else ()


def _hasControl(text):
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)


def validHeloName(value):
    """A name fit for HELO/EHLO/LHLO: not empty, no white space, no control character."""
    if not value or _hasControl(value) or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} is not a host name to send in HELO, EHLO or LHLO")
    return value


# smtp_requiretls_policy's actions (Postfix 3.11; mta.delivery.requiretls).
REQUIRETLS_ACTIONS = ("enforce", "opportunistic+starttls", "opportunistic", "disable")


def parseRequireTlsPolicy(items):
    """smtp_requiretls_policy's items: each an action (lower case) or a type:table; ValueError otherwise."""
    result = []
    for item in items:
        word = item.strip()
        if word.lower() in REQUIRETLS_ACTIONS:
            result.append(word.lower())
        elif ":" in word and not word.startswith(":"):
            result.append(word)
        else:
            raise ValueError(f"{item!r} is not a REQUIRETLS action ({', '.join(REQUIRETLS_ACTIONS)}) or a type:table")
    return tuple(result)


_requiretlsPolicy = parseRequireTlsPolicy


def validLineLimit(value):
    """smtp_line_length_limit: 0 (no limit) or at least 2 (a line break needs room)."""
    if value < 0 or value == 1:
        raise ValueError(f"{value} must be 0 (no limit) or at least 2")
    return value


def validSessionCacheTimeout(value):
    """smtp_tls_session_cache_timeout: 0 disables; no more than 100 days (Postfix's limit since 2.11)."""
    if value > 100 * 86400:
        raise ValueError(f"{value:g}s is more than 100 days (8640000s)")
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


def positiveTime(value):
    """A time that must not be 0 (smtp_pix_workaround_delay_time)."""
    if value <= 0:
        raise ValueError("must be a non-zero time")
    return value


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
    # -- RFC 8689 (mta.delivery.requiretls)
    requiretlsEnable: bool = setting("requiretls_enable")  # no: mail goes as if REQUIRETLS was not requested
    tlsRequiredEnable: bool = setting("tls_required_enable")  # honour "TLS-Required: No" (level may)
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

    # -- TLS (the cipher grades and groups are the server's too: mta.config.settings.tls)
    highCipherlist: str = setting("tls_high_cipherlist")
    mediumCipherlist: str = setting("tls_medium_cipherlist")
    lowCipherlist: str = setting("tls_low_cipherlist")
    exportCipherlist: str = setting("tls_export_cipherlist")
    nullCipherlist: str = setting("tls_null_cipherlist")
    curves: tuple = setting("tls_eecdh_auto_curves", tuple)
    ffdheGroups: tuple = setting("tls_ffdhe_auto_groups", tuple)
    tls: ClientTls = attrs.field(init=False, default=ClientTls())  # compiled in check()
    notes: tuple = attrs.field(init=False, default=())  # older names mapped at load: logged as warnings

    def check(self, scope):
        """Compile the smtp_tls_* (lmtp_tls_*) parameters into C{tls}, every file read once."""
        from OpenSSL import SSL

        prefix = "lmtp" if self.lmtp else "smtp"

        def fail(name, message):
            raise ConfigError(f"{scope.where(prefix + name)}: {message}")

        notes = []
        level = self._olderLevel(scope, prefix, notes)
        effective, daneProblem = level, ""
        if level in DANE_LEVELS:
            if self.dnsSupportLevelEffective != "dnssec" or "dns" not in self.hostLookup:
                daneProblem = f"{level} configured with dnssec lookups disabled"
            elif not self.lmtp and self.ignoreMxLookupError:
                daneProblem = f"{level} configured with MX lookup errors ignored"
            if daneProblem and level == "dane":
                effective = "may"  # dane_incompat(NONDANE_CONFIG): may, with a warning per delivery
        insecureMxPolicy = self.insecureMxPolicy or ("dane" if level == "dane" else "may")
        for digest in self.tlsFingerprintCertMatch:
            hexits = digest.strip().lower().replace(":", "")
            if not hexits or len(hexits) % 2 or any(c not in "0123456789abcdef" for c in hexits):
                fail("_tls_fingerprint_cert_match", f"{digest!r} is not a hex fingerprint")
        if level == "fingerprint" and not self.tlsFingerprintCertMatch:
            fail("_tls_security_level", f"{prefix}_tls_security_level = fingerprint needs "
                                                f"{prefix}_tls_fingerprint_cert_match")
        ranges = {}
        for name, items in (("_tls_protocols", self.tlsProtocols),
                            ("_tls_mandatory_protocols", self.tlsMandatoryProtocols)):
            try:
                ranges[name] = parseProtocols(items)
            except ValueError as e:
                fail(name, str(e))
        lists = {}
        for name, grade, excluded in (
            ("_tls_ciphers", self.tlsCiphers, self.tlsExcludeCiphers),
            ("_tls_mandatory_ciphers", self.tlsMandatoryCiphers,
             (*self.tlsExcludeCiphers, *self.tlsMandatoryExcludeCiphers)),
        ):
            base = getattr(self, f"{grade}Cipherlist")
            text = compileCipherList(base, excluded)
            if text is None:
                fail(name if not excluded else "_tls_exclude_ciphers",
                     f"the cipher list {base!r} (tls_{grade}_cipherlist) less {' '.join(excluded)!r} selects no cipher")
            lists[name] = text
        groups = knownGroups((*self.curves, *self.ffdheGroups))
        if not groups and (self.curves or self.ffdheGroups):
            raise ConfigError(f"{scope.where('tls_eecdh_auto_curves')}: none of the key-exchange groups "
                              f"(tls_eecdh_auto_curves, tls_ffdhe_auto_groups) is known to the TLS library")
        caFile, caPath = self.tlsCAfile.strip(), self.tlsCApath.strip()
        probe = SSL.Context(SSL.TLS_METHOD)
        if caFile:
            if not os.access(caFile, os.R_OK):
                fail("_tls_CAfile", f"cannot read {caFile!r}")
            try:
                probe.load_verify_locations(caFile.encode(), None)
            except SSL.Error:
                fail("_tls_CAfile", f"{caFile!r} holds no PEM CA certificates")
        if caPath and not os.path.isdir(caPath):
            fail("_tls_CApath", f"{caPath!r} is not a directory")
        pairs = self._moreKeyPairs(scope, prefix, fail, notes)
        certFile, keyFile = self.tlsCertFile.strip(), self.tlsKeyFile.strip() or self.tlsCertFile.strip()
        if self.tlsChainFiles:
            certFile = keyFile = ""  # Postfix: the chain files replace the legacy files
        if certFile:
            for path, name in ((certFile, "_tls_cert_file"), (keyFile, "_tls_key_file")):
                if not os.path.isfile(path) or not os.access(path, os.R_OK):
                    fail(name, f"cannot read {path!r}")
            try:
                probe.use_certificate_chain_file(certFile)
            except SSL.Error:
                fail("_tls_cert_file", f"{certFile!r} holds no PEM certificate")
            try:
                probe.use_privatekey_file(keyFile)
                probe.check_privatekey()
            except (SSL.Error, OSError):
                fail("_tls_key_file", f"{keyFile!r} holds no unencrypted PEM private key of {certFile!r}")
        elif self.tlsKeyFile.strip() and scope.entry(prefix + "_tls_key_file") is not None and not self.tlsChainFiles:
            fail("_tls_key_file", f"a key without a certificate ({prefix}_tls_cert_file is empty)")
        for name, values in (("_tls_verify_cert_match", self.tlsVerifyCertMatch),
                             ("_tls_secure_cert_match", self.tlsSecureCertMatch)):
            for value in values:
                if not value or _hasControl(value) or any(c.isspace() for c in value):
                    fail(name, f"{value!r} is not hostname, nexthop, dot-nexthop or a name")
        serverName = self.tlsServername.strip()
        if serverName and (_hasControl(serverName) or any(c.isspace() for c in serverName)):
            fail("_tls_servername", f"{serverName!r} is not a server name")
        tls = ClientTls(
            level=effective, configuredLevel=level, wrapperMode=self.tlsWrapperMode, caFile=caFile, caPath=caPath,
            certFile=certFile, keyFile=keyFile if certFile else "",
            protocolRange=ranges["_tls_protocols"], mandatoryProtocolRange=ranges["_tls_mandatory_protocols"],
            cipherList=lists["_tls_ciphers"], mandatoryCipherList=lists["_tls_mandatory_ciphers"],
            groups=groups, serverName=serverName,
            verifyCertMatch=tuple(v.lower() for v in self.tlsVerifyCertMatch),
            secureCertMatch=tuple(v.lower() for v in self.tlsSecureCertMatch),
            starttlsTimeout=self.starttlsTimeout, loglevel=self.tlsLoglevel,
            noteStarttlsOffer=self.tlsNoteStarttlsOffer, keyPairs=pairs,
            fingerprintCertMatch=tuple(self.tlsFingerprintCertMatch), fingerprintDigest=self.tlsFingerprintDigest,
            insecureMxPolicy=insecureMxPolicy, daneProblem=daneProblem,
        )
        object.__setattr__(self, "tls", tls)
        object.__setattr__(self, "notes", tuple(notes))
        self._checkDestinations(scope, prefix)
        stsCA = self.mtaStsCAfile.strip()
        if stsCA:  # the MTA-STS policy fetch's trust store (mta.delivery.mtasts)
            try:
                probe.load_verify_locations(stsCA.encode(), None)
            except (SSL.Error, OSError):
                fail("_mta_sts_CAfile", f"cannot read PEM CA certificates from {stsCA!r}")
        object.__setattr__(self, "sasl", compileClientSasl(self, scope, prefix))

    def _checkDestinations(self, scope, prefix):
        """The fall-back relays and lmtp_tcp_port, parsed now as a delivery would (mta.config.nexthop)."""
        from mta.config.nexthop import parseNexthop, servicePort

        name = f"{prefix}_fallback_relay"
        if prefix == "smtp" and scope.entry(name) is None and scope.entry("fallback_relay") is not None:
            name = "fallback_relay"
        port = self.defaultPort
        if self.lmtp:
            try:
                servicePort(port)
            except ValueError as e:
                raise ConfigError(f"{scope.where('lmtp_tcp_port')}: {e}") from None
        for destination in self.fallbackRelays:
            try:
                nexthop = parseNexthop(destination, prefix, port)
            except ValueError as e:
                raise ConfigError(f"{scope.where(name)}: bad next-hop {destination!r}: {e}") from None
            if nexthop.kind == "unix":
                raise ConfigError(f"{scope.where(name)}: {destination!r}: the fall-back relays must be TCP "
                                  f"destinations")

    def _olderLevel(self, scope, prefix, notes):
        """
        The level, with Postfix's older names: when PREFIX_tls_security_level
        is not set, PREFIX_enforce_tls = yes is verify (encrypt with
        PREFIX_tls_enforce_peername = no) and PREFIX_use_tls may or none
        (Postfix's global_tls_level()); each one set is noted.
        """
        level = self.tlsSecurityLevel
        current = f"{prefix}_tls_security_level"
        explicit = scope.entry(current) is not None
        olderSet = [name for name in (f"{prefix}_use_tls", f"{prefix}_enforce_tls", f"{prefix}_tls_enforce_peername")
                    if scope.entry(name) is not None]
        if f"{prefix}_use_tls" in olderSet or f"{prefix}_enforce_tls" in olderSet:
            if not explicit:
                if self.enforceTls:
                    level = "verify" if self.tlsEnforcePeername else "encrypt"
                else:
                    level = "may" if self.useTls else "none"
        for name in olderSet:
            tail = f"ignored: {current} is set" if explicit else f"{current} = {level} is used"
            notes.append(f"{scope.where(name)}: {name} is obsolete; use {current} ({tail})")
        if prefix == "smtp" and scope.entry("fallback_relay") is not None:
            tail = ("ignored: smtp_fallback_relay is set" if scope.entry("smtp_fallback_relay") is not None
                    else "its value is used")
            notes.append(f"{scope.where('fallback_relay')}: fallback_relay is obsolete; use smtp_fallback_relay "
                         f"({tail})")
        if self.tlsPerSite and scope.entry(f"{prefix}_tls_per_site") is not None:
            notes.append(f"{scope.where(prefix + '_tls_per_site')}: {prefix}_tls_per_site is obsolete; use "
                         f"{prefix}_tls_policy_maps")
        return level

    def _moreKeyPairs(self, scope, prefix, fail, notes):
        """
        (certFile, keyFile) pairs beyond PREFIX_tls_cert_file, each read and
        checked now: every PREFIX_tls_chain_files file (its key and chain,
        as the server's smtpd_tls_chain_files), else the ECDSA and DSA
        files; with chain files the legacy files are ignored (noted).
        """
        from OpenSSL import SSL

        if self.tlsChainFiles:
            legacy = [name for name in (f"{prefix}_tls_cert_file", f"{prefix}_tls_dcert_file",
                                        f"{prefix}_tls_eccert_file") if scope.entry(name) is not None]
            for name in legacy:
                notes.append(f"{scope.where(name)}: {name} is ignored: {prefix}_tls_chain_files is set")
            pairs = [(path.strip(), path.strip(), "_tls_chain_files", "_tls_chain_files")
                     for path in self.tlsChainFiles]
        else:
            pairs = []
            for cert, key, certName, keyName in ((self.tlsEccertFile, self.tlsEckeyFile, "_tls_eccert_file",
                                                  "_tls_eckey_file"),
                                                 (self.tlsDcertFile, self.tlsDkeyFile, "_tls_dcert_file",
                                                  "_tls_dkey_file")):
                if cert.strip():
                    pairs.append((cert.strip(), key.strip() or cert.strip(), certName, keyName))
                elif key.strip() and scope.entry(prefix + keyName) is not None:
                    fail(keyName, f"a key without a certificate ({prefix}{certName} is empty)")
            if scope.entry(f"{prefix}_tls_dcert_file") is not None:
                notes.append(f"{scope.where(prefix + '_tls_dcert_file')}: {prefix}_tls_dcert_file is obsolete; "
                             f"use {prefix}_tls_chain_files (the file is still loaded)")
        checked = []
        for cert, key, certName, keyName in pairs:
            for path, name in ((cert, certName), (key, keyName)):
                if not os.path.isfile(path) or not os.access(path, os.R_OK):
                    fail(name, f"cannot read {path!r}")
            probe = SSL.Context(SSL.TLS_METHOD)
            try:
                probe.use_certificate_chain_file(cert)
            except SSL.Error:
                fail(certName, f"{cert!r} holds no PEM certificate")
            try:
                probe.use_privatekey_file(key)
                probe.check_privatekey()
            except (SSL.Error, OSError):
                fail(keyName, f"{key!r} holds no unencrypted PEM private key of {cert!r}")
            checked.append((cert, key))
        return tuple(checked)

    @property
    def dnsSupportLevelEffective(self):
        """smtp_dns_support_level, its empty default resolved by disable_dns_lookups (Postfix)."""
        return self.dnsSupportLevel or ("disabled" if self.disableDnsLookups else "enabled")

    @property
    def dnsDisabled(self):
        """No DNS in this client (disable_dns_lookups, or smtp_dns_support_level = disabled)."""
        return self.dnsSupportLevelEffective == "disabled"

    @property
    def dnssec(self):
        """smtp_dns_support_level = dnssec: MX, address and TLSA lookups ask for DNSSEC."""
        return self.dnsSupportLevelEffective == "dnssec"


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
    # -- TLS (smtp_tls_*; compiled into C{tls} by check())
    tlsSecurityLevel: str = setting("smtp_tls_security_level")
    tlsWrapperMode: bool = setting("smtp_tls_wrappermode")
    tlsCAfile: str = setting("smtp_tls_CAfile")
    tlsCApath: str = setting("smtp_tls_CApath")
    tlsCertFile: str = setting("smtp_tls_cert_file")
    tlsKeyFile: str = setting("smtp_tls_key_file")
    tlsProtocols: tuple = setting("smtp_tls_protocols", tuple)
    tlsMandatoryProtocols: tuple = setting("smtp_tls_mandatory_protocols", tuple)
    tlsCiphers: str = setting("smtp_tls_ciphers")
    tlsMandatoryCiphers: str = setting("smtp_tls_mandatory_ciphers")
    tlsExcludeCiphers: tuple = setting("smtp_tls_exclude_ciphers", tuple)
    tlsMandatoryExcludeCiphers: tuple = setting("smtp_tls_mandatory_exclude_ciphers", tuple)
    tlsServername: str = setting("smtp_tls_servername")
    tlsVerifyCertMatch: tuple = setting("smtp_tls_verify_cert_match", tuple)
    tlsSecureCertMatch: tuple = setting("smtp_tls_secure_cert_match", tuple)
    starttlsTimeout: float = setting("smtp_starttls_timeout")
    tlsLoglevel: int = setting("smtp_tls_loglevel")
    tlsNoteStarttlsOffer: bool = setting("smtp_tls_note_starttls_offer")
    tlsPolicyMaps: tuple = setting("smtp_tls_policy_maps")
    requiretlsPolicy: tuple = setting("smtp_requiretls_policy", _requiretlsPolicy)  # actions and tables
    tlsFingerprintCertMatch: tuple = setting("smtp_tls_fingerprint_cert_match", tuple)
    tlsFingerprintDigest: str = setting("smtp_tls_fingerprint_digest")
    # TLS connection reuse and session resumption (mta.delivery.connectioncache, mta.delivery.tlssessions)
    tlsConnectionReuse: bool = setting("smtp_tls_connection_reuse")  # cache TLS connections (per policy)
    tlsSessionCacheTimeout: float = setting("smtp_tls_session_cache_timeout", validSessionCacheTimeout)  # 0: off
    # -- DNSSEC and DANE (mta.delivery.dane; resolved by check() into tls and dnsSupportLevelEffective)
    dnsSupportLevel: str = setting("smtp_dns_support_level")
    insecureMxPolicy: str = setting("smtp_tls_dane_insecure_mx_policy")
    forceInsecureHostTlsaLookup: bool = setting("smtp_tls_force_insecure_host_tlsa_lookup")
    # -- MTA-STS (mta.delivery.mtasts)
    mtaStsEnable: bool = setting("smtp_mta_sts_enable")
    mtaStsCacheFile: str = setting("smtp_mta_sts_cache_file")  # empty: mta-sts.sqlite in the queue directory
    mtaStsFetchTimeout: float = setting("smtp_mta_sts_fetch_timeout", positiveTime)
    mtaStsCAfile: str = setting("smtp_mta_sts_CAfile")  # empty: the system trust store
    mtaStsRetryTime: float = setting("smtp_mta_sts_retry_time")
    # -- the rest of smtp(8)'s controls (mta.delivery.smtpquirks) and the older names
    discardEhloKeywordMaps: tuple = setting("smtp_discard_ehlo_keyword_address_maps")  # by server IP address
    skip4xxGreeting: bool = setting("smtp_skip_4xx_greeting")  # no: a 4xx greeting defers, no next host
    pixWorkarounds: frozenset = setting("smtp_pix_workarounds", frozenset)  # disable_esmtp, delay_dotcrlf
    pixWorkaroundMaps: tuple = setting("smtp_pix_workaround_maps")  # by server IP address
    pixDelayTime: float = setting("smtp_pix_workaround_delay_time", positiveTime)  # the wait before "."
    pixThresholdTime: float = setting("smtp_pix_workaround_threshold_time")  # queued this long: delay "."
    cnameOverridesServername: bool = setting("smtp_cname_overrides_servername")  # CNAME target as the name
    tlsBlockEarlyMailReply: bool = setting("smtp_tls_block_early_mail_reply")  # input before MAIL in TLS: 4.7.0
    tlsEnforcePeername: bool = setting("smtp_tls_enforce_peername")  # obsolete (with smtp_enforce_tls)
    useTls: bool = setting("smtp_use_tls")  # obsolete: may
    enforceTls: bool = setting("smtp_enforce_tls")  # obsolete: verify or encrypt
    tlsPerSite: tuple = setting("smtp_tls_per_site")  # obsolete per-site tables (the TLS policy looks them up)
    tlsChainFiles: tuple = setting("smtp_tls_chain_files", tuple)  # client keys and chains (compiled into tls)
    tlsDcertFile: str = setting("smtp_tls_dcert_file")
    tlsDkeyFile: str = setting("smtp_tls_dkey_file")
    tlsEccertFile: str = setting("smtp_tls_eccert_file")
    tlsEckeyFile: str = setting("smtp_tls_eckey_file")
    obsoleteFallbackRelay: tuple = setting("fallback_relay", tuple)  # the default of smtp_fallback_relay
    cacheConnection = True  # lmtp_cache_connection is LMTP's
    # -- SASL (smtp_sasl_*; compiled into C{sasl} by check(): mta.config.settings.clientsasl)
    saslAuthEnable: bool = setting("smtp_sasl_auth_enable")
    saslPasswordMaps: tuple = setting("smtp_sasl_password_maps")
    saslPasswordResultDelimiter: str = setting("smtp_sasl_password_result_delimiter")
    senderDependentAuthentication: bool = setting("smtp_sender_dependent_authentication")
    saslMechanismFilter: tuple = setting("smtp_sasl_mechanism_filter", tuple)
    saslSecurityOptions: tuple = setting("smtp_sasl_security_options")
    saslTlsSecurityOptions: tuple = setting("smtp_sasl_tls_security_options")
    saslTlsVerifiedSecurityOptions: tuple = setting("smtp_sasl_tls_verified_security_options")
    saslAuthSoftBounce: bool = setting("smtp_sasl_auth_soft_bounce")
    saslAuthCacheName: str = setting("smtp_sasl_auth_cache_name")
    saslAuthCacheTime: float = setting("smtp_sasl_auth_cache_time")
    saslType: str = setting("smtp_sasl_type")
    sendDummyMailAuth: bool = setting("smtp_send_dummy_mail_auth")
    sasl: ClientSasl = attrs.field(init=False, default=ClientSasl())


@settingsClass
class LmtpClientSettings(ClientSettings):
    """lmtp(8): the lmtp transport; see the module docstring."""

    lmtp = True
    neverSendEhlo = False  # LMTP always sends LHLO
    mtaStsEnable = False  # MTA-STS is for MX deliveries (smtp only)
    mtaStsCAfile = ""
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
    # -- TLS (lmtp_tls_*; compiled into C{tls} by check())
    tlsSecurityLevel: str = setting("lmtp_tls_security_level")
    tlsWrapperMode: bool = setting("lmtp_tls_wrappermode")
    tlsCAfile: str = setting("lmtp_tls_CAfile")
    tlsCApath: str = setting("lmtp_tls_CApath")
    tlsCertFile: str = setting("lmtp_tls_cert_file")
    tlsKeyFile: str = setting("lmtp_tls_key_file")
    tlsProtocols: tuple = setting("lmtp_tls_protocols", tuple)
    tlsMandatoryProtocols: tuple = setting("lmtp_tls_mandatory_protocols", tuple)
    tlsCiphers: str = setting("lmtp_tls_ciphers")
    tlsMandatoryCiphers: str = setting("lmtp_tls_mandatory_ciphers")
    tlsExcludeCiphers: tuple = setting("lmtp_tls_exclude_ciphers", tuple)
    tlsMandatoryExcludeCiphers: tuple = setting("lmtp_tls_mandatory_exclude_ciphers", tuple)
    tlsServername: str = setting("lmtp_tls_servername")
    tlsVerifyCertMatch: tuple = setting("lmtp_tls_verify_cert_match", tuple)
    tlsSecureCertMatch: tuple = setting("lmtp_tls_secure_cert_match", tuple)
    starttlsTimeout: float = setting("lmtp_starttls_timeout")
    tlsLoglevel: int = setting("lmtp_tls_loglevel")
    tlsNoteStarttlsOffer: bool = setting("lmtp_tls_note_starttls_offer")
    tlsPolicyMaps: tuple = setting("lmtp_tls_policy_maps")
    requiretlsPolicy: tuple = setting("lmtp_requiretls_policy", _requiretlsPolicy)  # actions and tables
    tlsFingerprintCertMatch: tuple = setting("lmtp_tls_fingerprint_cert_match", tuple)
    tlsFingerprintDigest: str = setting("lmtp_tls_fingerprint_digest")
    # TLS connection reuse and session resumption (mta.delivery.connectioncache, mta.delivery.tlssessions)
    tlsConnectionReuse: bool = setting("lmtp_tls_connection_reuse")  # cache TLS connections (per policy)
    tlsSessionCacheTimeout: float = setting("lmtp_tls_session_cache_timeout", validSessionCacheTimeout)  # 0: off
    # -- DNSSEC and DANE (mta.delivery.dane); Postfix has no lmtp_ insecure-MX twin (no MX in LMTP)
    dnsSupportLevel: str = setting("lmtp_dns_support_level")
    insecureMxPolicy = ""
    forceInsecureHostTlsaLookup: bool = setting("lmtp_tls_force_insecure_host_tlsa_lookup")
    # -- the rest of lmtp(8)'s controls (mta.delivery.smtpquirks) and the older names
    discardEhloKeywordMaps: tuple = setting("lmtp_discard_lhlo_keyword_address_maps")  # by server IP address
    skip4xxGreeting = True  # smtp_skip_4xx_greeting is SMTP's
    pixWorkarounds: frozenset = setting("lmtp_pix_workarounds", frozenset)
    pixWorkaroundMaps: tuple = setting("lmtp_pix_workaround_maps")
    pixDelayTime: float = setting("lmtp_pix_workaround_delay_time", positiveTime)
    pixThresholdTime: float = setting("lmtp_pix_workaround_threshold_time")
    cnameOverridesServername: bool = setting("lmtp_cname_overrides_servername")
    tlsBlockEarlyMailReply: bool = setting("lmtp_tls_block_early_mail_reply")
    tlsEnforcePeername: bool = setting("lmtp_tls_enforce_peername")
    useTls: bool = setting("lmtp_use_tls")
    enforceTls: bool = setting("lmtp_enforce_tls")
    tlsPerSite: tuple = setting("lmtp_tls_per_site")
    tlsChainFiles: tuple = setting("lmtp_tls_chain_files", tuple)
    tlsDcertFile: str = setting("lmtp_tls_dcert_file")
    tlsDkeyFile: str = setting("lmtp_tls_dkey_file")
    tlsEccertFile: str = setting("lmtp_tls_eccert_file")
    tlsEckeyFile: str = setting("lmtp_tls_eckey_file")
    cacheConnection: bool = setting("lmtp_cache_connection")  # no: LMTP connections are never cached
    fallbackRelays: tuple = setting("lmtp_fallback_relay", tuple)  # LMTP's own (Postfix 3.1)
    # -- SASL (lmtp_sasl_*; compiled into C{sasl} by check(): mta.config.settings.clientsasl)
    saslAuthEnable: bool = setting("lmtp_sasl_auth_enable")
    saslPasswordMaps: tuple = setting("lmtp_sasl_password_maps")
    saslPasswordResultDelimiter: str = setting("lmtp_sasl_password_result_delimiter")
    senderDependentAuthentication: bool = setting("lmtp_sender_dependent_authentication")
    saslMechanismFilter: tuple = setting("lmtp_sasl_mechanism_filter", tuple)
    saslSecurityOptions: tuple = setting("lmtp_sasl_security_options")
    saslTlsSecurityOptions: tuple = setting("lmtp_sasl_tls_security_options")
    saslTlsVerifiedSecurityOptions: tuple = setting("lmtp_sasl_tls_verified_security_options")
    saslAuthSoftBounce: bool = setting("lmtp_sasl_auth_soft_bounce")
    saslAuthCacheName: str = setting("lmtp_sasl_auth_cache_name")
    saslAuthCacheTime: float = setting("lmtp_sasl_auth_cache_time")
    saslType: str = setting("lmtp_sasl_type")
    sendDummyMailAuth: bool = setting("lmtp_send_dummy_mail_auth")
    sasl: ClientSasl = attrs.field(init=False, default=ClientSasl())


# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.
MAIN = {"smtpClient": SmtpClientSettings, "lmtpClient": LmtpClientSettings}
