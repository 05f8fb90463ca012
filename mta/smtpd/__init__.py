"""mta.smtpd - the ESMTP server: protocol, DATA reader, policy.

serverFactory(listener, daemon) builds the protocol factory for one
[listener:NAME]; everything it needs is read once from that listener's
parameters.
"""

from twisted.internet.protocol import Factory

from mta.maillog import MailLogger


class SMTPServerFactory(Factory):
    noisy = False
    def __init__(self, params, clock, store, tables, listenerName="smtp"):
        from mta.smtpd.policy import RecipientPolicy

        self.params = params
        self.clock = clock
        self.store = store
        self.listenerName = listenerName
        self.policy = RecipientPolicy(params, tables)
        self.maillog = MailLogger(params["syslog_name"], "smtpd")
        self.hostname = params["myhostname"]
        self.mailName = params["mail_name"]
        self.banner = params["smtpd_banner"]
        self.sizeLimit = params["message_size_limit"]
        self.recipientLimit = params["smtpd_recipient_limit"]
        self.lineLimit = params["line_length_limit"]
        self.heloRequired = False
        self.strictEnvelopes = False
        self.forbidUnauthPipelining = True
        keywords = ["PIPELINING", f"SIZE {self.sizeLimit}" if self.sizeLimit else "SIZE", "VRFY",
                    "ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING"]
        self.ehloLines = tuple(keywords)
        self.offered = frozenset(k.split()[0] for k in keywords)
        self.sessions = set()

    def buildProtocol(self, addr):
        from mta.smtpd.protocol import SMTPServer

        protocol = SMTPServer(self)
        self.sessions.add(protocol)
        return protocol

    def connectionClosed(self, protocol):
        self.sessions.discard(protocol)


def serverFactory(listener, daemon):
    """The factory for one listener of the running daemon."""
    return SMTPServerFactory(listener.params, daemon.clock, daemon.store, daemon.tables, listener.name)
