"""mta.config.settings.routing - ResolverSettings, RecipientCheckSettings: The one address resolver (trivial-rewrite: address class and transport:nexthop, asked by smtpd and the queue manager, from [main] as Postfix's trivial-rewrite reads main.cf) and smtpd's recipient checks (per listener).

The parameters of this area (mta.config.schema), each read by exactly the
settings class that needs it (a parameter may be read by several areas):

    mydestination, relay_domains, virtual_alias_maps,
    virtual_alias_domains, virtual_mailbox_maps,
    virtual_mailbox_domains, relayhost, local_transport,
    virtual_transport, relay_transport, default_transport,
    transport_maps, alias_maps, recipient_delimiter,
    virtual_alias_recursion_limit, virtual_alias_expansion_limit,
    sender_dependent_relayhost_maps, empty_address_relayhost_maps_lookup_key,
    mynetworks, relay_recipient_maps, local_recipient_maps,
    smtpd_recipient_restrictions, smtpd_reject_unlisted_recipient,
    relay_domains_reject_code, unknown_local_recipient_reject_code,
    unknown_virtual_alias_reject_code,
    unknown_virtual_mailbox_reject_code,
    unknown_relay_recipient_reject_code, non_fqdn_reject_code,
    unknown_client_reject_code, multi_recipient_bounce_reject_code,
    smtpd_policy_service_timeout, smtpd_policy_service_max_idle,
    smtpd_policy_service_max_ttl, smtpd_policy_service_request_limit,
    smtpd_policy_service_try_limit, smtpd_policy_service_retry_delay,
    smtpd_policy_service_default_action,
    invalid_hostname_reject_code,
    unknown_hostname_reject_code, unknown_address_reject_code,
    unknown_address_tempfail_action, unknown_helo_hostname_tempfail_action,
    maps_rbl_reject_code, default_rbl_reply,
    rbl_reply_maps, smtpd_etrn_restrictions, fast_flush_domains

ResolverSettings (``config.settings.resolver``) is built from [main] only:
Postfix's trivial-rewrite(8) reads main.cf, never a master.cf -o, so one
resolver (mta.routing.AddressResolver) answers for the queue manager and
for every listener alike, and a listener's override of mydestination,
relay_domains, virtual_*_domains or the transports does not change an
address's class (as in Postfix).  RecipientCheckSettings
(``listener.settings.recipients``) is built per listener: what smtpd(8)
itself reads, and what a listener may override (mynetworks, the recipient
tables, the restriction lists, the reply codes), as smtpd -o does.

SECURITY
    None: values were parsed and checked by mta.config.types.

CONFIGURATION
    As listed above.
"""

from mta.config.settings import Settings, setting, settingsClass
from mta.config.types import parseRestrictions

__all__ = ["ADDRESS_CLASSES", "RecipientCheckSettings", "ResolverSettings", "splitTransport"]

# trivial-rewrite's address classes (Postfix's RESOLVE_CLASS_*), in the order they are tried.
ADDRESS_CLASSES = ("local", "alias", "virtual", "relay", "default")


def splitTransport(value):
    """'smtp:[host]:25' -> ('smtp', '[host]:25'); 'error:text' -> ('error', 'text')."""
    transport, _, nexthop = value.strip().partition(":")
    return transport.strip(), nexthop.strip()


@settingsClass
class ResolverSettings(Settings):
    """
    What trivial-rewrite reads (mta.routing.AddressResolver, Router): the
    domain lists of the address classes, their transports, the relayhost,
    transport_maps, and the alias expansion's tables and limits.  Domain
    lists and tables are as parsed (names and TableSpecs); the tables are
    opened by the services with the Tables registry.
    """

    hostname: str = setting("myhostname")  # the local class's nexthop; the domain of a bare alias target
    localDomains: tuple = setting("mydestination")  # class local (an address without a domain too)
    aliasDomains: tuple = setting("virtual_alias_domains")  # class alias: every address must be rewritten
    mailboxDomains: tuple = setting("virtual_mailbox_domains")  # class virtual
    relayDomains: tuple = setting("relay_domains")  # class relay (subdomains match too)
    localTransport: tuple = setting("local_transport", splitTransport)  # (transport, nexthop) of class local
    virtualTransport: tuple = setting("virtual_transport", splitTransport)  # of class virtual
    relayTransport: tuple = setting("relay_transport", splitTransport)  # of class relay
    defaultTransport: tuple = setting("default_transport", splitTransport)  # of class default
    relayhost: str = setting("relayhost")  # the nexthop of classes relay and default when theirs is empty
    transportMaps: tuple = setting("transport_maps")  # per-address/domain overrides of transport:nexthop
    virtualAliasMaps: tuple = setting("virtual_alias_maps")  # rewrite any address (the router's expansion)
    aliasMaps: tuple = setting("alias_maps")  # rewrite local parts of class local (aliases(5))
    delimiter: str = setting("recipient_delimiter")  # the characters that start an address extension
    recursionLimit: int = setting("virtual_alias_recursion_limit")  # deepest alias nesting (then 5.4.6)
    expansionLimit: int = setting("virtual_alias_expansion_limit")  # most addresses from one (then 5.3.0)
    # sender_dependent_relayhost_maps: a relayhost per sender (mta.routing.AddressResolver.resolve)
    senderRelayhostMaps: tuple = setting("sender_dependent_relayhost_maps")
    nullSenderRelayKey: str = setting("empty_address_relayhost_maps_lookup_key")

    def transport(self, addressClass):
        """The configured (transport, nexthop) of C{addressClass} (local, virtual, relay or default)."""
        return {
            "local": self.localTransport,
            "virtual": self.virtualTransport,
            "relay": self.relayTransport,
            "default": self.defaultTransport,
        }[addressClass]

    def transportNames(self):
        """
        The transports the address classes name, sorted, without empty names;
        virtual_transport only when there are virtual_mailbox_domains (no mail
        reaches it otherwise, as virtualIsUsed in mta.config.settings.delivery
        says).
        """
        classes = [self.localTransport, self.relayTransport, self.defaultTransport]
        if self.mailboxDomains:
            classes.append(self.virtualTransport)
        names = {t for t, _ in classes}
        return sorted(n for n in names if n)


@settingsClass
class RecipientCheckSettings(Settings):
    """
    What smtpd's recipient checks read (mta.smtpd.policy.RecipientPolicy),
    per listener; the address class of a recipient comes from the shared
    resolver (ResolverSettings), not from here.  The restriction lists are
    parsed at load into ((name, TableSpec or None), ...).
    """

    @classmethod
    def extraParameters(cls):
        # Read through the defaults of unknown_address_tempfail_action and
        # unknown_helo_hostname_tempfail_action ($reject_tempfail_action).
        return ("reject_tempfail_action",)

    mynetworks: tuple = setting("mynetworks")  # permit_mynetworks: networks and tables
    virtualAliasMaps: tuple = setting("virtual_alias_maps")  # the known addresses of alias and virtual classes
    virtualMailboxMaps: tuple = setting("virtual_mailbox_maps")  # the known addresses of class virtual
    relayRecipientMaps: tuple = setting("relay_recipient_maps")  # known addresses of class relay (empty: all)
    localRecipientMaps: tuple = setting("local_recipient_maps")  # known local parts of class local (empty: all)
    delimiter: str = setting("recipient_delimiter")  # for the keys of those lookups (user+ext -> user)
    rejectUnlisted: bool = setting("smtpd_reject_unlisted_recipient")  # check them after the restrictions
    relayRejectCode: int = setting("relay_domains_reject_code")  # reject_unauth_destination
    nonFqdnRejectCode: int = setting("non_fqdn_reject_code")  # reject_non_fqdn_sender/recipient
    unknownClientCode: int = setting("unknown_client_reject_code")  # reject_unknown_*client_hostname
    multiRecipientBounceCode: int = setting("multi_recipient_bounce_reject_code")  # reject_multi_recipient_bounce
    # check_policy_service (mta.smtpd.policyclient)
    policyTimeout: float = setting("smtpd_policy_service_timeout")
    policyMaxIdle: float = setting("smtpd_policy_service_max_idle")
    policyMaxTtl: float = setting("smtpd_policy_service_max_ttl")
    policyRequestLimit: int = setting("smtpd_policy_service_request_limit")
    policyTryLimit: int = setting("smtpd_policy_service_try_limit")
    policyRetryDelay: float = setting("smtpd_policy_service_retry_delay")
    policyDefaultAction: str = setting("smtpd_policy_service_default_action")
    invalidHostnameCode: int = setting("invalid_hostname_reject_code")  # reject_invalid_helo_hostname
    unknownHostnameCode: int = setting("unknown_hostname_reject_code")  # reject_unknown_helo_hostname
    unknownAddressCode: int = setting("unknown_address_reject_code")  # reject_unknown_*_domain
    unknownAddressTempfail: str = setting("unknown_address_tempfail_action")  # defer or defer_if_permit
    unknownHeloTempfail: str = setting("unknown_helo_hostname_tempfail_action")
    rblCode: int = setting("maps_rbl_reject_code")  # $rbl_code of the DNS list replies (mta.smtpd.dnsxl)
    defaultRblReply: str = setting("default_rbl_reply")  # the reply template of a listed client
    rblReplyMaps: tuple = setting("rbl_reply_maps")  # DNS list domain -> a reply template
    unknownLocalCode: int = setting("unknown_local_recipient_reject_code")
    unknownAliasCode: int = setting("unknown_virtual_alias_reject_code")
    unknownMailboxCode: int = setting("unknown_virtual_mailbox_reject_code")
    unknownRelayCode: int = setting("unknown_relay_recipient_reject_code")
    recipientRestrictions: tuple = setting("smtpd_recipient_restrictions", parseRestrictions)  # RCPT TO
    etrnRestrictions: tuple = setting("smtpd_etrn_restrictions", parseRestrictions)  # ETRN's domain
    fastFlushDomains: tuple = setting("fast_flush_domains")  # what ETRN may flush (subdomains match)
    relayClientcerts: tuple = setting("relay_clientcerts")  # permit_tls_clientcerts: fingerprint tables
    senderLoginMaps: tuple = setting("smtpd_sender_login_maps")  # sender address -> its SASL login names

    def unknownCode(self, addressClass):
        """The reply code for a recipient unknown in C{addressClass} (local, alias, virtual, relay)."""
        return {
            "local": self.unknownLocalCode,
            "alias": self.unknownAliasCode,
            "virtual": self.unknownMailboxCode,
            "relay": self.unknownRelayCode,
        }[addressClass]


# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.
MAIN = {"resolver": ResolverSettings}
LISTENER = {"recipients": RecipientCheckSettings}
