"""mta.smtpd.psengine - postscreen's dummy SMTP engine for clients it does not let through.

A client that failed a test under an "enforce" action (the access list,
pregreet, DNSBL; mta.smtpd.postscreen) talks to this engine instead of
smtpd: it is answered like postscreen_smtpd.c answers, every recipient
gets the enforced reply, logged as

    NOQUEUE: reject: RCPT from [addr]:port: 550 5.7.1 Service unavailable;
        client [addr] blocked using zen.example; from=<s>, to=<r>,
        proto=ESMTP, helo=<h>

and nothing is ever queued: DATA and BDAT get an error reply and a close.
A client in the deep protocol tests (not enforced) gets 450 4.3.2 Service
currently unavailable for its recipients, after the tests still pending
passed at its first RCPT; the engine reports COMMAND PIPELINING, NON-SMTP
COMMAND and BARE NEWLINE to the screen (PostscreenServer.failDeep), which
applies the test's action.
QUIT gets 221 2.0.0 Bye.  Each command has postscreen_command_time_limit
(``COMMAND TIME LIMIT from [addr]:port after CMD`` and 421 4.4.2 ...
Error: timeout exceeded); past postscreen_command_count_limit commands
(QUIT excepted) ``COMMAND COUNT LIMIT`` and 421 ... Service unavailable -
try again later; a line of line_length_limit octets or more ``COMMAND
LENGTH LIMIT`` and the same 421.

SECURITY
    Every line is untrusted: bounded, decoded as Latin-1 (never an
    exception), and escaped before it reaches the log (mta.maillog
    sanitize); addresses in the log are at most 256 characters.

CONFIGURATION
    postscreen_forbidden_commands, postscreen_*_action of the deep tests,
    postscreen_command_time_limit, postscreen_command_count_limit,
    postscreen_helo_required, postscreen_disable_vrfy_command, soft_bounce,
    smtpd_banner, myhostname, line_length_limit (through
    mta.config.settings.postscreen and the listener's smtpd settings).

DEVIATIONS
    No STARTTLS (Postfix's engine can offer it), no AUTH, XCLIENT or
    XFORWARD (Postfix: disabled as well), no reject footer.  EHLO's keywords are Postfix's default list, not
    filtered by smtpd_discard_ehlo_keywords.
"""

import re

from mta.maillog import sanitize

ADDRESS_SHOWN = 256  # characters of an envelope address kept in the log
SHOWN = 100  # characters of client text in a test's log line
HEADER = re.compile(r"[!-9;-~]+:")  # is_header(): a header name and its colon, as "Subject:"


def formatDelay(seconds):
    """Postfix's format_tv with 2 significant digits: 0.1, 1.2, 6, 12."""
    if seconds >= 10:
        return str(int(seconds))
    if seconds < 0.01:
        return "0" if seconds < 0.0005 else f"{seconds:.2g}"
    text = f"{seconds:.2g}"
    return text if "e" not in text else f"{seconds:.3f}".rstrip("0").rstrip(".")


def softened(reply, softBounce):
    """soft_bounce: a 5xx reply (and its 5.x.x status) become 4xx, as psc_soften_reply."""
    if not softBounce or not reply.startswith("5"):
        return reply
    reply = "4" + reply[1:]
    if len(reply) > 4 and reply[4] == "5":
        reply = reply[:4] + "4" + reply[5:]
    return reply


def extractAddress(text):
    """psc_extract_addr: the address after the colon, <> stripped, a source route dropped; None: bad syntax."""
    text = text.strip()
    if text.startswith("<"):
        end = text.find(">")
        if end < 0:
            return None
        addr = text[1:end]
    else:
        addr = text.split(None, 1)[0] if text.split() else ""
        if not addr and text:
            return None
    if addr.startswith("@") and ":" in addr:
        addr = addr.split(":", 1)[1]
    return addr[:ADDRESS_SHOWN]


def _shown(text):
    """Client text for a log line: at most SHOWN characters, control characters escaped."""
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    return sanitize(text[:SHOWN])


class DummyEngine:
    """The dummy SMTP session of one enforced PostscreenServer (C{server})."""

    def __init__(self, server):
        self.server = server
        self.settings = server.settings
        self.hostname = self.settings.hostname
        self.lineLimit = server.factory.settings.lineLimit
        self.buffer = b""
        self.helo = None
        self.sender = None
        self.protocol = "SMTP"
        self.where = "CONNECT"
        self.commands = 0
        self._timer = None
        self.stopped = False

    def begin(self, greet=True):
        if greet:
            self.reply(f"220 {self.settings.banner}")
        self._restartTimer()

    def stop(self):
        self.stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def reply(self, text):
        self.server.write(softened(text, self.settings.softBounce))

    def _restartTimer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.server.clock.callLater(self.settings.commandTimeLimit, self._timeout)

    def _timeout(self):
        self._timer = None
        if self.stopped:
            return
        self.server.emit(f"COMMAND TIME LIMIT from {self.server.client} after {self.where}")
        self.server.drop(f"421 4.4.2 {self.hostname} Error: timeout exceeded")

    def _busy(self):
        return f"421 {self.hostname} Service unavailable - try again later"

    def dataReceived(self, data):
        self.buffer += data
        while not self.stopped:
            line, newline, rest = self.buffer.partition(b"\n")
            if not newline:
                if len(self.buffer) >= self.lineLimit:
                    self.server.emit(f"COMMAND LENGTH LIMIT from {self.server.client} after {self.where}")
                    self.server.drop(self._busy())
                return
            self.buffer = rest
            if line.endswith(b"\r"):
                line = line[:-1]
            elif "bare_newline" in self.server.deepPending():
                server = self.server
                server.emit(f"BARE NEWLINE from {server.client} after {_shown(line)}")
                if server.failDeep("bare_newline", self.settings.bareNewlineAction, "521 5.5.1 Protocol error",
                                   "550 5.5.1 Protocol error"):
                    return
            if len(line) >= self.lineLimit:
                self.server.emit(f"COMMAND LENGTH LIMIT from {self.server.client} after {self.where}")
                self.server.drop(self._busy())
                return
            self.command(line.decode("latin-1"))

    def command(self, line):
        words = line.split(None, 1)
        verb = words[0].upper() if words else ""
        args = words[1] if len(words) > 1 else ""
        saved, self.where = self.where, verb if verb in HANDLERS else "UNIMPL"
        server, settings = self.server, self.settings
        pending = server.deepPending()
        if "non_smtp" in pending and verb not in HANDLERS and (
                HEADER.fullmatch(words[0] if words else "") or verb in settings.forbiddenCommands):
            server.emit(f"NON-SMTP COMMAND from {server.client} after {saved}: {_shown(words[0])} {_shown(args)}")
            if server.failDeep("non_smtp", settings.nonSmtpAction,
                               "521 5.7.0 Error: I can break rules, too. Goodbye.", "550 5.5.1 Protocol error"):
                return
        if "pipelining" in pending and verb != "BDAT" and self.buffer:
            server.emit(f"COMMAND PIPELINING from {server.client} after {_shown(verb)}: "
                        f"{_shown(self.buffer.decode('latin-1'))}")
            if server.failDeep("pipelining", settings.pipeliningAction, "521 5.5.1 Protocol error",
                               "550 5.5.1 Protocol error"):
                return
        if verb == "RCPT":
            server.passDeep()
        self.commands += 1
        if self.commands > self.settings.commandCountLimit and verb != "QUIT":
            self.server.emit(f"COMMAND COUNT LIMIT from {self.server.client} after {saved}")
            self.server.drop(self._busy())
            return
        handler = HANDLERS.get(verb)
        if handler is None:
            self.reply("502 5.5.2 Error: command not recognized")
        else:
            handler(self, args)
        if not self.stopped:
            self._restartTimer()

    # -- commands (postscreen_smtpd.c) ----------------------------------------

    def helo(self, args):
        if not args.split():
            self.reply("501 Syntax: HELO hostname")
            return
        self.helo, self.sender = args.split()[0], None
        self.reply(f"250 {self.hostname}")

    def ehlo(self, args):
        if not args.split():
            self.reply("501 Syntax: EHLO hostname")
            return
        self.helo, self.sender, self.protocol = args.split()[0], None, "ESMTP"
        size = self.server.factory.settings.sizeLimit
        keywords = [f"SIZE {size}" if size else "SIZE"]
        if not self.settings.disableVrfy:
            keywords.append("VRFY")
        keywords += ["ETRN", "ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8", "CHUNKING"]
        lines = [self.hostname] + keywords
        for i, text in enumerate(lines):
            self.server.write(f"250{'-' if i < len(lines) - 1 else ' '}{text}")

    def mail(self, args):
        if self.settings.heloRequired and self.helo is None:
            self.reply("503 5.5.1 Error: send HELO/EHLO first")
        elif self.sender is not None:
            self.reply("503 5.5.1 Error: nested MAIL command")
        elif ":" not in args:
            self.reply("501 5.5.4 Syntax: MAIL FROM:<address>")
        else:
            addr = extractAddress(args.split(":", 1)[1])
            if addr is None:
                self.reply("501 5.1.7 Bad sender address syntax")
                return
            self.sender = addr
            self.reply("250 2.1.0 Ok")

    def rcpt(self, args):
        if self.sender is None:
            self.reply("503 5.5.1 Error: need MAIL command")
            return
        if ":" not in args:
            self.reply("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        addr = extractAddress(args.split(":", 1)[1])
        if addr is None:
            self.reply("501 5.1.3 Bad recipient address syntax")
            return
        server = self.server
        reply = softened(server.rcptReply, self.settings.softBounce)
        server.emit(f"NOQUEUE: reject: RCPT from {server.client}: {reply}; from=<{sanitize(self.sender)}>, "
                    f"to=<{sanitize(addr)}>, proto={self.protocol}, helo=<{sanitize(self.helo or '')}>")
        self.reply(server.rcptReply)

    def data(self, args):
        server = self.server
        server.emit(f"DATA without valid RCPT from {server.client}")
        if args.split():
            server.drop("501 5.5.4 Syntax: DATA")
        elif self.sender is None:
            server.drop("503 5.5.1 Error: need RCPT command")
        else:
            server.drop("554 5.5.1 Error: no valid recipients")

    def bdat(self, args):
        server = self.server
        server.emit(f"BDAT without valid RCPT from {server.client}")
        if not args.split():
            server.drop("501 5.5.4 Syntax: BDAT count [LAST]")
        elif self.sender is None:
            server.drop("554 5.5.1 Error: need MAIL command")
        else:
            server.drop("554 5.5.1 Error: no valid recipients")

    def rset(self, args):
        self.sender = None
        self.reply("250 2.0.0 Ok")

    def noop(self, args):
        self.reply("250 2.0.0 Ok")

    def vrfy(self, args):
        if not args.split():
            self.reply("501 5.5.4 Syntax: VRFY address")
        elif self.settings.disableVrfy:
            self.reply("502 5.5.1 VRFY command is disabled")
        else:
            self.reply(self.server.rcptReply)

    def etrn(self, args):
        if self.settings.heloRequired and self.helo is None:
            self.reply("503 5.5.1 Error: send HELO/EHLO first")
        elif not args.split():
            self.reply("500 Syntax: ETRN domain")
        else:
            self.reply("458 Unable to queue messages")

    def quit(self, args):
        self.server.drop("221 2.0.0 Bye")

    def starttls(self, args):
        self.reply("502 5.5.1 Error: command not implemented")

    def disabled(self, args):
        self.reply("502 5.5.2 Error: command not recognized")


HANDLERS = {
    "HELO": DummyEngine.helo, "EHLO": DummyEngine.ehlo, "MAIL": DummyEngine.mail, "RCPT": DummyEngine.rcpt,
    "DATA": DummyEngine.data, "BDAT": DummyEngine.bdat, "RSET": DummyEngine.rset, "NOOP": DummyEngine.noop,
    "VRFY": DummyEngine.vrfy, "ETRN": DummyEngine.etrn, "QUIT": DummyEngine.quit,
    "STARTTLS": DummyEngine.starttls, "AUTH": DummyEngine.disabled, "XCLIENT": DummyEngine.disabled,
    "XFORWARD": DummyEngine.disabled,
}
