"""Scripted SMTP dialogs against the server, with no sockets and no sleeps."""

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport


class Dialog:
    def __init__(self, factory, peer="127.0.0.1", host=None):
        self.factory = factory
        hostAddress = IPv4Address("TCP", host, 25) if host else None  # StringTransport's own default
        self.transport = StringTransport(hostAddress=hostAddress, peerAddress=IPv4Address("TCP", peer, 40000))
        self.protocol = factory.buildProtocol(self.transport.getPeer())
        self.protocol.makeConnection(self.transport)
        self.banner = self.read()

    def read(self):
        value = self.transport.value().decode("utf-8")
        self.transport.clear()
        return value

    def send(self, data, bytewise=False):
        """Send C{data} (str or bytes) in one write, or one byte at a time; return the output."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        if bytewise:
            for i in range(len(data)):
                self.protocol.dataReceived(data[i : i + 1])
        else:
            self.protocol.dataReceived(data)
        return self.read()

    def codes(self, data, bytewise=False):
        """Send and return the reply codes of the final lines (multi-line replies counted once)."""
        return replyCodes(self.send(data, bytewise))

    @property
    def closed(self):
        return self.transport.disconnecting


def replyCodes(output):
    return [int(line[:3]) for line in output.split("\r\n") if len(line) >= 4 and line[3] == " "]


def transaction(sender="<alice@example.org>", recipients=("<bob@mx.test>",), body="Subject: hi\r\n\r\nhello\r\n"):
    lines = [f"MAIL FROM:{sender}\r\n"] + [f"RCPT TO:{r}\r\n" for r in recipients] + ["DATA\r\n"]
    return "".join(lines), body + ".\r\n"


class MailLog:
    """The mail-log lines emitted while it is open (a context manager)."""

    def __init__(self):
        self.lines = []

    def _observe(self, event):
        if "mail_line" in event:
            self.lines.append(event["mail_line"])

    def __enter__(self):
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(self._observe)
        return self

    def __exit__(self, *exc):
        from twisted.logger import globalLogPublisher

        globalLogPublisher.removeObserver(self._observe)

    def matching(self, text):
        return [line for line in self.lines if text in line]
