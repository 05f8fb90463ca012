"""mta.config.settings.cleanup - CleanupSettings, RewriteSettings, SendmailSettings: The one cleanup (mta.cleanup: Received, header cleanup, address rewriting, the envelope, the commit) for smtpd (per listener), pickup and notices ([main]); local submission (mta-sendmail).

The parameters of this area (mta.config.schema), each read by exactly the
settings class that needs it (a parameter may be read by several areas):

    hopcount_limit, message_drop_headers, header_size_limit,
    always_add_missing_headers, myorigin, mydomain, append_at_myorigin,
    append_dot_mydomain, local_header_rewrite_clients,
    remote_header_rewrite_domain, mail_name, myhostname,
    message_size_limit, queue_directory

    RewriteSettings     trivial-rewrite's rewrite step (mta.rewrite): the
                        local and remote contexts, and which clients'
                        headers are rewritten as local mail's
    CleanupSettings     cleanup(8) (mta.cleanup): the Received header, the
                        header cleanup, and the RewriteSettings of the same
                        scope (.rewrite)
    SendmailSettings    mta-sendmail (mta.cli.sendmail): where maildrop/ is,
                        @$myorigin for bare names, the size limit

    Where they are built: MAIN (from [main]) for pickup, the notices, the
    SMTP client's transcripts and mta-sendmail; LISTENER (each listener's
    scope) for the server's own cleanup, as master.cf's -o may change
    smtpd's.

    A domain that myorigin, mydomain or remote_header_rewrite_domain gives
    to the rewriting must be a domain name (no white space, control
    character or address special: a typo would otherwise break every header
    it touches).  RewriteSettings decides that once, here: one that is not
    is left out (RewriteSettings.refused names it), and mta.rewrite logs an
    error when it builds its contexts, as before; the configuration still
    loads, because the same parameters name the host elsewhere (myorigin
    qualifies notice recipients) where Postfix takes any text.

SECURITY
    None: values were parsed and checked by mta.config.types.

CONFIGURATION
    As listed above.
"""

import re

import attrs

from mta.config.settings import Settings, setting, settingsClass

# A domain to append: no white space, control character or address special in a label.
_NOT_IN_LABEL = r"\s()<>@,;:\\\".\[\]%!|\x00-\x1f\x7f"
_DOMAIN = re.compile(rf"[^{_NOT_IN_LABEL}]+(?:\.[^{_NOT_IN_LABEL}]+)*\Z")


def _lowerSet(items):
    return frozenset(item.lower() for item in items)


def usableDomain(value):
    """C{value} if it may be appended to addresses (empty, or a domain name), else None."""
    return value if not value or _DOMAIN.match(value) else None


@settingsClass
class RewriteSettings(Settings):
    """
    Address rewriting (mta.rewrite.AddressRewriting): C{localOrigin},
    C{localDomain}, C{remoteOrigin}, C{remoteDomain} (properties) are what the local and
    remote contexts append ("" for not done), C{remote} says whether there
    is a remote context at all, C{refused} the (parameter, value) pairs left
    out because they are not domain names; C{localHeaderRewriteClients} the
    names and TableSpecs of local_header_rewrite_clients.
    """

    appendAtMyorigin: bool = setting("append_at_myorigin")  # root -> root@$myorigin
    appendDotMydomain: bool = setting("append_dot_mydomain")  # user@host -> user@host.$mydomain
    myorigin: str = setting("myorigin", str.strip)  # the local context's origin
    mydomain: str = setting("mydomain", str.strip)  # the local context's domain
    remoteHeaderRewriteDomain: str = setting("remote_header_rewrite_domain", str.strip)  # empty: no remote context
    # Which clients' headers are rewritten as local mail's (smtpd, at MAIL FROM): lower-case
    # permit_* names and TableSpecs (check_address_map), as mta.config.types.RewriteClients gives them.
    localHeaderRewriteClients: tuple = setting("local_header_rewrite_clients")

    def _domain(self, value):
        return usableDomain(value) or ""

    @property
    def localOrigin(self):
        return self._domain(self.myorigin) if self.appendAtMyorigin else ""

    @property
    def localDomain(self):
        return self._domain(self.mydomain) if self.appendDotMydomain else ""

    @property
    def remote(self):
        return bool(self.remoteHeaderRewriteDomain)

    @property
    def remoteOrigin(self):
        return self._domain(self.remoteHeaderRewriteDomain) if self.appendAtMyorigin else ""

    @property
    def remoteDomain(self):
        return self._domain(self.remoteHeaderRewriteDomain) if self.appendDotMydomain else ""

    @property
    def refused(self):
        """The (parameter, value) pairs that would be appended but are not domain names."""
        checked = []
        if self.appendAtMyorigin:
            checked.append(("myorigin", self.myorigin))
        if self.appendDotMydomain:
            checked.append(("mydomain", self.mydomain))
        if self.remote:
            checked.append(("remote_header_rewrite_domain", self.remoteHeaderRewriteDomain))
        return tuple((name, value) for name, value in checked if usableDomain(value) is None)


@settingsClass
class CleanupSettings(Settings):
    """
    cleanup(8) (mta.cleanup.Cleanup): the Received header's names, the
    header cleanup's limits, and C{rewrite}, the RewriteSettings of the same
    scope (the header rewriting contexts and the envelope's completion).
    """

    hostname: str = setting("myhostname")  # Received: ... by $myhostname; Message-Id's domain
    mailName: str = setting("mail_name")  # Received: ... ($mail_name ...)
    hopLimit: int = setting("hopcount_limit")  # Received: headers (ours included) that make a loop
    dropHeaders: frozenset = setting("message_drop_headers", _lowerSet)  # header names removed, lower case
    alwaysAddMissing: bool = setting("always_add_missing_headers")  # Message-Id/Date/From for every client
    headerSizeLimit: int = setting("header_size_limit")  # the most bytes kept of one logical header
    rewrite: RewriteSettings = attrs.field(default=None)  # built from the same scope by build()

    @classmethod
    def extraParameters(cls):
        return RewriteSettings.parameters()

    @classmethod
    def build(cls, scope):
        return attrs.evolve(super().build(scope), rewrite=RewriteSettings.build(scope))


@settingsClass
class SendmailSettings(Settings):
    """
    mta-sendmail (mta.cli.sendmail): C{queueDirectory} (absolute: the
    loader resolved it), C{queueDirectoryAsWritten} (after $name expansion,
    before that: whether it was relative), C{myorigin}, C{messageSizeLimit}.
    """

    queueDirectory: str = setting("queue_directory")  # maildrop/ is in it; never created
    myorigin: str = setting("myorigin")  # @$myorigin for bare names and the login name
    messageSizeLimit: int = setting("message_size_limit")  # 0: no limit
    queueDirectoryAsWritten: str = attrs.field(default="")  # for the messages about a missing queue

    @classmethod
    def build(cls, scope):
        return attrs.evolve(super().build(scope), queueDirectoryAsWritten=scope.expanded("queue_directory"))


# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.
MAIN = {"cleanup": CleanupSettings, "rewrite": RewriteSettings, "sendmail": SendmailSettings}
LISTENER = {"cleanup": CleanupSettings, "rewrite": RewriteSettings}
