"""mta.config.schema - every parameter mta implements, declared once.

Names, types and defaults are Postfix's own (postconf(5)), with the
exceptions noted in a parameter's doc.  etc/mta.ini and the README's
parameter table are generated from this list (python -m mta.config.docs) and
a test keeps them in step.

A parameter is added here by the change that implements it; the loader
refuses names that are not here, so a misspelling is an error, not a silent
default.

SECURITY
    None: static declarations.

CONFIGURATION
    This module is the configuration's definition.
"""

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


_P = Parameter

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
    _P("relayhost", T.String(), "",
       "The next-hop destination of non-local mail; empty: deliver directly by MX.", "addresses"),
    # -- queue ------------------------------------------------------------
    _P("queue_directory", T.Path(), "var/spool/mta",
       "The queue's top directory; a relative path is taken from the start-up directory.",
       "queue"),
    _P("message_size_limit", T.Size(), "10240000",
       "The largest message accepted, in bytes, envelope and headers included.", "queue"),
    # -- smtpd -------------------------------------------------------------
    _P("smtpd_banner", T.String(), "$myhostname ESMTP $mail_name",
       "The text after 220 in the greeting.", "smtpd"),
    _P("smtpd_recipient_limit", T.Integer(minimum=1), "1000",
       "The most recipients accepted per message.", "smtpd"),
    _P("smtpd_timeout", T.Time("s"), "300s",
       "How long the server waits for a client command or data before it gives up.", "smtpd"),
    _P("line_length_limit", T.Integer(minimum=80), "2048",
       "The longest line (command or message text) accepted, in bytes.", "smtpd"),
    # -- smtp client ---------------------------------------------------------
    _P("smtp_connect_timeout", T.Time("s"), "30s",
       "How long the SMTP client waits for a TCP connection to complete.", "smtp"),
    # -- logging -------------------------------------------------------------
    _P("maillog_file", T.String(), "",
       "Also write mail-log lines in Postfix's syslog shape to this file "
       "(/dev/stdout allowed); empty: only the twistd log.", "logging"),
)

BY_NAME = {p.name: p for p in PARAMETERS}

# Keys of a [listener:NAME] section that are not [main] parameters.
LISTENER_KEYS = {
    "endpoint": "A Twisted server endpoint string, e.g. tcp:port=25:interface=0.0.0.0.",
}

# The listener used when a configuration defines none: safe anywhere.
DEFAULT_LISTENERS = (("smtp", "tcp:port=2525:interface=127.0.0.1"),)
