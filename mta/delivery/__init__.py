"""mta.delivery - delivery transports: final delivery (virtual, discard, error, retry) and the SMTP/LMTP client.

Each transport is an IDeliveryTransport made by an IDeliveryTransportFactory
plugin (mta/plugins/mta_transports.py) from the settings compiled at load
(mta.config.settings.client: smtpClient, lmtpClient;
mta.config.settings.delivery: virtual, agent).  A transport answers every
recipient of a DeliveryRequest with a RecipientResult; a mailbox or lookup
failure is a "deferred" or "bounced" result, never an exception.

    status.py          enhanced status codes: split "4.7.1 text", classify errno
    virtual.py         virtual(8): mailbox lookup and results (reactor thread)
    mailbox.py         the blocking part of virtual(8): what Maildir and mbox share
    maildir.py         Maildir delivery (tmp/ -> new/)
    mbox.py            mbox delivery (locks, append, truncate on failure)
    discard.py         discard(8)
    error.py           error(8) and retry

    smtp.py            smtp(8)/lmtp(8): hosts in order, sessions, fall-back relays
    connectioncache.py idle connections kept for reuse (scache)
    smtpclient.py      one client session: the state machine
    smtpconnection.py  its connection: replies in, commands and content out, deadlines
    smtpcommands.py    MAIL FROM / RCPT TO and their parameters, EHLO keywords
    smtpresults.py     per-recipient results and their Postfix texts
    smtpreply.py       the reply parser (bounded memory)
    dotstuff.py        the streaming content encoder
    mime7bit.py        8-bit MIME to quoted-printable for servers without 8BITMIME
    nexthop.py         the next-hop syntax of smtp(8) and lmtp(8)
    mx.py              which hosts to try: MX, implicit MX, null MX, loops, limits
    localaddr.py       this host's own addresses, for loop detection
    dns.py             the DNS stub resolver (and getaddrinfo() lookups)
    dnswire.py         one DNS query over UDP/TCP; the name servers
    dnscache.py        the DNS cache and the queries in flight

SECURITY
    See each module.

CONFIGURATION
    See each module.
"""
