"""mta.interfaces - every interface that plugins and test fakes implement.

IQueueStore and IQueueMessage are the queue's entrance as the one cleanup
(mta.cleanup) and the SMTP server use it: mta.queue.store.QueueStore and
IncomingMessage implement them on disk, mta.testing.FakeQueueStore and
FakeMessage in memory, and one contract test suite
(tests/unit/test_queue_contract.py) runs against both.  IWorkerPool is the
part of a Twisted ThreadPool that the store's deferToThreadPool uses
(mta.testing.SyncPool runs the work at once).

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

    # Optional attribute (verifyObject does not require it):
    #
    # pattern: False when absent.  True for a table whose keys are patterns applied to the whole
    #     string looked up (regexp:, pcre:, cidr:; Postfix's DICT_FLAG_PATTERN): callers that try
    #     partial keys (parent domains, networks, user@, @domain, user without extension) ask such
    #     a table only for the whole string, as Postfix does.

    def lookup(key):
        """
        Look up C{key} (a str).

        @return: a Deferred that fires with the value (str) or None when the
            key is not in the table.  A table that cannot answer now fails the
            Deferred with L{mta.tables.TableTemporaryError}; callers turn that
            into a 4xx reply, never a 5xx.
        """

    # Optional:
    #
    # def close():
    #     """
    #     Release connections, threads and files; None or a Deferred.  Called
    #     when the configuration that opened the table is replaced (and its
    #     transports are retired) and when the daemon stops.  A lookup may
    #     still come after it (a session that began before a reload): it
    #     must still be answered, by opening a connection again.
    #     """


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


class IQueueMessage(Interface):
    """
    A message being written into the queue (QueueStore.newMessage()): the
    content is written, then the message is committed or aborted, once.
    """

    queueId = Attribute("The message's queue id (str), fixed when it is made.")
    size = Attribute("The number of content bytes given to write() so far.")

    def write(data):
        """
        Append C{data} (bytes) to the content.  Ignored after abort();
        RuntimeError after commit().  A write error is remembered and
        reported by commit(), never raised here.
        """

    def commit(envelope, queue="incoming"):
        """
        Store the message with C{envelope} (an mta.model.Envelope; its size
        is set to the content written).  C{queue} is "incoming" or "hold".

        @return: a Deferred that fires with the queue id once the message is
            durable, or fails with mta.queue.files.QueueWriteError (nothing
            is left in the queue then).  A second commit(), a commit()
            after abort(), or an envelope that is not an Envelope fails the
            same way.
        """

    def abort():
        """
        Forget the message; nothing of it stays in the queue.  Safe at any
        time; it does nothing once commit() has been called (the commit's
        result decides) or after an earlier abort().
        """


class IQueueStore(Interface):
    """The queue's entrance: where the one cleanup opens its queue files."""

    def newMessage():
        """A new L{IQueueMessage}, with a queue id no other message has."""

    def freeSpace():
        """
        Bytes available on the queue's file system (an int; queue_minfree
        is checked against it).  OSError if it cannot be found out.
        """


class IWorkerPool(Interface):
    """The part of twisted.python.threadpool.ThreadPool the queue store uses."""

    def callInThreadWithCallback(onResult, func, *args, **kw):
        """
        Run C{func(*args, **kw)} in a worker and then call
        C{onResult(True, result)} or C{onResult(False, failure)} there.
        """
