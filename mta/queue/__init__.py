"""mta.queue - the mail queue: file format, durable entry, (later) the manager.

    queueid.py      queue ids: time-ordered, [0-9A-Za-z], unique across restarts
    fileformat.py   the queue file format (version 1) and its strict parser
    store.py        QueueStore: the directories, and durable entry of new mail

DIRECTORIES ($queue_directory, each mode 0700)

    tmp/        files being received; never read by anyone else; after a
                crash, anything here is garbage (QueueStore.cleanTemporary)
    incoming/   committed messages the queue manager has not yet taken
    active/     messages the queue manager is working on
    deferred/   messages waiting for their next attempt
    hold/       messages held by the administrator
    corrupt/    files the parser rejected, kept for a human
    maildrop/   local submissions (mta-sendmail) waiting for pickup

    A queue file's name is its queue id.  Which queue a message is in is
    simply which directory its one file is in, so a move is one rename(2).
    Only valid queue ids are looked at; other names are ignored.

LIFE OF A QUEUE FILE

    1. The server writes the content into tmp/ID as it arrives, then the
       envelope, fsyncs, renames into incoming/ID, fsyncs incoming/, and
       only then replies 250.  A file in incoming/ is complete by
       construction (only complete files are renamed there), and says so
       itself: the envelope record after the content, with its length and
       checksum, is the completion mark that the parser checks.
    2. The content (and the envelope record) are never modified again.

HOW THE QUEUE MANAGER UPDATES A MESSAGE (for the manager; not yet written)

    Per-recipient state is appended, never rewritten in place and never
    copied with the body:

      - Record results: open the file O_WRONLY|O_APPEND; if the last parse
        said tornTail, first ftruncate() to validLength; write one record
        from fileformat.dumpState(...) and fdatasync().  Do this BEFORE
        acting on the result elsewhere (before removing the file, before
        logging "status=sent", before committing a bounce's "done" mark),
        so a crash can repeat work (a duplicate) but never lose a
        recipient.  A torn append is detected by the parser (length and
        CRC-32 per record) and ignored: the update is all or nothing.
      - The state records' JSON is the manager's to define.  Suggested:
        deltas keyed by recipient index into envelope.recipients, merged in
        file order, e.g. {"time": T, "next_attempt": T2, "recipients":
        {"0": {"status": "sent", "dsn": "2.0.0", "relay": "...", "reply":
        "250 ..."}}}, so an update costs O(recipients changed).  Per
        recipient, "status" in sent, bounced, deferred; "warned" for delay
        warnings.
      - Move between queues: rename(2) within $queue_directory, then fsync
        the destination directory (and the source, for the removal).  No
        content is copied; state travels inside the file.
      - Finish: when every recipient is final and recorded, unlink the
        file; that directory fsync may be lazy, because a file that comes
        back after a crash already records its recipients as done.
      - Compaction (rare; only if state records grow past a threshold):
        write a new file in tmp/ with the same content, envelope and one
        merged state record, fsync, rename over the old name in the same
        queue, fsync the directory.  The parser's limit on state records
        is fileformat.MAX_STATE_TOTAL_BYTES.
      - A file the parser rejects (CorruptQueueFile) goes to corrupt/ and
        is logged; it never stops other mail.  OSError is not corruption.
      - At start-up, files left in active/ go back to incoming/ (as Postfix
        does), and cleanTemporary() empties tmp/ of old files.

SECURITY
    Queue files are parsed as untrusted input (see fileformat); the
    format is plain text records and JSON, nothing that executes code.

CONFIGURATION
    queue_directory, queue_minfree (QueueStore.freeSpace()).
"""
