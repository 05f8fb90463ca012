"""mta.config.settings.routing - ResolverSettings, RecipientCheckSettings: The one address resolver (trivial-rewrite: address class and transport:nexthop, asked by smtpd and the queue manager, from [main] as Postfix's trivial-rewrite reads main.cf) and smtpd's recipient checks (per listener).

The parameters of this area (mta.config.schema), each read by exactly the
settings class that needs it (a parameter may be read by several areas):

    mydestination, relay_domains, virtual_alias_maps,
    virtual_alias_domains, virtual_mailbox_maps,
    virtual_mailbox_domains, relayhost, local_transport,
    virtual_transport, relay_transport, default_transport,
    transport_maps, alias_maps, recipient_delimiter,
    virtual_alias_recursion_limit, virtual_alias_expansion_limit,
    mynetworks, relay_recipient_maps, local_recipient_maps,
    smtpd_recipient_restrictions, smtpd_reject_unlisted_recipient,
    relay_domains_reject_code, unknown_local_recipient_reject_code,
    unknown_virtual_alias_reject_code,
    unknown_virtual_mailbox_reject_code,
    unknown_relay_recipient_reject_code, non_fqdn_reject_code,
    smtpd_etrn_restrictions, fast_flush_domains

SECURITY
    None: values were parsed and checked by mta.config.types.

CONFIGURATION
    As listed above.
"""

from mta.config.settings import Settings, setting, settingsClass  # noqa: F401

# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.
MAIN = {}
LISTENER = {}
