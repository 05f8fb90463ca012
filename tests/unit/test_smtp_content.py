"""The SMTP transport's content source: from memory when the queue manager read the file whole, else from the file."""

import attrs
from twisted.internet.defer import ensureDeferred, succeed

from mta.delivery.smtp import CHUNK, _chunks
from mta.model import DeliveryRecipient, DeliveryRequest, Envelope, Recipient
from mta.queue import fileformat
from mta.testing import resultOf

ENVELOPE = Envelope(sender="a@example.org", recipients=(Recipient("b@example.net"),), arrival_time=1.0)


class CountingStore:
    """inPool runs the job at once and counts it."""

    def __init__(self):
        self.jobs = 0

    def inPool(self, f, *args):
        self.jobs += 1
        return succeed(f(*args))


def request(path, content, keep):
    queueFile = fileformat.dumpQueueFile(ENVELOPE, content)
    with open(path, "wb") as f:
        f.write(queueFile)
    return DeliveryRequest("4TbC0hR2x8Zq", "smtp", "example.net", attrs.evolve(ENVELOPE, size=len(content)),
                           (DeliveryRecipient(0, "b@example.net", "b@example.net", None, ()),), str(path),
                           fileformat.HEADER_SIZE, len(content), content if keep else None)


def collect(chunks):
    async def run():
        return [chunk async for chunk in chunks]

    return resultOf(ensureDeferred(run()))


def test_content_in_memory_is_sent_without_a_pool_job(tmp_path):
    store = CountingStore()
    content = b"Subject: t\r\n\r\nhi\r\n"
    assert collect(_chunks(store, request(tmp_path / "q", content, keep=True))) == [content]
    assert store.jobs == 0


def test_content_not_in_memory_is_read_from_the_file_in_bounded_chunks(tmp_path):
    store = CountingStore()
    content = b"y" * 98 + b"\r\n"
    content *= 2 * CHUNK // len(content) + 1
    chunks = collect(_chunks(store, request(tmp_path / "q", content, keep=False)))
    assert b"".join(chunks) == content and max(map(len, chunks)) <= CHUNK and len(chunks) == 3
    assert store.jobs == 4  # one a chunk, and the end


def test_empty_content_in_memory_yields_nothing(tmp_path):
    assert collect(_chunks(CountingStore(), request(tmp_path / "q", b"", keep=True))) == []


