"""mta.queue.fileformat and mta.queue.queueid: round trips, every kind of damage, queue ids."""

import io
import json
import os
import random
import zlib

import attrs
import pytest

from mta.model import Envelope, Recipient
from mta.queue import fileformat as ff
from mta.queue.fileformat import CorruptQueueFile
from mta.queue.queueid import (
    ALPHABET,
    QUEUE_ID_LENGTH,
    QueueIdGenerator,
    isValidQueueId,
    newQueueId,
    queueIdTime,
)

CONTENT = b"Received: from x\r\nSubject: test\r\n\r\nline one\r\n.dot\r\n\r\n"

FULL = Envelope(
    sender="s\u00e9nder@exampl\u00e9.org",
    recipients=(
        Recipient("bob@example.com"),
        Recipient("carol@example.net", orcpt="rfc822;Carol@Example.NET", notify=("SUCCESS", "FAILURE", "DELAY")),
        Recipient('"john smith"@[192.0.2.1]', orcpt="utf-8;j\u00f6hn@example.org", notify=("NEVER",)),
        Recipient("dave@example.org", notify=("DELAY",)),
    ),
    arrival_time=1700000000.123456789,
    client_name="mail.example.org",
    client_address="2001:db8::1",
    client_port=65535,
    helo="[2001:db8::1] \t odd helo \u2603",
    protocol="ESMTPSA",
    body="8BITMIME",
    smtputf8=True,
    ret="HDRS",
    envid="QQ314159\udcff",  # even a lone surrogate survives
    size=len(CONTENT),
)
MINIMAL = Envelope(sender="", recipients=(Recipient("postmaster@example.com"),), arrival_time=0.0)


def build(payload, content=CONTENT, kind=b"envelope", extra=b"", contentLength=None, crc=None):
    """A queue file with an arbitrary envelope payload (checksummed correctly unless C{crc} is given)."""
    length = len(content) if contentLength is None else contentLength
    record = b"%s %d %08x\n%s\n" % (kind, len(payload), zlib.crc32(payload) if crc is None else crc, payload)
    return ff.fileHeader(length, zlib.crc32(content)) + content + record + extra


def envelopeDict(envelope=FULL, **changes):
    obj = json.loads(ff.dumpEnvelope(attrs.evolve(envelope, size=len(CONTENT))))
    obj.update(changes)
    return obj


def withJSON(obj):
    return build(json.dumps(obj).encode("ascii"))


def parse(data, **kw):
    return ff.parseQueueFile(io.BytesIO(data), **kw)


def corrupt(data, match, **kw):
    with pytest.raises(CorruptQueueFile, match=match):
        parse(data, **kw)


# -- round trips ------------------------------------------------------------------


@pytest.mark.parametrize(
    "envelope",
    [
        FULL,
        MINIMAL,
        attrs.evolve(MINIMAL, recipients=()),
        attrs.evolve(MINIMAL, arrival_time=1700000000),  # an int stays an int
        attrs.evolve(MINIMAL, arrival_time=0.1 + 0.2),
        attrs.evolve(FULL, ret="FULL", body="BINARYMIME", envid=None, smtputf8=False, client_port=0),
        attrs.evolve(FULL, sender="x" * ff.MAX_FIELD_CHARS),
        attrs.evolve(FULL, recipients=tuple(Recipient(f"r{i}@example.com") for i in range(1000))),
        attrs.evolve(FULL, sasl_method="LOGIN", sasl_username="alice@example.org", sasl_sender=None),
        attrs.evolve(FULL, sasl_method="PLAIN", sasl_username="bob", sasl_sender="bob@example.org"),
    ],
)
def test_envelope_round_trip_is_exact(envelope):
    payload = ff.dumpEnvelope(envelope)
    payload.decode("ascii")  # pure ASCII
    back = ff.parseEnvelope(payload)
    assert back == envelope
    assert type(back.arrival_time) is type(envelope.arrival_time)
    assert type(back.recipients) is tuple
    assert all(type(r.notify) is tuple for r in back.recipients)


def test_every_model_field_is_stored():
    # A new field in mta.model must be added to the format (and the version bumped).
    obj = json.loads(ff.dumpEnvelope(FULL))
    assert set(obj) == {f.name for f in attrs.fields(Envelope)} - ff.OPTIONAL_ENVELOPE_FIELDS
    login = attrs.evolve(FULL, sasl_method="PLAIN", sasl_username="alice", sasl_sender="alice@example.org",
                         requiretls=True, tls_required_no=True, probe=True)
    assert set(json.loads(ff.dumpEnvelope(login))) == {f.name for f in attrs.fields(Envelope)}
    assert set(obj["recipients"][0]) == {f.name for f in attrs.fields(Recipient)}


def test_dump_accepts_lists_and_gives_tuples():
    envelope = attrs.evolve(MINIMAL, recipients=[Recipient("a@b", notify=["SUCCESS"])])
    back = ff.parseEnvelope(ff.dumpEnvelope(envelope))
    assert back.recipients == (Recipient("a@b", notify=("SUCCESS",)),)


def test_whole_file_round_trip():
    data = ff.dumpQueueFile(FULL, CONTENT)
    assert data.startswith(b"MTA-QUEUE 1\n")
    q = parse(data, verifyContent=True)
    assert q.envelope == FULL
    assert data[q.contentOffset : q.contentOffset + q.contentLength] == CONTENT
    assert (q.contentOffset, q.contentLength, q.contentCrc32) == (ff.HEADER_SIZE, len(CONTENT), zlib.crc32(CONTENT))
    assert q.states == () and not q.tornTail and q.validLength == len(data)


def test_dumpQueueFile_sets_the_size():
    q = parse(ff.dumpQueueFile(attrs.evolve(FULL, size=0), CONTENT))
    assert q.envelope.size == len(CONTENT)


def test_empty_content():
    q = parse(ff.dumpQueueFile(MINIMAL, b""), verifyContent=True)
    assert (q.contentLength, q.envelope) == (0, MINIMAL)


def test_content_is_raw_bytes():
    content = bytes(range(256)) * 3 + b"\r\n.\r\n" + b"MTA-QUEUE 1\nenvelope 2 00000000\n{}\n"
    data = ff.dumpQueueFile(MINIMAL, content)
    q = parse(data, verifyContent=True)
    assert data[q.contentOffset : q.contentOffset + q.contentLength] == content


def test_state_records_are_appended_and_returned_in_order():
    data = ff.dumpQueueFile(FULL, CONTENT)
    states = [{"recipients": {"0": {"status": "deferred"}}}, {"recipients": {"0": {"status": "sent"}}, "t": 1.5}]
    full = data + b"".join(ff.dumpState(s) for s in states)
    q = parse(full)
    assert q.states == tuple(states)
    assert (q.validLength, q.tornTail) == (len(full), False)


def test_readEnvelope_and_readQueueFile(tmp_path):
    path = tmp_path / "0000000000AAAAA"
    path.write_bytes(ff.dumpQueueFile(FULL, CONTENT))
    assert ff.readEnvelope(str(path)) == FULL
    assert ff.readQueueFile(path, verifyContent=True).contentLength == len(CONTENT)


# -- writer refuses what the parser would refuse -------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"helo": "a\r\nRSET"},
        {"sender": "a\nb"},
        {"client_name": "a\0b"},
        {"sender": "x" * (ff.MAX_FIELD_CHARS + 1)},
        {"sender": None},
        {"client_port": "25"},
        {"client_port": 70000},
        {"arrival_time": float("nan")},
        {"smtputf8": 1},
        {"body": "8bit"},
        {"ret": "ALL"},
        {"recipients": ("a@b",)},
        {"recipients": (Recipient("a@b", notify=("NEVER", "DELAY")),)},
        {"recipients": (Recipient("a@b", orcpt="x\r\ny"),)},
    ],
)
def test_dumpEnvelope_refuses_values_it_could_not_read_back(changes):
    with pytest.raises(ValueError):
        ff.dumpEnvelope(attrs.evolve(FULL, **changes))


def test_dumpEnvelope_refuses_non_envelopes():
    with pytest.raises(ValueError):
        ff.dumpEnvelope({"sender": ""})


def test_dumpState_refuses_non_json():
    deep = []
    for _ in range(100000):
        deep = [deep]
    for bad in [object(), [1], {"x": float("inf")}, {"x": object()}, {1: "a", "1": "b"}, {"x": deep}]:
        with pytest.raises(ValueError):
            ff.dumpState(bad)


# -- corruption: framing -----------------------------------------------------------

GOOD = ff.dumpQueueFile(FULL, CONTENT)
ENVELOPE_AT = ff.HEADER_SIZE + len(CONTENT)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty file"),
        (b"From alice@example.org Mon Jan  1 00:00:00 2024\n" + CONTENT, "bad magic"),
        (b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.", "bad magic"),  # a pickle
        (b"MTA-QUEUE 2\n" + GOOD[12:], "unsupported queue file version '2'"),
        (b"MTA-QUEUE 10\n" + GOOD[12:], "unsupported queue file version '10'"),
        (b"MTA-QUEUE", "truncated in the header"),
        (b"MTA-QUEUE 1", "truncated in the header"),
        (GOOD[:30], "truncated in the header"),
        (GOOD[:12] + b"content 0000000000000000003x 97e50678\n" + GOOD[50:], "bad content header"),
        (GOOD[:12] + b"content  000000000000000003 97e50678\n" + GOOD[50:], "bad content header"),
        (GOOD[:12] + b"content 00000000000000000030 97E50678\n" + GOOD[50:], "bad content header"),
        (GOOD[:12] + b"CONTENT 00000000000000000030 97e50678\n" + GOOD[50:], "bad content header"),
        (GOOD[: ENVELOPE_AT - 1], "truncated in the content"),
        (GOOD[:12] + b"content 99999999999999999999 00000000\n" + GOOD[50:], "truncated in the content"),
        (GOOD[:ENVELOPE_AT], "incomplete: no envelope record"),
        (GOOD[: ENVELOPE_AT + 5], "envelope record: record header truncated"),
        (GOOD[: ENVELOPE_AT + 30], "envelope record: envelope record truncated"),
        (GOOD[:-1], "envelope record: envelope record truncated"),
        (GOOD[:-1] + b"X", "envelope record not terminated"),
        (GOOD[:ENVELOPE_AT] + b"\n" + GOOD[ENVELOPE_AT:], "bad record header"),
        (GOOD[:ENVELOPE_AT] + b"X" * 100, "bad record header"),
        (GOOD[:ENVELOPE_AT] + b"envelope 99999999999 00000000\n", "bad record header"),
        (GOOD[:ENVELOPE_AT] + b"envelope 0100 00000000\n", "bad record header"),  # leading zero
        (GOOD[:ENVELOPE_AT] + b"envelope -1 00000000\n", "bad record header"),
        (GOOD[:ENVELOPE_AT] + b"envelope %d 00000000\n" % (ff.MAX_ENVELOPE_BYTES + 1), "more than"),
        (build(b"{}", kind=b"state"), "unknown record type|envelope record"),
        (build(b"{}", kind=b"bogus"), "unknown record type 'bogus'"),
        (build(ff.dumpEnvelope(FULL), crc=0), "checksum mismatch"),
        (build(ff.dumpEnvelope(FULL), contentLength=len(CONTENT) - 1), "bad record header"),
        (build(ff.dumpEnvelope(attrs.evolve(FULL, size=len(CONTENT) + 1))), "size mismatch"),
        (build(ff.dumpEnvelope(FULL), extra=ff.frameRecord("envelope", ff.dumpEnvelope(FULL))),
         "unexpected envelope record"),
        (build(ff.dumpEnvelope(FULL), extra=ff.frameRecord("state", b"[1, 2]")), "expected a JSON object"),
        (build(ff.dumpEnvelope(FULL), extra=ff.frameRecord("state", b"{bad json")), "bad JSON"),
    ],
)
def test_damaged_framing(data, match):
    corrupt(data, match)


def test_content_checksum_is_checked_on_request():
    data = bytearray(GOOD)
    data[ff.HEADER_SIZE + 3] ^= 0x20
    parse(bytes(data))  # the content is not read by default
    corrupt(bytes(data), "content checksum mismatch", verifyContent=True)


def test_too_many_state_records(monkeypatch):
    monkeypatch.setattr(ff, "MAX_STATE_TOTAL_BYTES", 100)
    record = ff.dumpState({"x": "y" * 40})
    parse(GOOD + record * 2)
    corrupt(GOOD + record * 3, "state records exceed")


# -- corruption: the envelope's JSON ----------------------------------------------------


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"", "bad JSON"),
        (b"{", "bad JSON"),
        (b"not json", "bad JSON"),
        (b"[]", "expected a JSON object, got a list"),
        (b'"string"', "expected a JSON object, got a string"),
        (b"null", "expected a JSON object, got null"),
        ('{"sender": "caf\u00e9"}'.encode("utf-8"), "bad JSON"),  # not ASCII
        (b"\xff\xfe{}", "bad JSON"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b"[" * 100000 + b"]" * 100000, "bad JSON"),  # deep nesting
        (b'{"x": ' + b"9" * 5000 + b"}", "bad JSON"),  # an integer too long to convert
        (b'{"x": NaN}', "bad JSON"),
        (b'{"x": -Infinity}', "bad JSON"),
        (b"{} {}", "bad JSON"),
    ],
)
def test_bad_json(payload, match):
    corrupt(build(payload), match)


@pytest.mark.parametrize("field", [f.name for f in attrs.fields(Envelope) if f.name not in ff.OPTIONAL_ENVELOPE_FIELDS])
def test_missing_envelope_field(field):
    obj = envelopeDict()
    del obj[field]
    corrupt(withJSON(obj), f"missing field '{field}'")


@pytest.mark.parametrize("field", [f.name for f in attrs.fields(Recipient)])
def test_missing_recipient_field(field):
    obj = envelopeDict()
    del obj["recipients"][1][field]
    corrupt(withJSON(obj), rf"recipients\[1\]: missing field '{field}'")


def test_unknown_fields():
    corrupt(withJSON(envelopeDict(queue_id="X")), "unknown field 'queue_id'")
    obj = envelopeDict()
    obj["recipients"][0]["extra"] = 1
    corrupt(withJSON(obj), r"recipients\[0\]: unknown field 'extra'")


BIG = 10**30


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("sender", 1, "sender: expected a string, got an integer"),
        ("sender", None, "sender: expected a string, got null"),
        ("sender", ["a"], "sender: expected a string, got a list"),
        ("sender", "x" * (ff.MAX_FIELD_CHARS + 1), "more than 4096"),
        ("sender", "a\r\nRCPT TO:<x@y>", "CR, LF or NUL"),
        ("helo", "a\nb", "CR, LF or NUL"),
        ("client_name", "a\u0000b", "CR, LF or NUL"),
        ("client_address", {}, "expected a string, got an object"),
        ("protocol", True, "expected a string, got a boolean"),
        ("envid", 5, "expected a string"),
        ("envid", "e" * 100000, "more than"),
        ("recipients", "bob@example.com", "recipients: expected a list, got a string"),
        ("recipients", {"address": "x"}, "expected a list, got an object"),
        ("recipients", ["bob@example.com"], r"recipients\[0\]: expected an object, got a string"),
        ("recipients", [None], r"recipients\[0\]: expected an object, got null"),
        ("arrival_time", "1700000000", "expected a number, got a string"),
        ("arrival_time", True, "expected a number, got a boolean"),
        ("arrival_time", -1, "not a valid time"),
        ("arrival_time", 1e300, "not a valid time"),
        ("arrival_time", BIG, "not a valid time"),
        ("arrival_time", 10**400, "not a valid time"),
        ("size", 10**400, "out of range"),
        ("client_port", True, "expected an integer, got a boolean"),
        ("client_port", 25.0, "expected an integer, got a number"),
        ("client_port", -1, "out of range"),
        ("client_port", 65536, "out of range"),
        ("client_port", BIG, "out of range"),
        ("size", -1, "out of range"),
        ("size", 10**20, "out of range"),
        ("size", "30", "expected an integer"),
        ("smtputf8", 1, "expected true or false, got an integer"),
        ("smtputf8", "true", "expected true or false"),
        ("body", "8bitmime", "body: expected one of 7BIT, 8BITMIME, BINARYMIME"),
        ("body", None, "body: expected one of"),
        ("ret", "ALL", "ret: expected one of FULL, HDRS"),
        ("ret", 1, "ret: expected one of"),
    ],
)
def test_wrong_envelope_values(field, value, match):
    corrupt(withJSON(envelopeDict(**{field: value})), match)


def test_huge_float_literal_is_rejected():
    payload = ff.dumpEnvelope(FULL).replace(b'"arrival_time":1700000000.1234567', b'"arrival_time":1e400')
    assert b"1e400" in payload
    corrupt(build(payload), "not a valid time")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("address", 1, "address: expected a string"),
        ("address", "a\r\nb", "CR, LF or NUL"),
        ("orcpt", ["x"], "orcpt: expected a string"),
        ("orcpt", "o" * 5000, "more than"),
        ("notify", "SUCCESS", "notify: expected a list, got a string"),
        ("notify", None, "notify: expected a list, got null"),
        ("notify", ["success"], "notify: expected one of NEVER"),
        ("notify", [1], "notify: expected one of"),
        ("notify", ["NEVER", "SUCCESS"], "NEVER combined"),
        ("notify", ["DELAY", "DELAY"], "repeated value"),
        ("notify", ["SUCCESS"] * 1000, "too many values"),
    ],
)
def test_wrong_recipient_values(field, value, match):
    obj = envelopeDict()
    obj["recipients"][1][field] = value
    with pytest.raises(CorruptQueueFile, match=match) as info:
        parse(withJSON(obj))
    assert f"recipients[1].{field}: " in str(info.value)


# -- torn appends, truncation, bit flips: only CorruptQueueFile, never anything else --------


def test_torn_state_append_is_ignored():
    good = GOOD + ff.dumpState({"n": 1})
    for cut in range(1, len(ff.dumpState({"n": 2}))):
        data = good + ff.dumpState({"n": 2})[:cut]
        q = parse(data)
        assert q.states == ({"n": 1},)
        assert (q.tornTail, q.validLength) == (True, len(good))
    for junk in [b"\0" * 4096, b"state 5 00000000\n{}{}{\n", b"\n", b"x" * 100]:
        q = parse(good + junk)
        assert (q.states, q.tornTail, q.validLength) == (({"n": 1},), True, len(good))


def test_every_truncation():
    data = GOOD + ff.dumpState({"n": 1})
    for cut in range(len(data)):
        try:
            q = parse(data[:cut])
        except CorruptQueueFile:
            assert cut < len(GOOD)
        else:
            assert cut >= len(GOOD) and q.envelope == FULL


def test_every_single_byte_change():
    data = GOOD + ff.dumpState({"n": 1})
    rng = random.Random(1)
    for i in range(len(data)):
        changed = bytearray(data)
        changed[i] = (changed[i] + rng.randrange(1, 256)) % 256
        try:
            q = parse(bytes(changed), verifyContent=True)
        except CorruptQueueFile:
            continue
        # only damage to the appended state record can be survived, and it is noticed
        assert i >= len(GOOD), i
        assert q.tornTail and q.states == () and q.envelope == FULL


def test_random_garbage():
    rng = random.Random(2)
    prefixes = [b"", GOOD[:12], GOOD[:50], GOOD[:ENVELOPE_AT], GOOD[: ENVELOPE_AT + 22]]
    for _ in range(3000):
        data = rng.choice(prefixes) + bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
        try:
            parse(data, verifyContent=True)
        except CorruptQueueFile:
            pass


# -- files that are not files --------------------------------------------------------------


def test_readQueueFile_refuses_symlinks_directories_and_fifos(tmp_path):
    real = tmp_path / "real"
    real.write_bytes(GOOD)
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(CorruptQueueFile, match="symbolic link"):
        ff.readQueueFile(str(tmp_path / "link"))
    with pytest.raises(CorruptQueueFile, match="not a regular file"):
        ff.readQueueFile(str(tmp_path / "dir"))
    with pytest.raises(CorruptQueueFile, match="not a regular file"):
        ff.readQueueFile(str(tmp_path / "fifo"))  # and does not block


def test_readQueueFile_names_the_file(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"garbage")
    with pytest.raises(CorruptQueueFile, match=f"^{path}: not a queue file"):
        ff.readEnvelope(str(path))


def test_missing_file_is_an_OSError_not_corruption(tmp_path):
    with pytest.raises(FileNotFoundError):
        ff.readEnvelope(str(tmp_path / "missing"))


# -- queue ids ---------------------------------------------------------------------------------


def test_queue_id_shape():
    queueId = newQueueId()
    assert len(queueId) == QUEUE_ID_LENGTH == 14
    assert isValidQueueId(queueId)
    assert set(queueId) <= set(ALPHABET)
    assert list(ALPHABET) == sorted(ALPHABET)  # so that byte order is numeric order


def test_100000_ids_in_one_microsecond_are_unique_and_sorted():
    generate = QueueIdGenerator(clock=lambda: 1700000000_000000_000, salt="abcde")
    ids = [generate() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(isValidQueueId(i) for i in ids[:: 997])


def test_100000_ids_from_the_real_clock_are_unique_and_sorted():
    generate = QueueIdGenerator()
    ids = [generate() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_ids_follow_the_clock_and_never_go_back():
    now = [1700000000_000000_000]
    generate = QueueIdGenerator(clock=lambda: now[0], salt="00000")
    first = generate()
    assert queueIdTime(first) == 1700000000.0
    now[0] += 5_000_000_000  # 5 s later
    later = generate()
    assert later > first and queueIdTime(later) == 1700000005.0
    now[0] -= 60_000_000_000  # the clock is stepped back
    stepped = generate()
    assert stepped > later


def test_ids_sort_by_time_across_generators():
    a = QueueIdGenerator(clock=lambda: 1_000_000_000_000, salt="zzzzz")()
    b = QueueIdGenerator(clock=lambda: 1_000_001_000_000, salt="00000")()
    assert a < b


def test_ids_after_a_restart_do_not_repeat_even_if_the_clock_went_back():
    # The previous process "borrowed" ahead; the new one starts at an earlier clock.
    clock = lambda: 1700000000_000000_000  # noqa: E731
    before = QueueIdGenerator(clock=clock, salt="Abc12")
    old = {before() for _ in range(10_000)}
    after = QueueIdGenerator(clock=clock, salt="Xyz89")
    new = {after() for _ in range(10_000)}
    assert not old & new
    # and salts really are random
    assert len({QueueIdGenerator().salt for _ in range(50)}) > 45


@pytest.mark.parametrize(
    "name, valid",
    [
        ("0aWfQ3Zk1r7Tb2", True),
        ("0aWfQ3Zk1r7Tb", False),
        ("0aWfQ3Zk1r7Tb22", False),
        ("0aWfQ3Zk1r7T-2", False),
        ("0aWfQ3Zk1r7T.2", False),
        ("../../etc/pass", False),
        ("0aWfQ3Zk1r7Tb2\n", False),
        ("0aWfQ3Zk1r7T\u00e92", False),
        (b"0aWfQ3Zk1r7Tb2", False),
        (None, False),
    ],
)
def test_isValidQueueId(name, valid):
    assert isValidQueueId(name) is valid


def test_bad_salt():
    with pytest.raises(ValueError):
        QueueIdGenerator(salt="ab/cd")


def test_random_type_confusion_in_the_envelope():
    rng = random.Random(3)
    values = [None, True, False, 0, -1, 2**70, 10**400, 1.5, -0.0, 1e308, "", "x", "\r", "a" * 5000,
              [], {}, [1], ["SUCCESS"], {"a": 1}, [{}], [{"address": "a"}]]
    for _ in range(3000):
        obj = envelopeDict()
        target = obj if rng.random() < 0.6 else rng.choice(obj["recipients"])
        key = rng.choice(sorted(target))
        target[key] = rng.choice(values)
        try:
            envelope = parse(withJSON(obj)).envelope
        except CorruptQueueFile:
            continue
        assert ff.parseEnvelope(ff.dumpEnvelope(envelope)) == envelope  # accepted means storable


def test_an_envelope_without_the_login_fields_still_parses():
    # Files written before AUTH existed have no sasl_* fields: they read as None.
    obj = json.loads(ff.dumpEnvelope(FULL))
    assert not set(obj) & ff.OPTIONAL_ENVELOPE_FIELDS
    back = ff.parseEnvelope(json.dumps(obj).encode("ascii"))
    assert back.sasl_method is None and back.sasl_username is None and back.sasl_sender is None
    assert back == FULL


def test_login_fields_are_checked_like_other_strings():
    obj = json.loads(ff.dumpEnvelope(FULL))
    for bad in (5, "a\r\nb", ["x"]):
        obj["sasl_username"] = bad
        with pytest.raises(CorruptQueueFile, match="sasl_username"):
            ff.parseEnvelope(json.dumps(obj).encode("ascii"))


# -- RFC 8689: REQUIRETLS and "TLS-Required: No" --------------------------------------------


def test_requiretls_flags_round_trip_in_the_queue_file():
    envelope = attrs.evolve(FULL, requiretls=True, tls_required_no=True)
    data = ff.dumpQueueFile(envelope, CONTENT)
    obj = json.loads(ff.dumpEnvelope(envelope))
    assert obj["requiretls"] is True and obj["tls_required_no"] is True
    back = parse(data, verifyContent=True).envelope
    assert back.requiretls is True and back.tls_required_no is True
    assert back == envelope


def test_an_envelope_without_the_flags_is_written_as_before():
    # False is not written: a file of a message without REQUIRETLS is byte for byte what it was.
    obj = json.loads(ff.dumpEnvelope(FULL))
    assert "requiretls" not in obj and "tls_required_no" not in obj


def test_an_old_queue_file_without_the_flags_still_loads():
    obj = json.loads(ff.dumpEnvelope(FULL))
    obj.pop("requiretls", None)
    obj.pop("tls_required_no", None)
    back = ff.parseEnvelope(json.dumps(obj).encode("ascii"))
    assert back.requiretls is False and back.tls_required_no is False


@pytest.mark.parametrize("value", ["yes", 1, None, []])
def test_a_mistyped_requiretls_flag_is_corrupt(value):
    obj = json.loads(ff.dumpEnvelope(FULL))
    obj["requiretls"] = value
    with pytest.raises(CorruptQueueFile, match="requiretls"):
        ff.parseEnvelope(json.dumps(obj).encode("ascii"))


def test_a_small_file_is_read_once_and_its_content_kept(tmp_path, monkeypatch):
    path = tmp_path / "0000000000AAAAA"
    path.write_bytes(ff.dumpQueueFile(FULL, CONTENT) + ff.dumpState({"time": 1.0}))
    reads = []
    realRead = os.read
    monkeypatch.setattr(ff.os, "read", lambda fd, n: reads.append(n) or realRead(fd, n))
    q = ff.readQueueFile(str(path), verifyContent=True, keepContent=True)
    assert q.content == CONTENT and q.states == ({"time": 1.0},)
    assert len(reads) == 2  # the whole file, then the end of file
    assert ff.readQueueFile(str(path)).content is None  # kept only when asked for


def test_a_big_file_is_read_in_chunks_and_its_content_not_kept(tmp_path):
    content = b"x" * 998 + b"\r\n"
    content *= ff.SMALL_FILE // len(content) + 1
    path = tmp_path / "0000000000AAAAA"
    path.write_bytes(ff.dumpQueueFile(FULL, content))
    q = ff.readQueueFile(str(path), verifyContent=True, keepContent=True)
    assert q.content is None and q.contentLength == len(content)


def test_reading_from_memory_finds_the_same_damage(tmp_path):
    data = bytearray(ff.dumpQueueFile(FULL, CONTENT))
    data[ff.HEADER_SIZE] ^= 1
    path = tmp_path / "0000000000AAAAA"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptQueueFile, match="content checksum mismatch"):
        ff.readQueueFile(str(path), verifyContent=True, keepContent=True)
    path.write_bytes(ff.dumpQueueFile(FULL, CONTENT)[:-3])
    with pytest.raises(CorruptQueueFile, match="envelope record"):
        ff.readQueueFile(str(path), keepContent=True)
