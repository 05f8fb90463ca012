"""mta.queue.state - the queue manager's state records: what they hold and how they merge.

A state record (framed and checksummed by mta.queue.fileformat) is a JSON
object appended to a queue file.  The queue manager writes two kinds:

    {"time": T, "recipients": {KEY: STATE, ...}}   results of deliveries
    {"time": T, "notified": [KEY, ...]}            notices queued for them

KEY is the recipient's index in the envelope ("0"), or "index>address"
for an address an alias expanded it to ("0>a@example.com", lower-cased).
STATE is {"status": sent|bounced|deferred, "dsn", "text", "relay"} plus,
when the transport gave them, "diagnostic", "remote_mta" and
"success_action", so that a notice owed since an earlier attempt (one that
could not be queued, or a crash before it was) can be built after a
restart as it would have been at once.  "delay" in "notified" records the
one delay warning.  Records merge in file order: the last state of a key
wins; "notified" keys accumulate.

Records are untrusted (a damaged or edited file): unknown fields are
ignored, values of the wrong type fall back to defaults, and a key that
does not fit the envelope is skipped.

SECURITY
    See above; values only reach notices (mta.bounce cleans every field)
    and log lines (sanitised).

CONFIGURATION
    None.
"""

from mta.model import DeliveryRecipient, RecipientResult

DONE = frozenset({"sent", "bounced"})
_EXTRA = ("diagnostic", "remote_mta", "success_action")
TEXT_LIMIT = 2000  # characters of a reply text or diagnostic kept in a state


def recipientKey(index, original, address):
    """The state key of a delivery: the envelope index, plus the address if aliases changed it."""
    return str(index) if address == original else f"{index}>{address.lower()}"


def mergeStates(records):
    """Fold state records (in file order) into ({key: state}, notified keys)."""
    states, notified = {}, set()
    for record in records:
        recipients = record.get("recipients")
        if isinstance(recipients, dict):
            for key, state in recipients.items():
                if isinstance(state, dict):
                    states[str(key)] = state
        keys = record.get("notified")
        if isinstance(keys, list):
            notified.update(str(k) for k in keys)
    return states, notified


def stateOf(result):
    """The STATE recorded for a RecipientResult."""
    state = {"status": result.status, "dsn": result.dsn, "text": result.text[:TEXT_LIMIT], "relay": result.relay}
    for name in _EXTRA:
        value = getattr(result, name)
        if value is not None:
            state[name] = value[:TEXT_LIMIT]
    return state


def _text(value, default=None):
    return value if isinstance(value, str) else default


def resultFromState(envelope, key, state):
    """
    (DeliveryRecipient, RecipientResult) rebuilt from a recorded STATE of
    C{key}; None if the key does not fit C{envelope} (a damaged record).
    """
    index, _, address = key.partition(">")
    try:
        index = int(index)
    except ValueError:
        return None
    recipients = envelope.recipients
    if not 0 <= index < len(recipients):
        return None
    recipient = recipients[index]
    target = DeliveryRecipient(index, address or recipient.address, recipient.address, recipient.orcpt, recipient.notify)
    result = RecipientResult(
        index, _text(state.get("status"), "bounced"), _text(state.get("dsn"), "5.0.0"), _text(state.get("text"), ""),
        relay=_text(state.get("relay"), "none"), diagnostic=_text(state.get("diagnostic")),
        remote_mta=_text(state.get("remote_mta")), success_action=_text(state.get("success_action")),
    )
    return target, result


def wantsSuccessNotice(target, result):
    """NOTIFY=SUCCESS, and the next hop did not take NOTIFY over (it reports success itself then)."""
    notify = {str(v).upper() for v in (target.notify or ())}
    return "SUCCESS" in notify and result.success_action != "none"
