"""mta.delivery - delivery transports: final delivery (virtual, discard, error) and, later, SMTP/LMTP.

Each transport is an IDeliveryTransport made by an IDeliveryTransportFactory
plugin (mta/plugins/mta_transports.py).  A transport answers every
recipient of a DeliveryRequest with a RecipientResult; a mailbox or lookup
failure is a "deferred" or "bounced" result, never an exception.

    status.py    enhanced status codes: split "4.7.1 text", classify errno
    virtual.py   virtual(8): mailbox lookup and results (reactor thread)
    mailbox.py   the blocking part of virtual(8): what Maildir and mbox share
    maildir.py   Maildir delivery (tmp/ -> new/)
    mbox.py      mbox delivery (locks, append, truncate on failure)
    discard.py   discard(8)
    error.py     error(8) and retry

SECURITY
    See each module.

CONFIGURATION
    See each module.
"""
