"""mta.smtpd.chat - the session's transcript and error classes, for postmaster notices (smtpd_chat.c).

SessionChat is mixed into the session (mta.smtpd.protocol.SMTPServer):
the session records command lines with _heard() and replies as it writes
them, a command marks its error class with _fault(class, reply), and
_chatReset() is Postfix's chat_reset().

A session of one of the daemon's listeners keeps a transcript when
notify_classes lists a class the server can meet: every command line as received ("In:  ", cut at
line_length_limit) and every reply line ("Out: "), never message content,
and the error classes it met.  Before each command, and at EHLO, RSET and
after the end-of-data reply, a transcript of more than 100 lines (Postfix's
smtpd_history_flush_threshold) is sent if it met a listed class, and starts
afresh (so is the error mask); at the end of the session what is left is
sent the same way, with "Session aborted, reason: timeout" (lost
connection, too many errors) when it ended so.  mta.transcript builds and
queues the notice.  The classes, set where Postfix sets them (smtpd.c,
smtpd_check.c):

    bounce    an unknown recipient (smtpd_reject_unlisted_recipient,
              reject_unlisted_recipient), a message too big at its end
              (552 5.3.4 message file too big), too many hops (554 5.4.0)
    policy    restriction rejects and defers (relay access denied, access
              tables, reject, defer, reject_non_fqdn_*, ETRN
              restrictions), an invalid HELO name, "send HELO/EHLO first",
              VRFY disabled, SIZE over message_size_limit, too many
              recipients past the overshoot limit, BDAT content over the
              size limit, the per-client connection limit
    protocol  syntax errors (501, 555), bad sequence (503), unknown
              commands (502), invalid characters (500), command lines too
              long, message lines too long, bare newlines, improper
              pipelining (554 5.5.0), an early talker (pregreet drop or
              enforce), too many errors (421 4.7.0)
    data      a table that cannot answer in the restrictions or the
              recipient checks (451 4.3.0 Temporary lookup failure)
    resource  queue_minfree (452 4.3.1), a queue file that cannot be
              created or committed (451 4.3.0 queue file write error), a
              local_header_rewrite_clients table that cannot answer
    software  internal errors (421 or 451 4.3.0), an access table value
              that mta cannot use (451 4.3.5 Server configuration error)

No class, as in Postfix: 553 5.6.7 (a UTF-8 address without SMTPUTF8),
554 5.5.1 no valid recipients (normal with pipelining), null or discarded
BDAT chunks, ETRN's 458 and 459, non-SMTP commands (221), timeouts and
lost connections.

SECURITY
    The transcript is the client's text: it is bounded (100 lines and one
    command's worth, each line cut at line_length_limit and at 2048 characters) and
    reaches the postmaster only as mta.transcript allows (no header line,
    printable ASCII only).  A notice that cannot be queued is logged; the
    session goes on.

CONFIGURATION
    notify_classes (resource, software), error_notice_recipient,
    bounce_notice_recipient, double_bounce_sender (via mta.transcript);
    only the daemon's listeners send notices (not mta-sendmail -bs, as in
    Postfix's stand-alone mode).  Postfix's smtpd_history_flush_threshold
    is not a parameter: it is fixed at its default, 100.

DEVIATIONS
    Error classes where Postfix has no such case or sets none: improper
    pipelining (smtpd_forbid_unauth_pipelining) and an early talker are
    the protocol class (Postfix's smtpd sets none for them, and postscreen
    sends no notices); so is a message line over line_length_limit
    (Postfix splits such lines).  A transcript line shows non-ASCII as "?"
    (see mta.transcript).
"""

from mta.maillog import sanitize
from mta.transcript import Transcript

# The notify_classes the server can meet (Postfix's smtpd error_mask): see above.
SERVER_ERROR_CLASSES = frozenset({"bounce", "data", "policy", "protocol", "resource", "software"})
# Postfix's smtpd_history_flush_threshold (default 100): a longer transcript is sent (if it met a
# listed class) and started afresh before the next command, at EHLO, RSET and after end of data.
HISTORY_FLUSH_THRESHOLD = 100


class SessionChat:
    """The transcript half of an SMTP session; mixed into mta.smtpd.protocol.SMTPServer."""

    def _startChat(self):
        self.transcript = Transcript() if self.factory.keepTranscripts else None
        self._abortReason = None  # why the session ended abnormally (Postfix's state->reason)
        self._resetAfterReply = False  # the end-of-data reply: flush the transcript after it

    def _fault(self, errorClass, reply=None):
        """
        The session met an error of C{errorClass} (a notify_classes name:
        Postfix's error_mask); returns C{reply}, so that a command can say
        ``return self._fault("protocol", Reply(...))``.
        """
        if self.transcript is not None:
            self.transcript.error(errorClass)
        return reply

    def _heard(self, line):
        """A command line arrived (without its line end): Postfix's smtpd_chat_query."""
        if self.session.debugPeer:  # debug_peer_list: Postfix's verbose "< client: line"
            self._debugLine("<", line)
        if self.transcript is not None:
            self._chatReset()
            self.transcript.received(line)

    def _debugLine(self, direction, line):
        """debug_peer_list: one line of the dialog in the mail log, as Postfix's verbose smtpd logs it."""
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        self.factory.maillog.emit(f"{direction} {self.session.client}: {sanitize(text)}", client=self.session.client)

    def _chatReset(self, threshold=HISTORY_FLUSH_THRESHOLD):
        """
        Postfix's chat_reset(): past C{threshold} lines (0: at the end of
        the session) the transcript goes to the postmaster if the session
        met a class that notify_classes lists, and starts afresh.
        """
        transcript = self.transcript
        if transcript is None or len(transcript) <= threshold:
            return
        notices = self.factory.notices
        if notices.due(transcript):
            reason = self._abortReason if threshold == 0 else None
            notices.send("SMTP server", self.session.client, transcript, reason=reason)
        transcript.clear()
