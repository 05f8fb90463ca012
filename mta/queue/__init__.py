"""mta.queue - the mail queue: file format, durable entry, the queue manager.

    queueid.py      queue ids: time-ordered, [0-9A-Za-z], unique across restarts
    fileformat.py   the queue file format (version 1) and its strict parser
    files.py        the system calls the queue makes (FileSystem: the seam
                    through which tests inject faults) and the one queue-file
                    writer (QueueFileWriter: the store's and mta-sendmail's)
    store.py        QueueStore: the directories, durable entry of new mail,
                    appends, moves, directory scans in the thread pool
    committer.py    Committer: the one thread that makes new queue files and
                    state records durable, one sync per batch (group commit)
    state.py        the queue manager's state records (results, "notified")
    manager.py      QueueManager (qmgr): activation, routing, the end of
                    an attempt (defer, bounce, remove), and every error path
    scheduler.py    the manager's deliveries by (transport, nexthop):
                    concurrency and recipient limits, transport calls
    attempt.py      ActiveMessage: one message's results, state records in
                    flight and the notices it owes
    scanner.py      the manager's directory work: start-up sweeps, deferred
                    scans, stray entries to corrupt/, ETRN (flushSite)
    sites.py        the ETRN index: deferred queue ids by recipient site
    notices.py      bounces, delay warnings and success notices (mta.bounce)
    pickup.py       pickup(8): maildrop/ into the queue (through mta.cleanup)
    tools.py        postsuper-style operations, mailq's listing

DIRECTORIES ($queue_directory, each mode 0700)

    tmp/        files being received by this process; nobody else writes
                here (mta-sendmail writes maildrop/QUEUEID.tmp), so at
                start-up, under the queue lock, everything in it but
                directories is garbage and removed; while running, unowned
                files older than an hour are removed every hour
    incoming/   committed messages the queue manager has not yet taken
    active/     messages the queue manager is working on
    deferred/   messages waiting for their next attempt (the file's mtime)
    hold/       messages held by the administrator
    corrupt/    files the parser rejected, files whose content checksum is
                wrong, and anything in incoming/, active/ or deferred/ that
                is not a queue file (a name that is not a queue id, a
                symbolic link, a FIFO, a directory), kept for a human
    maildrop/   local submissions (mta-sendmail) waiting for pickup

    A queue file's name is its queue id.  Which queue a message is in is
    simply which directory its one file is in, so a move is one rename(2).
    Directory entries are looked at with lstat(2) only: nothing in a queue
    directory is opened before it is known to be a regular file with a
    queue id for a name, and no symbolic link is ever followed.

LIFE OF A QUEUE FILE

    1. The server writes the content into tmp/ID as it arrives, then the
       envelope, renames into incoming/ID, and once the store's committer
       has made its batch durable (one syncfs of the file system, or an
       fsync of the file and of incoming/: queue_sync_method) it replies
       250.  A file in incoming/ is complete by
       construction (only complete files are renamed there), and says so
       itself: the envelope record after the content, with its length and
       checksum, is the completion mark that the parser checks.
    2. The content (and the envelope record) are never modified again.
    3. The queue manager moves it to active/, parses it and checks the
       content's length and CRC-32 (a damaged file goes to corrupt/, and
       nothing of it is delivered), delivers, and appends results.
    4. It ends in deferred/ (to be tried again), or is removed once every
       recipient is done and every notice it owes is queued.

HOW THE QUEUE MANAGER UPDATES A MESSAGE

    Per-recipient state is appended, never rewritten in place and never
    copied with the body (mta.queue.state defines the records):

      - Record results: open the file O_WRONLY|O_APPEND, write one record
        from fileformat.dumpState(...) and make it durable (the committer's
        batch: syncfs, or fdatasync() under queue_sync_method = fsync).  This happens
        BEFORE the result is acted on (before removing the file, before
        logging "status=sent", before a bounce), so a crash can repeat
        work (a duplicate) but never lose a recipient.  A torn append is
        detected by the parser (length and CRC-32 per record) and ignored:
        the update is all or nothing; the manager cuts it off (ftruncate
        to validLength) when it next takes the file up.
      - A record that cannot be written (ENOSPC, EIO) leaves the results of
        that attempt undurable: the message is deferred without notices,
        and its next attempt repeats what was not recorded (the RFC 1047
        window).  A notice that cannot be queued keeps the message, which
        owes it until a "notified" record says it was queued.
      - Move between queues: rename(2) within $queue_directory.  The
        directory is not fsynced after a move: a move lost in a crash
        leaves the file where it was (active/ is taken up again at start),
        with its state inside it.  No content is copied.
      - Finish: when every recipient is final and recorded, unlink the
        file; that directory fsync may be lazy, because a file that comes
        back after a crash already records its recipients as done.
      - A file the parser rejects (CorruptQueueFile) goes to corrupt/ and
        is logged; it never stops other mail.  OSError is not corruption:
        the file is tried again a minute later.
      - At start-up, files left in active/ go back to incoming/ (as Postfix
        does), and tmp/ is emptied.
      - Compaction of state records is not implemented; the parser's limit
        on them is fileformat.MAX_STATE_TOTAL_BYTES (64 MiB: about a
        hundred attempts of 3,000 deferred recipients).

SECURITY
    Queue files are parsed as untrusted input (see fileformat); the
    format is plain text records and JSON, nothing that executes code.
    Names read from queue directories are untrusted too: only valid queue
    ids become paths in another directory; others are moved to corrupt/
    under their own name, and sanitised in log lines.

CONFIGURATION
    queue_directory, queue_minfree (QueueStore.freeSpace()); the queue
    manager's parameters are listed in mta.queue.manager.
"""
