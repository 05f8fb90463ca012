"""mta.queue.sites - which deferred messages wait for which site: the index behind ETRN.

Postfix's flush(8) keeps, per destination, a log of the queue ids of
deferred mail ("a destination is the part on the right-hand side of the
right-most @ in an email address"); ETRN (send_site) delivers what is
listed for exactly that site, lower-cased.  There is no parent-domain
match: ETRN example.com does not flush mail for mx.example.com (smtpd
strips an RFC 1985 "@" or "#" prefix before it asks; flush_site_to_path()
maps the site to one file).

mta keeps the same record in memory: SiteIndex maps a site to the queue ids
of deferred messages with a deferred recipient there.  The index is not
stored: after a start it is incomplete, and the first flush rebuilds it by
reading the envelope and state records of every deferred file, in the
thread pool, a batch of files per job (pendingSites()).  From then on the
queue manager adds a message when it moves it to deferred/ (with the sites
of the recipients that were deferred in that attempt) and drops it when the
message is activated again; before the first flush it keeps nothing.  Entries can be
stale (a message deleted by mta-queue, or delivered by another activation):
the manager checks that a file is still in deferred/ before it activates it.

SECURITY
    Addresses come from queue files (untrusted); they are only compared,
    lower-cased, never interpreted.

CONFIGURATION
    None.  (Whether a site may be flushed at all, fast_flush_domains and
    smtpd_etrn_restrictions, is decided by the ETRN command.)
"""

import collections

DONE = frozenset({"sent", "bounced"})


def siteOf(address):
    """The site of C{address}: what follows its right-most @, lower-cased; None without one."""
    _, at, domain = address.rpartition("@")
    return domain.lower() if at and domain else None


def pendingSites(envelope, states):
    """
    The sites of the recipients of C{envelope} that are not done according
    to C{states} (merged state records, see mta.queue.manager): for an
    alias-expanded recipient the sites of its deferred expansions, else the
    recipient's own.
    """
    expansions = collections.defaultdict(list)
    for key, state in states.items():
        index, sep, address = key.partition(">")
        if sep:
            expansions[index].append((address, state.get("status") if isinstance(state, dict) else None))
    sites = set()
    for index, recipient in enumerate(envelope.recipients):
        base = states.get(str(index))
        if isinstance(base, dict) and base.get("status") in DONE:
            continue
        expanded = expansions.get(str(index))
        if expanded and not (isinstance(base, dict) and base.get("status") == "deferred"):
            addresses = [address for address, status in expanded if status not in DONE]
        else:
            addresses = [recipient.address]
        sites.update(site for site in map(siteOf, addresses) if site)
    return sites


class SiteIndex:
    """
    site -> queue ids of deferred messages.  Nothing is kept until the
    first rebuild starts (C{tracking}): before it the index could not be
    complete anyway, so a server that never gets ETRN spends no memory on
    it.  C{complete}: every deferred file is in it.
    """

    def __init__(self):
        self._bySite = collections.defaultdict(set)
        self._byId = {}  # queue id -> tuple of sites
        self.tracking = False
        self.complete = False

    def __len__(self):
        return len(self._byId)

    def add(self, queueId, sites):
        """Record that C{queueId} waits for C{sites} (added to what is known already)."""
        if not self.tracking:
            return
        known = self._byId.get(queueId, ())
        new = {site.lower() for site in sites if site}.difference(known)
        if not new:
            return
        for site in new:
            self._bySite[site].add(queueId)
        self._byId[queueId] = known + tuple(sorted(new))

    def discard(self, queueId):
        for site in self._byId.pop(queueId, ()):
            ids = self._bySite.get(site)
            if ids is not None:
                ids.discard(queueId)
                if not ids:
                    del self._bySite[site]

    def ids(self, site):
        """The queue ids recorded for exactly C{site} (case-insensitive), sorted."""
        return sorted(self._bySite.get(site.lower(), ()))

    def sites(self, queueId):
        return frozenset(self._byId.get(queueId, ()))
