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
    smtpd_reject_unlisted_sender, allow_untrusted_routing,
    show_user_unknown_table_name,
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
    maps_rbl_reject_code, default_rbl_reply, smtpd_expansion_filter,
    rbl_reply_maps, smtpd_etrn_restrictions, fast_flush_domains,
    smtpd_client_restrictions, smtpd_helo_restrictions,
    smtpd_sender_restrictions, smtpd_relay_restrictions,
    smtpd_relay_before_recipient_restrictions, smtpd_data_restrictions,
    smtpd_end_of_data_restrictions, smtpd_delay_reject,
    smtpd_restriction_classes (and the class parameters it names),
    smtpd_null_access_lookup_key, access_map_reject_code,
    access_map_defer_code, reject_code, defer_code, plaintext_reject_code

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

import attrs

from mta.config.errors import ConfigError
from mta.config.schema import parameter
from mta.config.settings import Settings, setting, settingsClass
from mta.config.types import (RESTRICTION_NAMES, STAGE_ACCESS, expansionFilter, parseRestrictions,
                              restrictionNames, splitList, unknownRestriction)

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
    rejectUnlistedSender: bool = setting("smtpd_reject_unlisted_sender")  # the same for MAIL FROM
    allowUntrustedRouting: bool = setting("allow_untrusted_routing")  # routed addresses may be destinations
    showUnknownTable: bool = setting("show_user_unknown_table_name")  # "User unknown in ... table"
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
    expansionFilter: frozenset = setting("smtpd_expansion_filter", expansionFilter)  # what template values keep
    unknownLocalCode: int = setting("unknown_local_recipient_reject_code")
    unknownAliasCode: int = setting("unknown_virtual_alias_reject_code")
    unknownMailboxCode: int = setting("unknown_virtual_mailbox_reject_code")
    unknownRelayCode: int = setting("unknown_relay_recipient_reject_code")
    # The restriction stages (mta.smtpd.policy): client, HELO, sender, recipient and relay, DATA, end of data, ETRN
    clientRestrictions: tuple = setting("smtpd_client_restrictions", parseRestrictions)
    heloRestrictions: tuple = setting("smtpd_helo_restrictions", parseRestrictions)
    senderRestrictions: tuple = setting("smtpd_sender_restrictions", parseRestrictions)
    relayRestrictions: tuple = setting("smtpd_relay_restrictions", parseRestrictions)
    recipientRestrictions: tuple = setting("smtpd_recipient_restrictions", parseRestrictions)  # RCPT TO
    relayFirst: bool = setting("smtpd_relay_before_recipient_restrictions")
    dataRestrictions: tuple = setting("smtpd_data_restrictions", parseRestrictions)
    endOfDataRestrictions: tuple = setting("smtpd_end_of_data_restrictions", parseRestrictions)
    etrnRestrictions: tuple = setting("smtpd_etrn_restrictions", parseRestrictions)  # ETRN's domain
    delayReject: bool = setting("smtpd_delay_reject")  # client/HELO/sender lists at RCPT
    restrictionClassNames: tuple = setting("smtpd_restriction_classes")
    # name -> its parsed list (build() reads the class parameters themselves)
    restrictionClasses: dict = attrs.field(factory=dict)
    nullAccessKey: str = setting("smtpd_null_access_lookup_key")  # check_sender_access for <>
    accessRejectCode: int = setting("access_map_reject_code")
    accessDeferCode: int = setting("access_map_defer_code")
    rejectCode: int = setting("reject_code")  # the reject restriction
    deferCode: int = setting("defer_code")  # the defer restriction
    plaintextRejectCode: int = setting("plaintext_reject_code")  # reject_plaintext_session
    fastFlushDomains: tuple = setting("fast_flush_domains")  # what ETRN may flush (subdomains match)
    relayClientcerts: tuple = setting("relay_clientcerts")  # permit_tls_clientcerts: fingerprint tables
    senderLoginMaps: tuple = setting("smtpd_sender_login_maps")  # sender address -> its SASL login names

    # Each list parameter and whether a bare type:table may stand in it (Postfix: not in DATA, end of data).
    LISTS = (("smtpd_client_restrictions", "clientRestrictions", True),
             ("smtpd_helo_restrictions", "heloRestrictions", True),
             ("smtpd_sender_restrictions", "senderRestrictions", True),
             ("smtpd_relay_restrictions", "relayRestrictions", True),
             ("smtpd_recipient_restrictions", "recipientRestrictions", True),
             ("smtpd_data_restrictions", "dataRestrictions", False),
             ("smtpd_end_of_data_restrictions", "endOfDataRestrictions", False),
             ("smtpd_etrn_restrictions", "etrnRestrictions", True))

    @classmethod
    def build(cls, scope):
        """The fields, then the restriction classes: each name must be a restriction or a defined class."""
        result = super().build(scope)
        classes = {}
        names = [name.lower() for name in result.restrictionClassNames]
        for name in names:
            if name in RESTRICTION_NAMES or parameter(name) is not None:
                raise ConfigError(f"{scope.where('smtpd_restriction_classes')}: restriction class {name!r} "
                                  f"has the name of a restriction or a parameter")
            entry = scope.restrictionClass(name)
            if entry is None:
                raise ConfigError(f"{scope.where('smtpd_restriction_classes')}: restriction class {name!r} "
                                  f"needs a definition ({name} = restrictions, in [main])")
            try:
                classes[name] = parseRestrictions(splitList(scope.expandedClass(name)))
            except ValueError as e:
                raise ConfigError(f"{entry.location}: {e}") from None
        for name, pairs in classes.items():
            for unknown in restrictionNames(pairs):
                if unknown not in classes:
                    raise ConfigError(f"{scope.restrictionClass(name).location}: {unknownRestriction(unknown)}")
        for parameterName, field, bareTable in cls.LISTS:
            pairs = getattr(result, field)
            for unknown in restrictionNames(pairs):
                if unknown not in classes:
                    raise ConfigError(f"{scope.where(parameterName)}: {unknownRestriction(unknown)}")
            if not bareTable and any(name == STAGE_ACCESS for name, _ in pairs):
                raise ConfigError(f"{scope.where(parameterName)}: a lookup table here needs a check_*_access "
                                  f"before it (there is no default one in this stage)")
        return attrs.evolve(result, restrictionClasses=classes)

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
