"""mta.delivery.nexthop - the next-hop syntax of smtp(8) and lmtp(8), as mta.config.nexthop defines it.

The parser lives in the configuration layer (load() checks the fall-back
relays and lmtp_tcp_port with it); this module is its name for the
delivery agents.

SECURITY
    See mta.config.nexthop.

CONFIGURATION
    None.
"""

from mta.config.nexthop import (  # noqa: F401 - this module's API
    LMTP_PORT,
    SERVICES,
    SMTP_PORT,
    Nexthop,
    parseNexthop,
    parseRelayList,
    servicePort,
    validHostname,
)
