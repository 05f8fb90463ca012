"""mta.config.schema - every parameter mta implements, declared once.

Names, types and defaults are Postfix's own (postconf(5)), with the
exceptions noted in a parameter's doc.  etc/mta.ini and the README's
parameter table are generated from this list (python -m mta.config.docs) and
a test keeps them in step.

A parameter is added here by the change that implements it; the loader
refuses names that are not here, so a misspelling is an error, not a silent
default.

SIZE
    Over 700 lines, and still one job: the one table of every parameter
    (name, type, default, one line of doc), which the loader, the docs
    generator and the consumer tests read whole.  It grows by a few lines
    per parameter; splitting it by area would scatter what must be one
    list (a name declared twice, or nowhere, is what this file prevents).

SECURITY
    None: static declarations.

CONFIGURATION
    This module is the configuration's definition.

SIZE
    Past 700 lines because of the parameter count (each a name, type,
    default and one-line doc): one job, in one module on purpose, the one
    schema that the loader, the documentation generator and the consumer
    test read; split by service it would only scatter the list.
"""

import re
import socket

import attrs

from mta.config import types as T


@attrs.frozen
class Parameter:
    name: str
    type: object
    default: object  # str, or a callable returning str (computed defaults)
    doc: str
    group: str = "general"
    # A template expanded where it is used (Postfix's raw parameters, e.g. default_rbl_reply's
    # $rbl_code): its $names are not parameters and are not expanded at load.
    raw: bool = False

    def defaultText(self):
        return self.default() if callable(self.default) else self.default


def _hostname():
    return socket.gethostname().lower().rstrip(".") or "localhost"


def defaultMyhostname():
    """gethostname() if it is fully qualified, else that name plus .localdomain."""
    name = _hostname()
    return name if "." in name else name + ".localdomain"


def defaultMydomain():
    """$myhostname less its first label, or localdomain (Postfix's rule)."""
    name = _hostname()
    return name.split(".", 1)[1] if "." in name else "localdomain"



# smtp_tls_* and their lmtp_tls_* twins (mta.delivery.smtptls), Postfix's names and defaults.
CLIENT_TLS_LEVELS = ("none", "may", "encrypt", "dane", "dane-only", "fingerprint", "verify", "secure")
_GRADES = ("export", "low", "medium", "high", "null")


def _clientTls(prefix, group):
    who = "SMTP" if prefix == "smtp" else "LMTP"
    return (
        Parameter(f"{prefix}_tls_security_level", T.Choice(CLIENT_TLS_LEVELS), "may",
                  f"TLS in the {who} client: none, may (STARTTLS when offered, else plaintext), encrypt "
                  "(TLS required), dane (RFC 7672 DANE with DNSSEC-validated TLSA records, else may; "
                  f"needs {prefix}_dns_support_level = dnssec), dane-only (DANE or a deferral), "
                  "verify/secure (TLS with a verified certificate whose name matches); "
                  "fingerprint (TLS with a certificate or public key whose digest is in "
                  f"{prefix}_tls_fingerprint_cert_match).", group),
        Parameter(f"{prefix}_tls_wrappermode", T.Boolean(), "no",
                  "TLS from the connect, not STARTTLS (port 465 relays); needs encrypt or above in "
                  "Postfix (mta: never plaintext in this mode).", group),
        Parameter(f"{prefix}_tls_CAfile", T.String(), "",
                  "PEM file of the CA certificates that server certificates are verified against; with "
                  f"{prefix}_tls_CApath empty too: the system trust store.", group),
        Parameter(f"{prefix}_tls_CApath", T.String(), "",
                  "Directory of hashed CA certificates (c_rehash) for server certificates.", group),
        Parameter(f"{prefix}_tls_cert_file", T.String(), "",
                  "PEM file of the client certificate (and its chain) to present; empty: none.", group),
        Parameter(f"{prefix}_tls_key_file", T.String(), f"${prefix}_tls_cert_file",
                  f"PEM file of the private key of {prefix}_tls_cert_file.", group),
        Parameter(f"{prefix}_tls_protocols", T.List(), ">=TLSv1",
                  "TLS protocols used with opportunistic TLS (may): >=TLSv1.2, <=TLSv1.3, or names "
                  "to exclude with !.", group),
        Parameter(f"{prefix}_tls_mandatory_protocols", T.List(), ">=TLSv1",
                  "TLS protocols used under encrypt and above (same syntax).", group),
        Parameter(f"{prefix}_tls_ciphers", T.Choice(_GRADES), "medium",
                  "The cipher grade with opportunistic TLS (tls_GRADE_cipherlist).", group),
        Parameter(f"{prefix}_tls_mandatory_ciphers", T.Choice(_GRADES), "medium",
                  "The cipher grade under encrypt and above.", group),
        Parameter(f"{prefix}_tls_exclude_ciphers", T.List(), "",
                  "OpenSSL cipher names or classes removed from the grade.", group),
        Parameter(f"{prefix}_tls_mandatory_exclude_ciphers", T.List(), "",
                  "More ciphers removed under encrypt and above.", group),
        Parameter(f"{prefix}_tls_servername", T.String(), "",
                  "The server name sent in SNI: empty (none), hostname (the MX or relay host name), "
                  "nexthop (the next-hop domain) or a literal name.", group),
        Parameter(f"{prefix}_tls_verify_cert_match", T.List(), "hostname",
                  "Names the server certificate must match under verify: hostname, nexthop, "
                  "dot-nexthop (a subdomain of the next hop) or literal names.", group),
        Parameter(f"{prefix}_tls_secure_cert_match", T.List(), "nexthop, dot-nexthop",
                  "Names the server certificate must match under secure (same values).", group),
        Parameter(f"{prefix}_starttls_timeout", T.Time("s"), "300s",
                  f"How long the {who} client waits for the TLS handshake (after STARTTLS, or at "
                  "connect in wrapper mode).", group),
        Parameter(f"{prefix}_tls_loglevel", T.Integer(), "0",
                  "0: TLS failures only; 1 or more: also a line per handshake (Trusted/Verified/"
                  "Untrusted/Anonymous TLS connection established to ...).", group),
        Parameter(f"{prefix}_tls_note_starttls_offer", T.Boolean(), "no",
                  "Log 'Host offered STARTTLS: [name]' when a server offers STARTTLS and TLS is not "
                  "used (level none).", group),
        Parameter(f"{prefix}_tls_policy_maps", T.Tables(), "",
                  "Per-destination TLS policy tables: keys are the next hop as routed ([host]:port, "
                  "[host], domain, .parent.domain), values a level and attributes (match=, protocols=, "
                  "ciphers=, exclude=, servername=, connection_reuse=).", group),
        Parameter(f"{prefix}_tls_fingerprint_cert_match", T.List(), "",
                  "Under the fingerprint level: the digests (hex, colons allowed) of the server "
                  "certificates or public keys to accept.", group),
        Parameter(f"{prefix}_tls_fingerprint_digest", T.Choice(("md5", "sha1", "sha256", "sha512")), "sha256",
                  "The digest of the fingerprint level and of match= fingerprints in the policy maps.",
                  group),
    )


def _clientTlsReuse(prefix, group):
    """TLS connection reuse and session resumption in the SMTP/LMTP client (mta.delivery.tlssessions)."""
    return (
        Parameter(f"{prefix}_tls_connection_reuse", T.Boolean(), "yes",
                  "Cache TLS connections for reuse (same destination and same TLS policy only); no: TLS "
                  "connections are not cached. Postfix's default is no (mta: yes, no tlsproxy needed).",
                  group),
        Parameter(f"{prefix}_tls_session_cache_timeout", T.Time("s"), "3600s",
                  "How long client TLS sessions are kept for resumption (in memory); 0: no resumption; "
                  "under 2 minutes means 2 minutes; at most 100 days.", group),
        Parameter(f"{prefix}_tls_force_insecure_host_tlsa_lookup", T.Boolean(), "no",
                  "DANE: look up TLSA records even for a host whose address records are not "
                  "DNSSEC-validated (only a secure TLSA RRset is used).", group),
    )


def _clientControls(prefix, group):
    """The rest of smtp(8)'s controls (mta.delivery.smtpquirks) and the older names Postfix still accepts."""
    ehlo = "EHLO" if prefix == "smtp" else "LHLO"
    keywords = "smtp_discard_ehlo_keywords" if prefix == "smtp" else "lmtp_discard_lhlo_keywords"
    maps = "discard_ehlo_keyword_address_maps" if prefix == "smtp" else "discard_lhlo_keyword_address_maps"
    return (
        Parameter(f"{prefix}_{maps}", T.Tables(), "",
                  f"Tables by remote server IP address of {ehlo} keywords to ignore (as {keywords}, which "
                  "a match replaces; silent-discard: no log line).", group),
        Parameter(f"{prefix}_pix_workarounds", T.ChoiceList(("disable_esmtp", "delay_dotcrlf")),
                  "disable_esmtp, delay_dotcrlf",
                  "Workarounds for a CISCO PIX 'smtp fixup' greeting (220 ****...): disable_esmtp (HELO, "
                  "not EHLO), delay_dotcrlf (wait before the final '.').", group),
        Parameter(f"{prefix}_pix_workaround_maps", T.Tables(), "",
                  f"Tables by remote server IP address of PIX workarounds; a match replaces "
                  f"{prefix}_pix_workarounds.", group),
        Parameter(f"{prefix}_pix_workaround_delay_time", T.Time("s"), "10s",
                  "How long delay_dotcrlf waits before sending the final '.' (non-zero).", group),
        Parameter(f"{prefix}_pix_workaround_threshold_time", T.Time("s"), "500s",
                  "How long a message must have been queued before delay_dotcrlf applies; 0: from the "
                  "first attempt.", group),
        Parameter(f"{prefix}_cname_overrides_servername", T.Boolean(), "no",
                  "When a server name is a DNS CNAME, use the CNAME target as the server name for the "
                  "log and the TLS name checks (deprecated in Postfix 3.11).", group),
        Parameter(f"{prefix}_tls_block_early_mail_reply", T.Boolean(), "no",
                  "Defer (4.7.0 'unexpected server message') when, inside TLS, server input is waiting "
                  "before MAIL FROM goes out (CVE-2009-3555 command injection).", group),
        Parameter(f"{prefix}_tls_enforce_peername", T.Boolean(), "yes",
                  f"Obsolete: with {prefix}_enforce_tls = yes, check the server name (verify; no: "
                  "encrypt).", group),
        Parameter(f"{prefix}_use_tls", T.Boolean(), "no",
                  f"Obsolete: {prefix}_tls_security_level = may when that is not set (no: none).", group),
        Parameter(f"{prefix}_enforce_tls", T.Boolean(), "no",
                  f"Obsolete: {prefix}_tls_security_level = verify (encrypt with "
                  f"{prefix}_tls_enforce_peername = no) when that is not set.", group),
        Parameter(f"{prefix}_tls_per_site", T.Tables(), "",
                  "Obsolete per-site TLS tables by next-hop and server name: NONE, MAY, MUST_NOPEERMATCH "
                  f"(encrypt), MUST (verify); use {prefix}_tls_policy_maps.", group),
        Parameter(f"{prefix}_tls_chain_files", T.List(), "",
                  f"PEM files of client keys each followed by its certificate chain; when set, "
                  f"{prefix}_tls_cert_file and the other key and certificate files are ignored.", group),
        Parameter(f"{prefix}_tls_dcert_file", T.String(), "",
                  f"Obsolete: a DSA client certificate (loaded beside {prefix}_tls_cert_file).", group),
        Parameter(f"{prefix}_tls_dkey_file", T.String(), f"${prefix}_tls_dcert_file",
                  f"Obsolete: the key of {prefix}_tls_dcert_file.", group),
        Parameter(f"{prefix}_tls_eccert_file", T.String(), "",
                  f"An ECDSA client certificate (loaded beside {prefix}_tls_cert_file; prefer "
                  f"{prefix}_tls_chain_files).", group),
        Parameter(f"{prefix}_tls_eckey_file", T.String(), f"${prefix}_tls_eccert_file",
                  f"The key of {prefix}_tls_eccert_file.", group),
    )


# smtp_sasl_* and their lmtp_sasl_* twins (mta.delivery.smtpsasl), Postfix's names and defaults.
CLIENT_SASL_SECURITY_OPTIONS = ("noanonymous", "noplaintext", "noactive", "nodictionary", "mutual_auth",
                                "forward_secrecy")


def _clientSasl(prefix, group):
    who = "SMTP" if prefix == "smtp" else "LMTP"
    return (
        Parameter(f"{prefix}_sasl_auth_enable", T.Boolean(), "no",
                  f"SASL authentication (AUTH) in the {who} client, with the credentials of "
                  f"{prefix}_sasl_password_maps.", group),
        Parameter(f"{prefix}_sasl_password_maps", T.Tables(), "",
                  "Tables of user:password per sender (with sender-dependent authentication), remote host "
                  "name or next-hop as written ([host]:port); no entry: no AUTH. For XOAUTH2/OAUTHBEARER the "
                  "password is the bearer token (see README: SASL in the client).", group),
        Parameter(f"{prefix}_sasl_password_result_delimiter", T.String(), ":",
                  f"The character between user name and password in {prefix}_sasl_password_maps results.",
                  group),
        Parameter(f"{prefix}_sender_dependent_authentication", T.Boolean(), "no",
                  f"Look up {prefix}_sasl_password_maps by the sender address (then @domain) first; "
                  "cached connections are then kept per sender.", group),
        Parameter(f"{prefix}_sasl_mechanism_filter", T.List(), "",
                  "If set, only the server's AUTH mechanisms that match: names, !name, /file/name (more "
                  "names) or type:table (the key is the mechanism; any value matches).", group),
        Parameter(f"{prefix}_sasl_security_options", T.ChoiceList(CLIENT_SASL_SECURITY_OPTIONS),
                  "noplaintext, noanonymous",
                  "SASL mechanism properties required without TLS: noplaintext forbids PLAIN, LOGIN, XOAUTH2 "
                  "and OAUTHBEARER; also noanonymous, noactive, nodictionary, mutual_auth, forward_secrecy.",
                  group),
        Parameter(f"{prefix}_sasl_tls_security_options", T.ChoiceList(CLIENT_SASL_SECURITY_OPTIONS),
                  f"${prefix}_sasl_security_options",
                  "The same for sessions under TLS (e.g. noanonymous: plaintext mechanisms only in TLS).", group),
        Parameter(f"{prefix}_sasl_tls_verified_security_options", T.ChoiceList(CLIENT_SASL_SECURITY_OPTIONS),
                  f"${prefix}_sasl_tls_security_options",
                  "The same for sessions under TLS with a verified server certificate.", group),
        Parameter(f"{prefix}_sasl_auth_soft_bounce", T.Boolean(), "yes",
                  "A 5xx reply to AUTH defers the mail (4.x.x) instead of bouncing it.", group),
        Parameter(f"{prefix}_sasl_auth_cache_name", T.String(), "",
                  "A persistent cache of logins refused with 535 (host, user, password hash): "
                  "[proxy:]btree:/path (also hash, lmdb, dbm); mta keeps it in the SQLite file /path.sqlite. "
                  "Empty: none.", group),
        Parameter(f"{prefix}_sasl_auth_cache_time", T.Time("d"), "90d",
                  f"How long a {prefix}_sasl_auth_cache_name entry is used.", group),
        Parameter(f"{prefix}_sasl_type", T.Choice(("cyrus",)), "cyrus",
                  "Accepted for Postfix compatibility: mta's client mechanisms are built in (PLAIN, LOGIN, "
                  "XOAUTH2, OAUTHBEARER).", group),
        Parameter(f"{prefix}_send_dummy_mail_auth", T.Boolean(), "no",
                  "Append AUTH=<> to MAIL FROM in SASL-authenticated sessions.", group),
    )

_P = Parameter

# smtpd_sasl_security_options and smtpd_sasl_tls_security_options (Postfix's xsasl names).
SASL_SECURITY_OPTIONS = ("noanonymous", "noplaintext", "noactive", "nodictionary", "mutual_auth",
                         "forward_secrecy")

PARAMETERS = (
    # -- identity ---------------------------------------------------------
    _P("myhostname", T.String(), defaultMyhostname,
       "The fully-qualified name of this host; used in the banner, HELO and Received headers.",
       "identity"),
    _P("mydomain", T.String(), defaultMydomain,
       "The internet domain of this host ($myhostname less its first label).", "identity"),
    _P("myorigin", T.String(), "$myhostname",
       "The domain that locally posted mail appears to come from.", "identity"),
    _P("mail_name", T.String(), "mta",
       "The mail system name shown in the SMTP banner and Received headers.", "identity"),
    _P("syslog_name", T.String(), "mta",
       "The prefix of program names in mail-log lines (mta/smtpd, mta/qmgr, ...).", "identity"),
    # -- address classes and relay control -------------------------------
    _P("mydestination", T.DomainList(), "$myhostname, localhost.$mydomain, localhost",
       "Domains delivered locally (domain names or type:table).", "addresses"),
    _P("mynetworks", T.Networks(), "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128",
       "Trusted client networks that may relay (CIDR blocks or type:table).", "addresses"),
    _P("relay_domains", T.DomainList(), "",
       "Destination domains (and subdomains) this host relays mail to.", "addresses"),
    _P("virtual_alias_maps", T.Tables(), "",
       "Tables that rewrite recipients (virtual(5)); their domains are also virtual alias "
       "domains by default.", "addresses"),
    _P("virtual_alias_domains", T.DomainList(), "$virtual_alias_maps",
       "Domains whose every address is an alias in $virtual_alias_maps.", "addresses"),
    _P("virtual_mailbox_maps", T.Tables(), "",
       "Tables of the valid addresses (and their mailbox paths) in virtual mailbox domains.",
       "addresses"),
    _P("virtual_mailbox_domains", T.DomainList(), "$virtual_mailbox_maps",
       "Domains delivered by the virtual transport to mailboxes in $virtual_mailbox_maps.",
       "addresses"),
    _P("relay_recipient_maps", T.Tables(), "",
       "Tables of the valid recipients in $relay_domains; empty: accept every one.", "addresses"),
    _P("local_recipient_maps", T.Tables(), "",
       "Tables of the valid local parts in $mydestination; empty: accept every one (Postfix's "
       "default reads the password file, which mta has no use for).", "addresses"),
    _P("recipient_delimiter", T.String(), "",
       "Characters that separate a user name from an address extension (user+ext).",
       "addresses"),
    _P("relayhost", T.String(), "",
       "The next-hop destination of non-local mail; empty: deliver directly by MX.", "addresses"),
    _P("sender_dependent_relayhost_maps", T.Tables(), "",
       "Tables of a relayhost per sender address (then @domain), overriding $relayhost for the relay "
       "and default classes when their transport names no nexthop; DUNNO: use $relayhost.", "addresses"),
    _P("empty_address_relayhost_maps_lookup_key", T.String(), "<>",
       "The sender_dependent_relayhost_maps key for the null sender.", "addresses"),
    # -- queue ------------------------------------------------------------
    _P("queue_directory", T.Path(), "var/spool/mta",
       "The queue's top directory; a relative path is taken from the start-up directory.",
       "queue"),
    _P("queue_sync_method", T.Choice(("syncfs", "fsync")), "syncfs",
       "How new queue files and state records are made durable before the reply: syncfs, one syncfs(2) "
       "of the queue's file system per batch (Linux; a queue on its own file system is best); fsync, "
       "each file and each changed directory fsynced (mta only).", "queue"),
    _P("message_size_limit", T.Size(), "10240000",
       "The largest message accepted, in bytes, envelope and headers included.", "queue"),
    # -- master (processes) -------------------------------------------------
    _P("worker_processes", T.Integer(minimum=0, maximum=64), "0",
       "0: one process does everything; N: N worker processes share the listeners' sockets and run "
       "the SMTP sessions, the master keeps the queue manager, deliveries and the control channel "
       "(mta only).", "master"),
    _P("anvil_store", T.AnvilStore(), "",
       "Where the per-client connection counts and rates (the smtpd_client_*_limit parameters) are "
       "kept: empty, this daemon's memory; redis:HOST:PORT[/DB] or redis:unix:/path[/DB], a Redis "
       "server that several mta machines share (a Redis that is down or slow counts nothing: the "
       "limits are not enforced, mail is not refused; mta only).", "master"),
    _P("anvil_store_password_file", T.String(), "",
       "A file whose first line is the anvil_store Redis server's password (AUTH); empty: none "
       "(mta only).", "master"),
    _P("service_throttle_time", T.Time("s"), "60s",
       "How long the master waits before starting again a worker process that ended before it was "
       "ready.", "master"),
    # -- smtpd -------------------------------------------------------------
    _P("smtpd_banner", T.String(), "$myhostname ESMTP $mail_name",
       "The text after 220 in the greeting.", "smtpd"),
    _P("smtpd_recipient_limit", T.Integer(minimum=1), "1000",
       "The most recipients accepted per message.", "smtpd"),
    _P("smtpd_timeout", T.Time("s"), "300s",
       "The time a client has for each request (with smtpd_per_request_deadline) or between "
       "reads (without); then 421 4.4.2 and a close.", "smtpd"),
    _P("line_length_limit", T.Integer(minimum=80), "2048",
       "A command line of this many bytes or more (CRLF not counted) gets 500 5.5.2, as in "
       "Postfix; a message line longer than this gets the message rejected with 552 (Postfix "
       "would split it).", "smtpd"),
    _P("smtpd_client_restrictions", T.Restrictions(), "",
       "Restrictions on the client's name and address (at connect, or at RCPT with "
       "smtpd_delay_reject); see README: restrictions.", "smtpd"),
    _P("smtpd_helo_restrictions", T.Restrictions(), "",
       "Restrictions on the HELO/EHLO name (at HELO, or at RCPT with smtpd_delay_reject).", "smtpd"),
    _P("smtpd_sender_restrictions", T.Restrictions(), "",
       "Restrictions on the MAIL FROM address (at MAIL, or at RCPT with smtpd_delay_reject).", "smtpd"),
    _P("smtpd_relay_restrictions", T.Restrictions(),
       "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination",
       "Relay control at RCPT TO, evaluated before smtpd_recipient_restrictions (after with "
       "smtpd_relay_before_recipient_restrictions = no); neither list may refuse.", "smtpd"),
    _P("smtpd_recipient_restrictions", T.Restrictions(), "",
       "Restrictions applied to RCPT TO, left to right (see README: restrictions).", "smtpd"),
    _P("smtpd_relay_before_recipient_restrictions", T.Boolean(), "yes",
       "Evaluate smtpd_relay_restrictions before smtpd_recipient_restrictions (Postfix's default "
       "at compatibility_level 3.6 and later).", "smtpd"),
    _P("smtpd_data_restrictions", T.Restrictions(), "",
       "Restrictions applied to the DATA command (and the first BDAT), after the recipients.", "smtpd"),
    _P("smtpd_end_of_data_restrictions", T.Restrictions(), "",
       "Restrictions applied at the end of the message, before it is queued (the size is known).",
       "smtpd"),
    _P("smtpd_restriction_classes", T.List(), "",
       "Names of restriction classes: each is a [main] parameter holding a restriction list, usable "
       "as a restriction name and as an access(5) value.", "smtpd"),
    _P("smtpd_delay_reject", T.Boolean(), "yes",
       "Evaluate the client, HELO and sender restrictions at each RCPT TO (and ETRN), so that "
       "refusals name the sender and recipient; no: at connect, HELO and MAIL.", "smtpd"),
    _P("smtpd_null_access_lookup_key", T.String(), "<>",
       "The key check_sender_access looks up for the null sender.", "smtpd"),
    _P("access_map_reject_code", T.Integer(minimum=400), "554",
       "The reply code of an access(5) REJECT.", "smtpd"),
    _P("access_map_defer_code", T.Integer(minimum=400), "450",
       "The reply code of an access(5) DEFER, DEFER_IF_PERMIT and DEFER_IF_REJECT.", "smtpd"),
    _P("reject_code", T.Integer(minimum=400), "554",
       "The reply code of the reject restriction.", "smtpd"),
    _P("defer_code", T.Integer(minimum=400), "450",
       "The reply code of the defer restriction.", "smtpd"),
    _P("plaintext_reject_code", T.Integer(minimum=400), "450",
       "The reply code of reject_plaintext_session.", "smtpd"),
    _P("allow_untrusted_routing", T.Boolean(), "no",
       "Let clients outside the trusted ones send to addresses with sender-specified routing "
       "(user%domain@, user!host, @route:) in domains mta accepts: Postfix's relay trick guard.", "smtpd"),
    _P("show_user_unknown_table_name", T.Boolean(), "yes",
       "Name the table in \"User unknown in ... table\" replies.", "smtpd"),
    _P("smtpd_client_port_logging", T.Boolean(), "no",
       "Log the client's port too: client=NAME[ADDR]:PORT in the queue-id line.", "smtpd"),
    _P("smtpd_reject_unlisted_sender", T.Boolean(), "no",
       "Reject senders unknown in their domain's table (as reject_unlisted_sender) after the sender "
       "restrictions.", "smtpd"),
    _P("smtpd_reject_unlisted_recipient", T.Boolean(), "yes",
       "Reject recipients unknown in their domain's table even without reject_unlisted_recipient.",
       "smtpd"),
    _P("relay_domains_reject_code", T.Integer(minimum=400), "554",
       "The reply code for a relay attempt refused by reject_unauth_destination.", "smtpd"),
    _P("unknown_local_recipient_reject_code", T.Integer(minimum=400), "550",
       "The reply code for a recipient not in $local_recipient_maps.", "smtpd"),
    _P("unknown_virtual_alias_reject_code", T.Integer(minimum=400), "550",
       "The reply code for a recipient in a virtual alias domain without an alias.", "smtpd"),
    _P("unknown_virtual_mailbox_reject_code", T.Integer(minimum=400), "550",
       "The reply code for a recipient not in $virtual_mailbox_maps.", "smtpd"),
    _P("unknown_relay_recipient_reject_code", T.Integer(minimum=400), "550",
       "The reply code for a recipient not in $relay_recipient_maps.", "smtpd"),
    _P("non_fqdn_reject_code", T.Integer(minimum=400), "504",
       "The reply code of reject_non_fqdn_sender and reject_non_fqdn_recipient.", "smtpd"),
    _P("unknown_client_reject_code", T.Integer(minimum=400), "450",
       "The reply code of reject_unknown_client_hostname and reject_unknown_reverse_client_hostname "
       "when the name is missing or does not resolve back (a temporary DNS error is always 450).",
       "smtpd"),
    _P("smtpd_policy_service_timeout", T.Time("s"), "100s",
       "check_policy_service: the time to connect, send a request and read the answer, per attempt.",
       "smtpd"),
    _P("smtpd_policy_service_max_idle", T.Time("s"), "300s",
       "check_policy_service: an idle connection to a policy server is closed after this.", "smtpd"),
    _P("smtpd_policy_service_max_ttl", T.Time("s"), "1000s",
       "check_policy_service: a connection is not used again after this.", "smtpd"),
    _P("smtpd_policy_service_request_limit", T.Integer(), "0",
       "check_policy_service: requests per connection; 0: no limit.", "smtpd"),
    _P("smtpd_policy_service_try_limit", T.Integer(minimum=1), "2",
       "check_policy_service: attempts per query before the default action.", "smtpd"),
    _P("smtpd_policy_service_retry_delay", T.Time("s"), "1s",
       "check_policy_service: the pause between attempts.", "smtpd"),
    _P("smtpd_policy_service_default_action", T.String(), "451 4.3.5 Server configuration problem",
       "check_policy_service: the action when the server gives none (an access(5) value).", "smtpd"),
    _P("multi_recipient_bounce_reject_code", T.Integer(minimum=400), "550",
       "The reply code of reject_multi_recipient_bounce.", "smtpd"),
    _P("invalid_hostname_reject_code", T.Integer(minimum=400), "501",
       "The reply code of reject_invalid_helo_hostname.", "smtpd"),
    _P("unknown_hostname_reject_code", T.Integer(minimum=400), "450",
       "The reply code of reject_unknown_helo_hostname (no A, AAAA or MX record).", "smtpd"),
    _P("unknown_address_reject_code", T.Integer(minimum=400), "450",
       "The reply code of reject_unknown_sender_domain and reject_unknown_recipient_domain.", "smtpd"),
    _P("reject_tempfail_action", T.Choice(("defer", "defer_if_permit")), "defer_if_permit",
       "After a temporary failure of a reject_unknown_* lookup: defer at once, or only if the "
       "request would otherwise be permitted.", "smtpd"),
    _P("unknown_address_tempfail_action", T.Choice(("defer", "defer_if_permit")), "$reject_tempfail_action",
       "reject_tempfail_action for reject_unknown_sender_domain and reject_unknown_recipient_domain.",
       "smtpd"),
    _P("unknown_helo_hostname_tempfail_action", T.Choice(("defer", "defer_if_permit")),
       "$reject_tempfail_action", "reject_tempfail_action for reject_unknown_helo_hostname.", "smtpd"),
    _P("maps_rbl_reject_code", T.Integer(minimum=400), "554",
       "The reply code ($rbl_code) when a DNS list restriction (reject_rbl_client, "
       "reject_rhsbl_*) matches.", "smtpd"),
    _P("default_rbl_reply", T.String(),
       "$rbl_code Service unavailable; $rbl_class [$rbl_what] blocked using $rbl_domain"
       "${rbl_reason?; $rbl_reason}",
       "The reply template of a DNS list match, expanded at use ($rbl_code, $rbl_class, $rbl_what, "
       "$rbl_domain, $rbl_reason, $client_address, $helo_name, $sender, ...; not at load).",
       "smtpd", raw=True),
    _P("smtpd_expansion_filter", T.String(),
       "\\t\\40!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\\\]^_`"
       "abcdefghijklmnopqrstuvwxyz{|}~",
       "The characters a value may keep when it is put into a DNS list reply template; the others "
       "become '_' (C escapes: \\t, \\40 octal, \\\\).", "smtpd", raw=True),
    _P("rbl_reply_maps", T.Tables(), "",
       "Tables of DNS list domain (domain=pattern, then domain) -> a reply template, as "
       "default_rbl_reply.", "smtpd"),
    _P("smtpd_peername_lookup", T.Boolean(), "yes",
       "Look up the client's name at connect (/etc/hosts, then PTR through the DNS client) and "
       "confirm it with a forward lookup; no: every client is unknown.", "smtpd"),
    _P("smtpd_helo_required", T.Boolean(), "no",
       "Require HELO or EHLO before MAIL.", "smtpd"),
    _P("strict_rfc821_envelopes", T.Boolean(), "no",
       "Require <> around MAIL FROM and RCPT TO addresses.", "smtpd"),
    _P("disable_vrfy_command", T.Boolean(), "no",
       "Refuse VRFY (502 5.5.1) and do not advertise it.", "smtpd"),
    _P("smtpd_noop_commands", T.List(), "",
       "Commands that are answered like NOOP, without any other effect.", "smtpd"),
    _P("smtpd_forbidden_commands", T.List(), "CONNECT, GET, POST",
       "Commands that end the session with 221 at once (proxy and web abuse); a command that "
       "does not start with a letter is always treated so.", "smtpd"),
    _P("smtpd_discard_ehlo_keywords", T.List(), "",
       "EHLO keywords not to advertise (e.g. pipelining, dsn); each EHLO logs 'discarding EHLO "
       "keywords: ...' unless the list holds silent-discard.", "smtpd"),
    _P("smtpd_discard_ehlo_keyword_address_maps", T.Tables(), "",
       "Tables looked up by the client's address: the EHLO keywords not to advertise to that client "
       "(in place of smtpd_discard_ehlo_keywords).", "smtpd"),
    _P("smtpd_reject_footer", T.String(), "",
       "Text appended to every 4xx and 5xx reply as an extra line; a leading \\c keeps it on "
       "the same line.", "smtpd"),
    _P("smtpd_recipient_overshoot_limit", T.Integer(), "1000",
       "Recipients over smtpd_recipient_limit a client may send before each extra one counts "
       "as an error.", "smtpd"),
    _P("queue_minfree", T.Size(), "0",
       "Free space (bytes) the queue file system must keep; MAIL gets 452 4.3.1 when a message "
       "of the declared size would cut into it.", "smtpd"),
    _P("smtpd_client_connection_count_limit", T.Integer(), "50",
       "Simultaneous connections one client address may have; 0: no limit.", "smtpd"),
    _P("smtpd_client_connection_rate_limit", T.Integer(), "0",
       "Connections one client address may make per anvil_rate_time_unit (421 4.7.0 beyond); "
       "0: no limit.", "smtpd"),
    _P("smtpd_client_message_rate_limit", T.Integer(), "0",
       "Message delivery requests (MAIL FROM) one client address may make per "
       "anvil_rate_time_unit (450 4.7.1 beyond); 0: no limit.", "smtpd"),
    _P("smtpd_client_recipient_rate_limit", T.Integer(), "0",
       "Recipient addresses (RCPT TO) one client address may send per anvil_rate_time_unit "
       "(450 4.7.1 beyond); 0: no limit.", "smtpd"),
    _P("smtpd_client_new_tls_session_rate_limit", T.Integer(), "0",
       "New (not resumed) TLS sessions one client address may negotiate per anvil_rate_time_unit "
       "(STARTTLS refused with 454 4.7.0 beyond); 0: no limit.", "smtpd"),
    _P("anvil_rate_time_unit", T.Time("s"), "60s",
       "The time unit over which client rates are counted (the smtpd_client_*_rate_limit "
       "parameters).", "smtpd"),
    _P("smtpd_command_filter", T.Tables(), "",
       "Tables (e.g. pcre:) that rewrite a client's command line before it is parsed: the key is the "
       "line without leading white space and CRLF, the value the command executed instead.", "smtpd"),
    _P("debug_peer_list", T.Networks(), "",
       "Clients (addresses, networks, tables looked up by address) whose SMTP dialog is logged line "
       "by line (\"< client: command\", \"> client: reply\"), as Postfix's verbose smtpd.", "smtpd"),
    _P("debug_peer_level", T.Integer(minimum=1), "2",
       "The verbose logging level for debug_peer_list clients; mta logs the dialog at any level.", "smtpd"),
    _P("smtpd_client_event_limit_exceptions", T.Networks(), "$mynetworks",
       "Clients exempt from the connection count and every client rate limit.", "smtpd"),
    _P("smtpd_error_sleep_time", T.Time("s"), "1s",
       "Delay before each reply once a client has made more than smtpd_soft_error_limit errors.",
       "smtpd"),
    _P("smtpd_soft_error_limit", T.Integer(), "10",
       "Errors a client may make before every reply is delayed by smtpd_error_sleep_time.", "smtpd"),
    _P("smtpd_hard_error_limit", T.Integer(minimum=1), "20",
       "Errors after which the session ends with 421 4.7.0.", "smtpd"),
    _P("smtpd_junk_command_limit", T.Integer(minimum=1), "100",
       "NOOP, VRFY, ETRN and RSET commands a client may send before each one counts as an error.",
       "smtpd"),
    _P("smtpd_forbid_unauth_pipelining", T.Boolean(), "yes",
       "Disconnect a client that sends commands where RFC 2920 forbids pipelining "
       "(554 5.5.0), e.g. message content before the 354 reply.", "smtpd"),
    _P("smtpd_forbid_bare_newline", T.Choice(("reject", "yes", "normalize", "no")), "reject",
       "A bare LF or bare CR: reject and yes answer a command line or DATA/BDAT content holding "
       "one with the reject code and disconnect; normalize takes a bare LF as the end of a "
       "command line and stores it in content as CRLF; no also ends a command line at a bare "
       "LF but keeps bare LF and CR in content as they are. Only CRLF.CRLF ends DATA in every "
       "mode (Postfix's no lets a bare LF end it). BDAT BODY=BINARYMIME content is exempt. "
       "Postfix 3.9's default is normalize, and its yes means normalize.", "smtpd"),
    _P("smtpd_forbid_bare_newline_exclusions", T.Networks(), "$mynetworks",
       "Clients to which smtpd_forbid_bare_newline = reject applies as normalize.", "smtpd"),
    _P("smtpd_forbid_bare_newline_reject_code", T.Integer(minimum=500), "550",
       "The reply code for a bare newline (with 5.5.2).", "smtpd"),
    _P("append_at_myorigin", T.Boolean(), "yes",
       "Append @$myorigin to an address without a domain (envelope, and headers as "
       "local_header_rewrite_clients allows).", "cleanup"),
    _P("append_dot_mydomain", T.Boolean(), "no",
       "Append .$mydomain to a domain without a dot (user@host becomes user@host.$mydomain).",
       "cleanup"),
    _P("local_header_rewrite_clients", T.RewriteClients(), "permit_inet_interfaces",
       "Clients whose message headers are rewritten as local mail's: permit_inet_interfaces, "
       "permit_mynetworks, permit_sasl_authenticated, permit_tls_clientcerts, "
       "permit_tls_all_clientcerts, check_address_map type:table.", "cleanup"),
    _P("remote_header_rewrite_domain", T.String(), "",
       "Domain appended to incomplete header addresses from other clients; empty: leave "
       "their headers as they are.", "cleanup"),
    _P("hopcount_limit", T.Integer(minimum=1), "50",
       "Refuse a message (554 5.4.0) whose Received: headers, ours included, reach this count.",
       "cleanup"),
    _P("message_drop_headers", T.List(), "bcc, content-length, resent-bcc, return-path",
       "Headers removed from every incoming message.", "cleanup"),
    _P("always_add_missing_headers", T.Boolean(), "no",
       "Add a missing Message-Id:, Date: and From: to mail from any client, not only from "
       "this host's own addresses.", "cleanup"),
    _P("header_size_limit", T.Integer(minimum=1024), "102400",
       "The longest single message header kept, in bytes; the excess is discarded.", "cleanup"),
    _P("smtpd_per_request_deadline", T.Boolean(), "yes",
       "smtpd_timeout limits the time spent waiting for the client over a whole request (a "
       "command line with its reply, or the content of a DATA or a BDAT chunk), not each read, "
       "so a client trickling bytes cannot hold a session. Postfix's default is no (yes only "
       "under overload); mta's is yes because a byte a second would otherwise hold a session "
       "for hours.", "smtpd"),
    _P("smtpd_min_data_rate", T.Integer(minimum=1), "500",
       "With smtpd_per_request_deadline, the slowest DATA/BDAT rate in bytes/second: each read "
       "of N content bytes extends the deadline by N/rate seconds, never past smtpd_timeout.",
       "smtpd"),
    _P("smtpd_etrn_restrictions", T.Restrictions(), "",
       "Restrictions applied to the ETRN command's domain, left to right (check_etrn_access "
       "looks it up; empty: permit).", "smtpd"),
    _P("fast_flush_domains", T.DomainList(), "$relay_domains",
       "Destinations (with subdomains) for which ETRN may flush deferred mail; others get 459.",
       "smtpd"),
    _P("postscreen_greet_wait", T.Time("s"), "0s",
       "Delay the greeting this long and treat a client that talks first as an early talker; "
       "0: no delay.", "smtpd"),
    _P("postscreen_greet_action", T.Choice(("ignore", "enforce", "drop")), "ignore",
       "For an early talker: ignore (log only), enforce (refuse its recipients with 550 5.5.1) "
       "or drop (521 and disconnect).", "smtpd"),
    # -- postscreen (mta.smtpd.postscreen) ---------------------------------------
    _P("postscreen_enable", T.Boolean(), "no",
       "Screen each connection of the listener before smtpd sees it, as postscreen(8) does (mta: "
       "Postfix puts postscreen in master.cf instead); set it in [main] or in a [listener:NAME].",
       "postscreen"),
    _P("postscreen_access_list", T.PostscreenAccess(), "permit_mynetworks",
       "The permanent allow/deny list, searched in order: permit_mynetworks, or type:table looked up "
       "with the client address (results permit, reject, dunno).", "postscreen"),
    _P("postscreen_blacklist_action", T.Choice(("ignore", "enforce", "drop")), "ignore",
       "The older name of postscreen_denylist_action.", "postscreen"),
    _P("postscreen_denylist_action", T.Choice(("ignore", "enforce", "drop")), "$postscreen_blacklist_action",
       "For a client that postscreen_access_list rejects: ignore, enforce (the dummy engine, "
       "550 5.3.2 to every RCPT) or drop (521 5.3.2 and disconnect).", "postscreen"),
    _P("postscreen_greet_banner", T.String(), "$smtpd_banner",
       "The teaser sent as 220-text before the pregreet wait; empty: no teaser.", "postscreen"),
    _P("postscreen_greet_ttl", T.Time("s"), "1d",
       "How long a passed pregreet test is remembered in postscreen_cache_map.", "postscreen"),
    _P("postscreen_dnsbl_sites", T.List(), "",
       "DNS lists asked at connect, each domain[=pattern][*weight] (weight 1 by default, "
       "negative for allow lists); the weights of the lists that match are added up.", "postscreen"),
    _P("postscreen_dnsbl_threshold", T.Integer(minimum=-1000000), "1",
       "The DNSBL score at which a client fails the DNSBL test.", "postscreen"),
    _P("postscreen_dnsbl_whitelist_threshold", T.Integer(minimum=-1000000), "0",
       "The older name of postscreen_dnsbl_allowlist_threshold.", "postscreen"),
    _P("postscreen_dnsbl_allowlist_threshold", T.Integer(minimum=-1000000),
       "$postscreen_dnsbl_whitelist_threshold",
       "A negative score at or below this skips the other tests (as if passed); 0: never.", "postscreen"),
    _P("postscreen_dnsbl_action", T.Choice(("ignore", "enforce", "drop")), "ignore",
       "For a client whose DNSBL score reaches the threshold: ignore, enforce (the dummy engine, "
       "550 5.7.1 to every RCPT) or drop (521 5.7.1 and disconnect).", "postscreen"),
    _P("postscreen_dnsbl_reply_map", T.Tables(), "",
       "Tables that map a DNS list domain to the name shown in the reply (to hide a list's secret "
       "domain).", "postscreen"),
    _P("postscreen_dnsbl_ttl", T.Time("s"), "1h",
       "The older upper bound of a DNSBL result's lifetime in the cache (the default of "
       "postscreen_dnsbl_max_ttl).", "postscreen"),
    _P("postscreen_dnsbl_min_ttl", T.Time("s"), "60s",
       "The shortest time a DNSBL result is cached, whatever the DNS reply's TTL.", "postscreen"),
    _P("postscreen_dnsbl_max_ttl", T.Time("s"), "$postscreen_dnsbl_ttl",
       "The longest time a DNSBL result is cached, whatever the DNS reply's TTL.", "postscreen"),
    _P("postscreen_dnsbl_timeout", T.Time("s"), "10s",
       "How long a DNS list lookup may take; a list that has not answered counts as not listed.",
       "postscreen"),
    _P("postscreen_cache_map", T.String(), "",
       "Where passed clients are remembered: empty, in memory (per process); sqlite:/path, or "
       "btree:/path (mta stores it with sqlite3, Postfix with Berkeley DB), a file.", "postscreen"),
    _P("postscreen_cache_retention_time", T.Time("s"), "7d",
       "How long an expired cache entry is kept before the cleanup removes it.", "postscreen"),
    _P("postscreen_cache_cleanup_interval", T.Time("s"), "12h",
       "How often expired entries are removed from postscreen_cache_map; 0: never.", "postscreen"),
    _P("postscreen_command_time_limit", T.Time("s"), "300s",
       "The time limit of each command in the dummy SMTP engine (then 421 4.4.2 and a close).",
       "postscreen"),
    _P("postscreen_command_count_limit", T.Integer(minimum=1), "20",
       "The most commands the dummy SMTP engine answers in a session (then 421 and a close).",
       "postscreen"),
    _P("postscreen_helo_required", T.Boolean(), "$smtpd_helo_required",
       "The dummy SMTP engine wants HELO/EHLO before MAIL and ETRN.", "postscreen"),
    _P("postscreen_disable_vrfy_command", T.Boolean(), "$disable_vrfy_command",
       "The dummy SMTP engine answers VRFY with 502 5.5.1.", "postscreen"),
    _P("postscreen_pipelining_enable", T.Boolean(), "no",
       "The deep pipelining test: a new client meets the dummy engine, which fails it when it sends "
       "a command before the reply to the previous one; it must connect again once passed.",
       "postscreen"),
    _P("postscreen_pipelining_action", T.Choice(("ignore", "enforce", "drop")), "enforce",
       "For a client that fails the pipelining test: ignore, enforce (550 5.5.1 to RCPT) or drop "
       "(521 5.5.1).", "postscreen"),
    _P("postscreen_pipelining_ttl", T.Time("s"), "30d",
       "How long a passed pipelining test is remembered.", "postscreen"),
    _P("postscreen_non_smtp_command_enable", T.Boolean(), "no",
       "The deep non-SMTP command test: the dummy engine fails a client that sends a header line "
       "(Subject: ...) or one of postscreen_forbidden_commands as a command.", "postscreen"),
    _P("postscreen_non_smtp_command_action", T.Choice(("ignore", "enforce", "drop")), "drop",
       "For a client that fails the non-SMTP command test: ignore, enforce (550 5.5.1 to RCPT) or "
       "drop (521 5.7.0).", "postscreen"),
    _P("postscreen_non_smtp_command_ttl", T.Time("s"), "30d",
       "How long a passed non-SMTP command test is remembered.", "postscreen"),
    _P("postscreen_forbidden_commands", T.List(), "$smtpd_forbidden_commands",
       "The commands that fail the non-SMTP command test.", "postscreen"),
    _P("postscreen_bare_newline_enable", T.Boolean(), "no",
       "The deep bare newline test: the dummy engine fails a client whose command line ends in a "
       "bare LF.", "postscreen"),
    _P("postscreen_bare_newline_action", T.Choice(("ignore", "enforce", "drop")), "ignore",
       "For a client that fails the bare newline test: ignore, enforce (550 5.5.1 to RCPT) or drop "
       "(521 5.5.1).", "postscreen"),
    _P("postscreen_bare_newline_ttl", T.Time("s"), "30d",
       "How long a passed bare newline test is remembered.", "postscreen"),
    _P("postscreen_client_connection_count_limit", T.Integer(), "$smtpd_client_connection_count_limit",
       "Connections one client address may have in the screen at once per listener and process "
       "(421 4.7.0 beyond); 0: no limit.", "postscreen"),
    _P("postscreen_pre_queue_limit", T.Integer(minimum=0), "100",
       "The most connections being screened at once per listener and process; then 421 4.3.2 "
       "All screening ports are busy; 0: no limit.", "postscreen"),
    _P("postscreen_post_queue_limit", T.Integer(minimum=0), "100",
       "The most SMTP sessions of passed clients at once per listener and process; then "
       "421 4.3.2 All server ports are busy; 0: no limit.", "postscreen"),
    # -- smtpd TLS (mta.tls, mta.smtpd.starttls) ------------------------------
    _P("smtpd_tls_security_level", T.Choice(("", "none", "may", "encrypt")), "",
       "TLS in the SMTP server: none, may (offer STARTTLS), encrypt (MAIL, VRFY and ETRN need "
       "TLS first: 530 5.7.0); empty: from the obsolete smtpd_enforce_tls and smtpd_use_tls, "
       "i.e. none when neither is set (as Postfix).", "tls"),
    _P("smtpd_tls_wrappermode", T.Boolean(), "no",
       "TLS from the first byte, the banner after the handshake (port 465, submissions).", "tls"),
    _P("smtpd_tls_cert_file", T.String(), "",
       "PEM file of the server's RSA certificate (optionally its key, then its chain).", "tls"),
    _P("smtpd_tls_key_file", T.String(), "$smtpd_tls_cert_file",
       "PEM file of the private key of smtpd_tls_cert_file.", "tls"),
    _P("smtpd_tls_chain_files", T.List(), "",
       "PEM files each with a private key followed by its certificate and chain (several keys, "
       "e.g. RSA and ECDSA); when set, the *_cert_file and *_key_file parameters are ignored.",
       "tls"),
    _P("smtpd_tls_protocols", T.List(), ">=TLSv1",
       "TLS protocols offered with opportunistic TLS (may): >=TLSv1.2, <=TLSv1.3, or a list of "
       "names to exclude with ! (!SSLv2, !SSLv3, !TLSv1, !TLSv1.1).", "tls"),
    _P("smtpd_tls_mandatory_protocols", T.List(), ">=TLSv1",
       "TLS protocols accepted under encrypt (same syntax).", "tls"),
    _P("smtpd_tls_ciphers", T.Choice(("export", "low", "medium", "high", "null")), "medium",
       "The cipher grade with opportunistic TLS (tls_GRADE_cipherlist).", "tls"),
    _P("smtpd_tls_mandatory_ciphers", T.Choice(("export", "low", "medium", "high", "null")), "medium",
       "The cipher grade under encrypt.", "tls"),
    _P("smtpd_tls_exclude_ciphers", T.List(), "",
       "OpenSSL cipher names or classes removed from the grade (e.g. aNULL, RC4, MD5).", "tls"),
    _P("smtpd_tls_mandatory_exclude_ciphers", T.List(), "",
       "More ciphers removed under encrypt.", "tls"),
    _P("tls_high_cipherlist", T.String(), "aNULL:-aNULL:HIGH:@STRENGTH",
       "The OpenSSL cipher list of the high grade (Postfix advises not to change it).", "tls"),
    _P("tls_medium_cipherlist", T.String(), "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH",
       "The OpenSSL cipher list of the medium grade.", "tls"),
    _P("tls_low_cipherlist", T.String(), "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH",
       "The OpenSSL cipher list of the low grade (obsolete: as medium).", "tls"),
    _P("tls_export_cipherlist", T.String(), "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH",
       "The OpenSSL cipher list of the export grade (obsolete: as medium).", "tls"),
    _P("tls_null_cipherlist", T.String(), "eNULL:!aNULL",
       "The OpenSSL cipher list of the null grade (no encryption).", "tls"),
    _P("tls_preempt_cipherlist", T.Boolean(), "no",
       "The server's cipher order wins over the client's (TLS 1.2 and older).", "tls"),
    _P("tls_eecdh_auto_curves", T.List(), "X25519 X448 prime256v1 secp384r1 secp521r1",
       "Elliptic-curve key-exchange groups, most preferred first (unknown names are skipped).",
       "tls"),
    _P("tls_ffdhe_auto_groups", T.List(), "ffdhe2048 ffdhe3072",
       "Finite-field (RFC 7919) key-exchange groups, after the curves.", "tls"),
    _P("smtpd_tls_dh1024_param_file", T.String(), "",
       "PEM file of Diffie-Hellman parameters for TLS 1.2 DHE ciphers; empty: OpenSSL's own.",
       "tls"),
    _P("smtpd_starttls_timeout", T.Time("s"), "300s",
       "The time for the TLS handshake (after STARTTLS, or at connect in wrapper mode); then "
       "the connection is closed.", "tls"),
    _P("smtpd_tls_received_header", T.Boolean(), "no",
       "Put the TLS protocol, cipher and client certificate into the Received: header.", "tls"),
    _P("smtpd_tls_loglevel", T.Integer(), "0",
       "0: TLS failures only; 1: also a summary line per handshake (Anonymous/Untrusted/Trusted "
       "TLS connection established ...) and the client certificate; 2 or more: more detail.",
       "tls"),
    _P("smtpd_tls_session_cache_timeout", T.Time("s"), "3600s",
       "Lifetime of TLS session tickets (resumption); 0: no tickets and no resumption; at most "
       "8640000s.", "tls"),
    _P("smtpd_tls_fingerprint_digest", T.Choice(("md5", "sha1", "sha224", "sha256", "sha384", "sha512")),
       "sha256", "The digest of client certificate fingerprints (relay_clientcerts, "
       "check_ccert_access).", "tls"),
    _P("tls_server_sni_maps", T.Tables(), "",
       "Tables from a server name (SNI; the name, then its parent domains as .domain) to PEM "
       "files of keys and chains, as smtpd_tls_chain_files.", "tls"),
    _P("smtpd_tls_ask_ccert", T.Boolean(), "no",
       "Ask the client for a certificate.", "tls"),
    _P("smtpd_tls_req_ccert", T.Boolean(), "no",
       "Require a trusted client certificate under encrypt (implies smtpd_tls_ask_ccert); a "
       "client without one is disconnected. Ignored with a warning below encrypt.", "tls"),
    _P("smtpd_tls_CAfile", T.String(), "",
       "PEM file of the CA certificates that client certificates are verified against.", "tls"),
    _P("smtpd_tls_CApath", T.String(), "",
       "Directory of hashed CA certificates (c_rehash) for client certificates.", "tls"),
    _P("smtpd_tls_ccert_verifydepth", T.Integer(minimum=1), "9",
       "The longest client certificate chain accepted.", "tls"),
    _P("relay_clientcerts", T.Tables(), "",
       "Tables of client certificate fingerprints (smtpd_tls_fingerprint_digest, XX:XX:...) "
       "that permit_tls_clientcerts lets relay.", "tls"),
    # -- obsolete TLS names, mapped onto the above (a note in the log) --------
    _P("smtpd_use_tls", T.Boolean(), "no",
       "Obsolete: yes means smtpd_tls_security_level = may (when that is empty).", "tls"),
    _P("smtpd_enforce_tls", T.Boolean(), "no",
       "Obsolete: yes means smtpd_tls_security_level = encrypt (when that is empty).", "tls"),
    _P("smtpd_tls_dcert_file", T.String(), "",
       "Obsolete: a DSA certificate file, loaded as another certificate.", "tls"),
    _P("smtpd_tls_dkey_file", T.String(), "$smtpd_tls_dcert_file",
       "Obsolete: the key of smtpd_tls_dcert_file.", "tls"),
    _P("smtpd_tls_eccert_file", T.String(), "",
       "An ECDSA certificate file, loaded beside smtpd_tls_cert_file (smtpd_tls_chain_files is "
       "the newer way).", "tls"),
    _P("smtpd_tls_eckey_file", T.String(), "$smtpd_tls_eccert_file",
       "The key of smtpd_tls_eccert_file.", "tls"),
    _P("smtpd_tls_cipherlist", T.String(), "",
       "Obsolete: an OpenSSL cipher list used instead of the smtpd_tls_ciphers grade.", "tls"),
    _P("smtpd_tls_eecdh_grade", T.Choice(("auto", "strong", "ultra", "none")), "auto",
       "Obsolete: auto uses tls_eecdh_auto_curves, strong prime256v1, ultra secp384r1, none no "
       "elliptic curves.", "tls"),
    _P("smtpd_tls_always_issue_session_ids", T.Boolean(), "yes",
       "Obsolete and ignored: resumption uses session tickets.", "tls"),
    _P("smtpd_tls_session_cache_database", T.String(), "",
       "Obsolete and ignored: mta resumes sessions with tickets only.", "tls"),
    # -- smtpd: SASL AUTH (mta.smtpd.auth, mta.sasl) ------------------------
    _P("smtpd_sasl_auth_enable", T.Boolean(), "no",
       "Offer and accept SMTP AUTH (RFC 4954).", "sasl"),
    _P("smtpd_sasl_type", T.Choice(("dovecot", "builtin")), "dovecot",
       "The SASL backend: dovecot (Dovecot's auth service at smtpd_sasl_path) or builtin (PLAIN "
       "and LOGIN against the password table at smtpd_sasl_path). Postfix's default is cyrus, "
       "which mta does not have.", "sasl"),
    _P("smtpd_sasl_path", T.SaslPath(), "private/auth",
       "dovecot: the auth socket, a path (relative to queue_directory) or inet:host:port; "
       "builtin: the password table, e.g. texthash:/etc/mta/sasl_passwd (mta-config sasl-passwd).",
       "sasl"),
    _P("smtpd_sasl_security_options", T.ChoiceList(SASL_SECURITY_OPTIONS), "noanonymous",
       "Mechanisms not offered before TLS: noanonymous, noplaintext, noactive, nodictionary, "
       "mutual_auth, forward_secrecy.", "sasl"),
    _P("smtpd_sasl_tls_security_options", T.ChoiceList(SASL_SECURITY_OPTIONS), "$smtpd_sasl_security_options",
       "As smtpd_sasl_security_options, for sessions under TLS.", "sasl"),
    _P("smtpd_tls_auth_only", T.Boolean(), "no",
       "Offer and accept AUTH only after STARTTLS (504 5.5.4 before); smtpd_tls_security_level = "
       "encrypt implies it.", "sasl"),
    _P("smtpd_sasl_local_domain", T.String(), "",
       "The realm of user names without @ (builtin: looked up as user@realm; dovecot: not "
       "sent, as in Postfix).", "sasl"),
    _P("smtpd_sasl_exceptions_networks", T.Networks(), "",
       "Clients to which EHLO does not offer AUTH (they may still use it).", "sasl"),
    _P("smtpd_sasl_response_limit", T.Integer(minimum=1), "12288",
       "The longest AUTH initial response or SASL response line (500 5.5.6 beyond).", "sasl"),
    _P("smtpd_sasl_authenticated_header", T.Boolean(), "no",
       "Add (Authenticated sender: USER) to the Received header.", "sasl"),
    _P("smtpd_sasl_service", T.String(), "smtp",
       "The service name given to the SASL backend (Dovecot's service=).", "sasl"),
    _P("smtpd_sender_login_maps", T.Tables(), "",
       "Tables of envelope sender address -> the SASL login names (comma or space separated) that "
       "own it, for reject_*sender_login_mismatch.", "sasl"),
    _P("smtpd_client_auth_rate_limit", T.Integer(), "0",
       "AUTH commands one client address may send per anvil_rate_time_unit (450 4.7.1 beyond); "
       "0: no limit. smtpd_client_event_limit_exceptions are exempt.", "sasl"),
    _P("broken_sasl_auth_clients", T.Boolean(), "no",
       "Also offer AUTH as the obsolete AUTH=MECH... EHLO line (old Outlook clients).", "sasl"),
    # -- smtp client ---------------------------------------------------------
    _P("smtp_connect_timeout", T.Time("s"), "30s",
       "How long the SMTP and LMTP clients wait for a TCP connection to complete.", "smtp"),
    _P("smtp_helo_name", T.String(), "$myhostname",
       "The hostname the SMTP client sends in HELO or EHLO.", "smtp"),
    _P("smtp_helo_timeout", T.Time("s"), "300s",
       "How long the SMTP client waits for the greeting and for the HELO/EHLO reply.", "smtp"),
    _P("smtp_mail_timeout", T.Time("s"), "300s", "How long the SMTP client waits for the reply to MAIL FROM.", "smtp"),
    _P("smtp_rcpt_timeout", T.Time("s"), "300s", "How long the SMTP client waits for the reply to RCPT TO.", "smtp"),
    _P("smtp_data_init_timeout", T.Time("s"), "120s", "How long the SMTP client waits for the reply to DATA.", "smtp"),
    _P("smtp_data_xfer_timeout", T.Time("s"), "180s",
       "How long the SMTP client may go without progress while sending message content.", "smtp"),
    _P("smtp_data_done_timeout", T.Time("s"), "600s",
       "How long the SMTP client waits for the reply to the final '.'.", "smtp"),
    _P("smtp_rset_timeout", T.Time("s"), "20s", "How long the SMTP client waits for the reply to RSET.", "smtp"),
    _P("smtp_quit_timeout", T.Time("s"), "300s", "How long the SMTP client waits for the reply to QUIT.", "smtp"),
    _P("smtp_discard_ehlo_keywords", T.List(), "", "EHLO keywords the SMTP client ignores (e.g. pipelining, dsn).", "smtp"),
    _P("smtp_never_send_ehlo", T.Boolean(), "no", "Never send EHLO; always HELO.", "smtp"),
    _P("smtp_always_send_ehlo", T.Boolean(), "yes", "Always send EHLO; with no, only when the greeting says ESMTP.", "smtp"),
    _P("smtp_skip_5xx_greeting", T.Boolean(), "yes", "Treat a 5xx greeting as temporary and try the next MX host.", "smtp"),
    _P("smtp_skip_quit_response", T.Boolean(), "yes", "Close after sending QUIT without waiting for its reply.", "smtp"),
    _P("smtp_quote_rfc821_envelope", T.Boolean(), "yes", "Quote MAIL FROM/RCPT TO local parts as RFC 5321 requires.", "smtp"),
    _P("smtp_line_length_limit", T.Integer(), "998",
       "Break message lines longer than this by inserting <CR><LF><SPACE>; 0: no limit.", "smtp"),
    _P("smtp_mx_address_limit", T.Integer(), "5", "The most MX host addresses tried per destination; 0: no limit.", "smtp"),
    _P("smtp_mx_session_limit", T.Integer(), "2",
       "The most sessions per destination before giving up or using a fall-back relay; 0: no limit.", "smtp"),
    _P("smtp_randomize_addresses", T.Boolean(), "yes", "Shuffle MX hosts and addresses of equal preference.", "smtp"),
    _P("ignore_mx_lookup_error", T.Boolean(), "no",
       "When an MX lookup fails temporarily, use the domain's own addresses instead of deferring.", "smtp"),
    _P("smtp_defer_if_no_mx_address_found", T.Boolean(), "no",
       "Defer (4.4.4) instead of bouncing (5.4.4) when no MX host has an address.", "smtp"),
    _P("disable_dns_lookups", T.Boolean(), "no",
       "No DNS in the SMTP client: no MX lookups; host addresses with getaddrinfo() (/etc/hosts, NSS).", "smtp"),
    _P("smtp_host_lookup", T.ChoiceList(("dns", "native"), minimum=1), "dns",
       "How the SMTP client finds host addresses: dns and/or native (getaddrinfo()).", "smtp"),
    _P("inet_protocols", T.ChoiceList(("all", "ipv4", "ipv6"), minimum=1), "all", "Address families for outgoing connections: all, ipv4, ipv6.", "smtp"),
    _P("smtp_address_preference", T.Choice(("any", "ipv4", "ipv6")), "any",
       "The address family tried first among addresses of equal preference.", "smtp"),
    _P("smtp_balance_inet_protocols", T.Boolean(), "yes",
       "Keep both IPv4 and IPv6 addresses within smtp_mx_address_limit.", "smtp"),
    _P("smtp_fallback_relay", T.List(), "$fallback_relay",
       "Destinations tried when the primary ones fail (never when this host is an MX for the destination).", "smtp"),
    _P("disable_mime_output_conversion", T.Boolean(), "no",
       "Send 8-bit MIME as it is to servers without 8BITMIME, instead of converting it to "
       "quoted-printable.", "smtp"),
    _P("best_mx_transport", T.String(), "",
       "transport[:nexthop] for mail whose best MX host is this host; empty: bounce 5.4.6 "
       "(mail loops back to myself).", "smtp"),
    _P("smtp_bind_address", T.String(), "", "The local IPv4 address for outgoing SMTP connections; empty: any.", "smtp"),
    _P("smtp_bind_address6", T.String(), "", "The local IPv6 address for outgoing SMTP connections; empty: any.", "smtp"),
    _P("proxy_interfaces", T.List(), "",
       "Proxy/NAT addresses that forward to this host; counted as this host in mail-loop detection.", "smtp"),
    _P("dns_servers", T.List(), "",
       "mta's own (Postfix uses the system resolver): name servers as address, address:port or [v6]:port; "
       "empty: /etc/resolv.conf.", "smtp"),
    _P("smtp_connection_cache_on_demand", T.Boolean(), "yes",
       "Keep SMTP connections open for reuse (mta: for every destination, for at most "
       "smtp_connection_cache_time_limit; Postfix: while a destination has a backlog).", "smtp"),
    _P("smtp_connection_cache_destinations", T.List(), "",
       "Destinations whose connections are always cached, as the nexthops the router gives.", "smtp"),
    _P("smtp_connection_cache_time_limit", T.Time("s"), "2s",
       "How long an idle cached connection is kept before QUIT.", "smtp"),
    _P("smtp_connection_reuse_time_limit", T.Time("s"), "300s",
       "How long after it was made a connection may still be reused.", "smtp"),
    _P("smtp_connection_reuse_count_limit", T.Integer(), "0",
       "How many times a connection may be used; 0: no limit.", "smtp"),
    *_clientTls("smtp", "smtp"),
    _P("smtp_requiretls_policy", T.List(), "enforce",
       "How the SMTP client enforces REQUIRETLS (RFC 8689) for mail received with it: a list of "
       "actions (enforce, opportunistic+starttls, opportunistic, disable) and type:table lookups "
       "keyed by the next-hop domain (then .parent domains) that return one; the first answer wins. "
       "enforce: only verified TLS (verify, secure, fingerprint, DANE, MTA-STS enforce) to a server "
       "that offers REQUIRETLS, else the mail bounces (5.7.10, 5.7.30).", "smtp"),
    *_clientTlsReuse("smtp", "smtp"),
    # -- DNSSEC and DANE in the SMTP client (mta.delivery.dane) --------------------
    _P("smtp_dns_support_level", T.Choice(("", "disabled", "enabled", "dnssec")), "",
       "DNS in the SMTP client: disabled (no MX lookups, native host lookups), enabled, dnssec "
       "(MX, address and TLSA lookups ask for DNSSEC: needed by dane and dane-only); empty: "
       "disable_dns_lookups decides.", "smtp"),
    _P("smtp_tls_dane_insecure_mx_policy", T.Choice(("", "may", "encrypt", "dane")), "",
       "The TLS policy for MX hosts with secure TLSA records found through an insecure MX "
       "lookup under the dane level: may (TLSA ignored), encrypt (TLS required, not "
       "authenticated), dane (TLSA used; success logged as Trusted); empty: Postfix's default, "
       "dane when the level is dane, else may.", "smtp"),
    # -- MTA-STS (RFC 8461) in the SMTP client (mta.delivery.mtasts); mta's own names ----
    _P("smtp_mta_sts_enable", T.Boolean(), "yes",
       "Look up and honour the MTA-STS policies of the domains mail goes to through MX records "
       "(enforce: verified TLS to a matching MX, else deferred); not under level none.", "smtp"),
    _P("smtp_mta_sts_cache_file", T.String(), "",
       "The SQLite file that keeps fetched MTA-STS policies across restarts; empty: mta-sts.sqlite "
       "in the queue directory.", "smtp"),
    _P("smtp_mta_sts_fetch_timeout", T.Time("s"), "10s",
       "How long the HTTPS fetch of an MTA-STS policy may take (connect, TLS, response).", "smtp"),
    _P("smtp_mta_sts_CAfile", T.String(), "",
       "PEM file of the CAs that verify the MTA-STS policy hosts (web PKI); empty: the system "
       "trust store.", "smtp"),
    _P("smtp_mta_sts_retry_time", T.Time("s"), "300s",
       "After a failed MTA-STS policy fetch, how long a domain's policy is not fetched again (the "
       "cached policy, if any, applies meanwhile).", "smtp"),
    # -- TLS-RPT (RFC 8460) in the SMTP client (mta.delivery.tlsrpt) ----------------
    _P("smtp_tlsrpt_enable", T.Boolean(), "no",
       "Record the outcome of every SMTP client TLS attempt per policy domain and send the daily "
       "RFC 8460 report to each domain's _smtp._tls rua (mailto: through the queue, https: by POST); "
       "built in (Postfix 3.10 needs an external tlsrpt daemon).", "smtp"),
    _P("smtp_tlsrpt_skip_reused_handshakes", T.Boolean(), "yes",
       "Do not record handshakes that resumed an earlier TLS session, nor deliveries over a cached "
       "TLS connection (no new information).", "smtp"),
    _P("smtp_tlsrpt_organization_name", T.String(), "$myhostname",
       "mta's own: the report's organization-name and Submitter.", "smtp"),
    _P("smtp_tlsrpt_contact_info", T.String(), "postmaster@$mydomain",
       "mta's own: the report's contact-info.", "smtp"),
    _P("smtp_tlsrpt_sender", T.String(), "noreply-smtp-tls-reporting@$mydomain",
       "mta's own: the envelope sender and From: of mailto: reports; deliveries of mail from it "
       "are not recorded.", "smtp"),
    _P("smtp_tlsrpt_report_interval", T.Time("s"), "1d",
       "mta's own: the reporting period, aligned on UTC midnight (RFC 8460: one UTC day); a "
       "divisor of 1d, at least 1s (shorter ones are for tests).", "smtp"),
    _P("smtp_tlsrpt_store", T.String(), "",
       "mta's own: the SQLite file of the recorded sessions; empty: tlsrpt.sqlite in "
       "$queue_directory.", "smtp"),
    _P("smtp_tlsrpt_http_timeout", T.Time("s"), "30s",
       "mta's own: how long an https: report POST may take (connect and answer).", "smtp"),
    _P("smtp_tlsrpt_max_report_size", T.Size(), "1m",
       "mta's own: the most bytes of a gzipped report; a larger one loses failure details "
       "until it fits.", "smtp"),
    *_clientControls("smtp", "smtp"),
    _P("smtp_skip_4xx_greeting", T.Boolean(), "yes",
       "A 4xx greeting: try the next host (no: defer the delivery at once; Postfix 2.0 and "
       "earlier, later Postfix always skips).", "smtp"),
    _P("fallback_relay", T.List(), "",
       "Obsolete: the default of smtp_fallback_relay (Postfix 2.2 and earlier).", "smtp"),
    *_clientSasl("smtp", "smtp"),
    _P("lmtp_lhlo_name", T.String(), "$myhostname", "The hostname the LMTP client sends in LHLO.", "lmtp"),
    _P("lmtp_lhlo_timeout", T.Time("s"), "300s", "How long the LMTP client waits for the greeting and the LHLO reply.", "lmtp"),
    _P("lmtp_mail_timeout", T.Time("s"), "300s", "How long the LMTP client waits for the reply to MAIL FROM.", "lmtp"),
    _P("lmtp_rcpt_timeout", T.Time("s"), "300s", "How long the LMTP client waits for the reply to RCPT TO.", "lmtp"),
    _P("lmtp_data_init_timeout", T.Time("s"), "120s", "How long the LMTP client waits for the reply to DATA.", "lmtp"),
    _P("lmtp_data_xfer_timeout", T.Time("s"), "180s",
       "How long the LMTP client may go without progress while sending message content.", "lmtp"),
    _P("lmtp_data_done_timeout", T.Time("s"), "600s",
       "How long the LMTP client waits for each reply after the final '.'.", "lmtp"),
    _P("lmtp_rset_timeout", T.Time("s"), "20s", "How long the LMTP client waits for the reply to RSET.", "lmtp"),
    _P("lmtp_quit_timeout", T.Time("s"), "300s", "How long the LMTP client waits for the reply to QUIT.", "lmtp"),
    _P("lmtp_discard_lhlo_keywords", T.List(), "", "LHLO keywords the LMTP client ignores.", "lmtp"),
    _P("lmtp_skip_5xx_greeting", T.Boolean(), "yes", "Treat a 5xx greeting as temporary and try the next host.", "lmtp"),
    _P("lmtp_skip_quit_response", T.Boolean(), "no", "Close after sending QUIT without waiting for its reply.", "lmtp"),
    _P("lmtp_quote_rfc821_envelope", T.Boolean(), "yes", "Quote MAIL FROM/RCPT TO local parts as RFC 5321 requires.", "lmtp"),
    _P("lmtp_line_length_limit", T.Integer(), "998",
       "Break message lines longer than this by inserting <CR><LF><SPACE>; 0: no limit.", "lmtp"),
    _P("lmtp_assume_final", T.Boolean(), "no",
       "When an LMTP server does not announce DSN, report success notices as 'delivered', not 'relayed'.", "lmtp"),
    _P("lmtp_tcp_port", T.String(), "24", "The LMTP client's default port (number or service name).", "lmtp"),
    *_clientTls("lmtp", "lmtp"),
    _P("lmtp_requiretls_policy", T.List(), "opportunistic",
       "The LMTP client's smtp_requiretls_policy: opportunistic sends REQUIRETLS when the server "
       "offers it inside TLS, else delivers as if REQUIRETLS had not been requested.", "lmtp"),
    *_clientTlsReuse("lmtp", "lmtp"),
    _P("lmtp_dns_support_level", T.Choice(("", "disabled", "enabled", "dnssec")), "",
       "The LMTP client's smtp_dns_support_level (LMTP has no MX lookups; dnssec validates host "
       "addresses for DANE).", "lmtp"),
    *_clientControls("lmtp", "lmtp"),
    _P("lmtp_cache_connection", T.Boolean(), "yes",
       "Keep LMTP connections open for reuse (Postfix 2.2 and earlier; no: never cache one).", "lmtp"),
    _P("lmtp_fallback_relay", T.List(), "",
       "LMTP destinations (host or host:port) tried when the primary ones fail.", "lmtp"),
    *_clientSasl("lmtp", "lmtp"),
    # -- routing (trivial-rewrite) --------------------------------------------
    _P("local_transport", T.String(), "error:5.1.1 local delivery is not available",
       "transport:nexthop for $mydestination recipients that no alias rewrites (mta has no "
       "local(8); Postfix's default is local:$myhostname).", "routing"),
    _P("virtual_transport", T.String(), "virtual",
       "transport:nexthop for $virtual_mailbox_domains.", "routing"),
    _P("relay_transport", T.String(), "relay",
       "transport:nexthop for $relay_domains.", "routing"),
    _P("default_transport", T.String(), "smtp",
       "transport:nexthop for every other domain ($relayhost is the default nexthop).", "routing"),
    _P("transport_maps", T.Tables(), "",
       "Tables of transport:nexthop by address, domain, parent domain or *; they override the "
       "transports above.", "routing"),
    _P("alias_maps", T.Tables(), "",
       "aliases(5)-style tables for $mydestination local parts (applied when routing; "
       "Postfix's local(8) does it at delivery).", "routing"),
    _P("virtual_alias_recursion_limit", T.Integer(minimum=1), "1000",
       "The deepest nesting of alias expansion before it counts as a loop.", "routing"),
    _P("virtual_alias_expansion_limit", T.Integer(minimum=1), "1000",
       "The most addresses one recipient may expand to.", "routing"),
    # -- queue manager ----------------------------------------------------------
    _P("minimal_backoff_time", T.Time("s"), "300s",
       "The shortest time between two delivery attempts of a deferred message.", "qmgr"),
    _P("maximal_backoff_time", T.Time("s"), "4000s",
       "The longest time between two delivery attempts of a deferred message.", "qmgr"),
    _P("queue_run_delay", T.Time("s"), "300s",
       "How often the deferred queue is scanned for messages that are due.", "qmgr"),
    _P("maximal_queue_lifetime", T.Time("d"), "5d",
       "How long a message may stay deferred before it is returned as undeliverable.", "qmgr"),
    _P("bounce_queue_lifetime", T.Time("d"), "5d",
       "The same for bounces and other mail from the null sender.", "qmgr"),
    _P("qmgr_message_active_limit", T.Integer(minimum=1), "20000",
       "The most messages in the active queue (in memory) at once.", "qmgr"),
    _P("default_destination_concurrency_limit", T.Integer(minimum=1), "20",
       "Parallel deliveries to one destination; TRANSPORT_destination_concurrency_limit "
       "overrides it per transport.", "qmgr"),
    _P("default_destination_recipient_limit", T.Integer(minimum=1), "50",
       "Recipients per delivery; TRANSPORT_destination_recipient_limit overrides it per "
       "transport.", "qmgr"),
    _P("defer_transports", T.List(), "",
       "Transports whose mail is deferred without an attempt (until a flush).", "qmgr"),
    _P("soft_bounce", T.Boolean(), "no",
       "Defer instead of bounce: a safety net while testing a configuration.", "qmgr"),
    # -- virtual(8) delivery ------------------------------------------------
    _P("virtual_mailbox_base", T.String(), "",
       "A prefix that the virtual transport prepends to all results from $virtual_mailbox_maps; "
       "an absolute path (empty: virtual deliveries defer).", "virtual"),
    _P("virtual_uid_maps", T.Tables(), "",
       "Tables with the numeric user ID that owns each recipient's mailbox files; empty: mta's own "
       "user (Postfix requires them).", "virtual"),
    _P("virtual_gid_maps", T.Tables(), "",
       "Tables with the numeric group ID of each recipient's mailbox files; empty: mta's own group "
       "(Postfix requires them).", "virtual"),
    _P("virtual_minimum_uid", T.Integer(minimum=1), "100",
       "The smallest user ID that the virtual transport accepts from $virtual_uid_maps.", "virtual"),
    _P("virtual_mailbox_limit", T.Size(), "51200000",
       "The largest virtual mbox file or Maildir message file, in bytes; 0: no limit. It may not "
       "be smaller than message_size_limit.", "virtual"),
    _P("virtual_mailbox_lock", T.ChoiceList(("fcntl", "flock", "dotlock")), "fcntl, dotlock",
       "How to lock a virtual mbox file before delivery: fcntl, flock and/or dotlock.", "virtual"),
    _P("deliver_lock_attempts", T.Integer(minimum=1), "20",
       "The most attempts to take an exclusive lock on a mailbox file.", "virtual"),
    _P("deliver_lock_delay", T.Time("s"), "1s",
       "The time between attempts to take an exclusive lock on a mailbox file.", "virtual"),
    _P("stale_lock_time", T.Time("s"), "500s",
       "The age after which a mailbox dot-lock file is stale and removed.", "virtual"),
    _P("strict_mailbox_ownership", T.Boolean(), "yes",
       "Defer delivery when an mbox file is not owned by the recipient's $virtual_uid_maps user.",
       "virtual"),
    _P("virtual_mailbox_follow_symlinks", T.Boolean(), "no",
       "Follow symbolic links below $virtual_mailbox_base (mta's own; Postfix has no such check): "
       "no refuses them with 5.3.5, so a mailbox owner cannot redirect deliveries.", "virtual"),
    # -- REQUIRETLS (RFC 8689) ---------------------------------------------------
    _P("requiretls_enable", T.Boolean(), "yes",
       "REQUIRETLS (RFC 8689): the SMTP server offers it in EHLO inside TLS only and takes MAIL FROM's "
       "REQUIRETLS there; the SMTP/LMTP clients enforce it by smtp_requiretls_policy.", "tls"),
    _P("tls_required_enable", T.Boolean(), "yes",
       "Honour a 'TLS-Required: No' header (RFC 8689 5): the SMTP client delivers such mail at "
       "TLS level may (no certificate checks, plaintext fall-back, no MTA-STS or DANE), unless it "
       "came with REQUIRETLS; bounces of it carry the header.", "tls"),
    _P("requiretls_redact_dsn", T.Boolean(), "yes",
       "A bounce of a message received with REQUIRETLS returns its headers only (as RET=HDRS) and is "
       "itself sent without REQUIRETLS (RFC 8689 5); no: the whole message, sent with REQUIRETLS.",
       "bounce"),
    # -- bounces (bounce(8)) ---------------------------------------------------
    _P("bounce_size_limit", T.Size(), "50000",
       "Most bytes of the original returned in a notice; a larger message is returned as "
       "headers only.", "bounce"),
    _P("notify_classes",
       T.ChoiceList(("bounce", "2bounce", "data", "delay", "policy", "protocol", "resource", "software")),
       "resource, software",
       "Problems reported to the postmaster: bounce (header copies of bounces, transcripts of "
       "sessions with unknown recipients; implies 2bounce), 2bounce (undeliverable bounces), "
       "delay (header copies of delay warnings), and transcripts of SMTP sessions with errors "
       "of the class data (a table that cannot answer), policy (restriction rejects), protocol "
       "(client or server protocol errors), resource (queue storage) or software (internal "
       "errors).", "bounce"),
    _P("bounce_notice_recipient", T.String(), "postmaster",
       "Recipient of postmaster copies of bounces and of transcripts of SMTP sessions that met "
       "the bounce class (an unknown recipient); a bare name gets @$myorigin.", "bounce"),
    _P("2bounce_notice_recipient", T.String(), "postmaster",
       "Recipient of undeliverable bounces (class 2bounce or bounce); a bare name gets @$myorigin.",
       "bounce"),
    _P("delay_notice_recipient", T.String(), "postmaster",
       "Recipient of postmaster copies of delay warnings (class delay); a bare name gets "
       "@$myorigin.", "bounce"),
    _P("error_notice_recipient", T.String(), "postmaster",
       "Recipient of the SMTP server's and client's session transcripts for the classes data, "
       "policy, protocol, resource and software; a bare name gets @$myorigin.", "bounce"),
    _P("delay_warning_time", T.Time("h"), "0h",
       "Warn the sender once when a message has been deferred this long; 0: never.", "bounce"),
    _P("double_bounce_sender", T.String(), "double-bounce",
       "Sender of postmaster notices; mail from it that fails is discarded, never reported.",
       "bounce"),
    # -- address verification (mta.verify; reject_unverified_recipient and _sender)
    _P("address_verify_map", T.String(), "sqlite:$queue_directory/verify_cache",
       "The verify cache: sqlite:/path or btree:/path (mta stores it with sqlite3, Postfix with "
       "Berkeley DB), or empty: in memory only (lost at a restart).", "verify"),
    _P("address_verify_sender", T.String(), "$double_bounce_sender",
       "The sender of address verification probes; <> or empty: the null sender.", "verify"),
    _P("address_verify_sender_ttl", T.Time("s"), "0s",
       "When not 0, the probe sender's local part gets a time stamp that changes this often.",
       "verify"),
    _P("address_verify_positive_expire_time", T.Time("d"), "31d",
       "How long a verified (deliverable) address is remembered.", "verify"),
    _P("address_verify_positive_refresh_time", T.Time("d"), "7d",
       "After this, a verified address is probed again (the old result is used meanwhile).", "verify"),
    _P("address_verify_negative_cache", T.Boolean(), "yes",
       "Remember undeliverable addresses (no: each query of one probes again).", "verify"),
    _P("address_verify_negative_expire_time", T.Time("d"), "3d",
       "How long an undeliverable address is remembered.", "verify"),
    _P("address_verify_negative_refresh_time", T.Time("h"), "3h",
       "After this, an undeliverable address is probed again.", "verify"),
    _P("address_verify_cache_cleanup_interval", T.Time("s"), "12h",
       "How often expired entries are removed from address_verify_map; 0: never.", "verify"),
    _P("address_verify_poll_count", T.Integer(minimum=1), "3",
       "How many times smtpd asks for an address's status while its probe runs (1: once, no wait).",
       "verify"),
    _P("address_verify_poll_delay", T.Time("s"), "3s",
       "The wait between two of those queries.", "verify"),
    _P("address_verify_pending_request_limit", T.Integer(minimum=1), "5000",
       "The most address verification probes in the active queue at once; the queue manager "
       "defers the others (4.3.2 Too many address verification requests).", "verify"),
    _P("unverified_recipient_reject_code", T.Integer(minimum=400), "450",
       "The reply code of reject_unverified_recipient for an undeliverable address.", "verify"),
    _P("unverified_sender_reject_code", T.Integer(minimum=400), "450",
       "The reply code of reject_unverified_sender for an undeliverable address.", "verify"),
    _P("unverified_recipient_defer_code", T.Integer(minimum=400, maximum=499), "450",
       "The reply code of reject_unverified_recipient while the address is being verified, or "
       "after a temporary failure.", "verify"),
    _P("unverified_sender_defer_code", T.Integer(minimum=400, maximum=499), "450",
       "The reply code of reject_unverified_sender while the address is being verified, or after "
       "a temporary failure.", "verify"),
    _P("unverified_recipient_tempfail_action", T.Choice(("defer", "defer_if_permit")),
       "$reject_tempfail_action", "reject_tempfail_action for reject_unverified_recipient.", "verify"),
    _P("unverified_sender_tempfail_action", T.Choice(("defer", "defer_if_permit")),
       "$reject_tempfail_action", "reject_tempfail_action for reject_unverified_sender.", "verify"),
    _P("unverified_recipient_reject_reason", T.String(), "",
       "The text of reject_unverified_recipient's refusals instead of the probe's result.", "verify"),
    _P("unverified_sender_reject_reason", T.String(), "",
       "The text of reject_unverified_sender's refusals instead of the probe's result.", "verify"),
    # -- logging -------------------------------------------------------------
    _P("maillog_file", T.String(), "",
       "Write mail-log lines in Postfix's syslog shape to this file, in batches at most 50 ms "
       "apart (/dev/stdout allowed); informational lines then go only there; empty: the twistd log.",
       "logging"),
)

BY_NAME = {p.name: p for p in PARAMETERS}

# Parameters whose names are made from a transport name, as in Postfix
# (smtp_destination_concurrency_limit, virtual_destination_recipient_limit).
PATTERNS = (
    (re.compile(r"([a-z0-9][a-z0-9_-]*)_destination_concurrency_limit"), T.Integer(minimum=1),
     "$default_destination_concurrency_limit", "Parallel deliveries to one destination of this transport."),
    (re.compile(r"([a-z0-9][a-z0-9_-]*)_destination_recipient_limit"), T.Integer(minimum=1),
     "$default_destination_recipient_limit", "Recipients per delivery by this transport."),
)


def parameter(name):
    """The Parameter called C{name} (declared, or made by a transport-name pattern), or None."""
    found = BY_NAME.get(name)
    if found is not None:
        return found
    for pattern, type, default, doc in PATTERNS:
        if pattern.fullmatch(name):
            return Parameter(name, type, default, doc, "qmgr")
    return None

# Keys of a [listener:NAME] section that are not [main] parameters.
LISTENER_KEYS = {
    "endpoint": "A Twisted server endpoint string, e.g. tcp:port=25:interface=0.0.0.0.",
}

# The listener used when a configuration defines none: safe anywhere.
DEFAULT_LISTENERS = (("smtp", "tcp:port=2525:interface=127.0.0.1"),)
