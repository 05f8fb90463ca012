"""mta.cli.queue.common - what mta-queue's parts share: its name and its error texts."""

from mta.maillog import sanitize

PROG = "mta-queue"


class UsageError(Exception):
    """Bad arguments found after parsing (queue ids): exit status 2."""


def _plural(count, word):
    return f"{count} {word}{'' if count == 1 else 's'}"


def _quote(text):
    """A queue id argument, quoted and with control characters escaped, for an error line."""
    return sanitize(repr(text[:100] + ("..." if len(text) > 100 else "")))


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _oserror(exception):
    if isinstance(exception, OSError) and exception.strerror:
        return sanitize(exception.strerror)
    return _reason(exception)


def _reason(exception):
    text = str(exception).strip() or type(exception).__name__
    return sanitize(text)
