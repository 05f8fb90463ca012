"""mta.interfaces - every interface that plugins and test fakes implement.

Plugins are found with twisted.plugin.getPlugins(IxxxFactory, mta.plugins) and
chosen by the prefix the configuration names (``texthash:/etc/mta/access``,
``lmtp``, ...).  Interfaces for restrictions, content filters and transports
are declared here as the issues that use them land.

SECURITY
    Implementations receive untrusted keys (addresses and names from the
    network); they must not interpret them beyond a lookup.

CONFIGURATION
    None.
"""

from zope.interface import Attribute, Interface


class ILookupTable(Interface):
    """A Postfix-style lookup table (access(5), virtual(5), transport(5))."""

    spec = Attribute("The table's specification as configured, e.g. 'texthash:/etc/mta/virtual'.")

    def lookup(key):
        """
        Look up C{key} (a str).

        @return: a Deferred that fires with the value (str) or None when the
            key is not in the table.  A table that cannot answer now fails the
            Deferred with L{mta.tables.TableTemporaryError}; callers turn that
            into a 4xx reply, never a 5xx.
        """


class ILookupTableFactory(Interface):
    """A plugin that opens lookup tables of one type."""

    tableType = Attribute("The prefix before the colon in a table spec, e.g. 'texthash'.")
    description = Attribute("One line for documentation.")

    def openTable(name, clock):
        """
        Open the table named C{name} (the text after C{type:}).

        @param clock: an IReactorTime, for tables that poll or expire.
        @return: an L{ILookupTable}.
        @raise mta.tables.TableError: the table cannot be opened (missing
            file, syntax error); the message names the file and line.
        """


class IDeliveryTransport(Interface):
    """A final or relaying delivery agent (virtual, discard, error, smtp, lmtp, ...)."""

    def deliver(request):
        """
        Deliver C{request} (an mta.model.DeliveryRequest).

        @return: a Deferred that fires with a list of
            mta.model.RecipientResult, exactly one per recipient of the
            request, in any order.  An SMTP-level or mailbox failure is a
            result ("deferred" or "bounced"), never an errback; an errback
            means a bug, and the queue manager defers every recipient of
            the request with 4.3.0.
        """

    def stop():
        """Stop: close cached connections; a Deferred that fires when done."""


class IDeliveryTransportFactory(Interface):
    """A plugin that makes transports of one type (master.cf's command)."""

    transportType = Attribute("The name used in transport_maps and *_transport, e.g. 'virtual'.")
    description = Attribute("One line for documentation.")

    def makeTransport(name, settings, context):
        """
        Make the transport called C{name} (usually transportType).

        @param settings: the settings compiled from [main]
            (mta.config.Config.settings, a mta.config.settings.Compiled
            namespace): each transport picks its own object from it, e.g.
            C{settings.smtpClient}, C{settings.lmtpClient},
            C{settings.virtual}, C{settings.agent}.  Every value in it was
            checked when the configuration was loaded.  A plugin whose
            parameters have no settings class of their own reads what it
            needs from these objects; it never gets the parameter scope.
        @param context: an object with C{clock} (the reactor: IReactorTime,
            IReactorThreads), C{tables} (mta.tables.Tables), C{store}
            (the queue store, for transports that submit mail and read
            queue files), C{resolver} (an L{IDNSResolver}),
            C{listenerDescriptions()} ((name, endpoint) pairs),
            C{maillogFor(program)} and C{transports} (the registry:
            C{transports(name)} gives another transport or None).
        @return: an L{IDeliveryTransport}.
        @raise mta.config.ConfigError: the transport cannot be made from
            this configuration (its mail is then deferred).

        Changed in issue 9: the second argument was the mta.config.Scope
        of [main] (C{params[name]}); it is now the compiled settings.
        """


class IHostResolver(Interface):
    """Address lookups for the SMTP client (mta.delivery.dns: Resolver, SystemResolver)."""

    def lookupAddresses(name, families=("ipv4", "ipv6"), preference="any"):
        """
        The addresses of host C{name} (an IP address is its own result).

        @param families: inet_protocols, as a tuple of "ipv4" and "ipv6".
        @param preference: smtp_address_preference: "any", "ipv4" or "ipv6" first.
        @return: a Deferred firing with a list of address texts (empty: the
            name exists without addresses of those families), or failing
            with mta.delivery.dns.DNSError (its C{temporary} says whether
            to defer or bounce).
        """


class IDNSResolver(IHostResolver):
    """The DNS client of the smtp transports (mta.delivery.dns.Resolver)."""

    def lookupMX(domain):
        """
        The MX records of C{domain}.

        @return: a Deferred firing with a list of (preference, exchange)
            in answer order (empty: NODATA; exchange "." for a null MX), or
            failing with mta.delivery.dns.DNSError.
        """
