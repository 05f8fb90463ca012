"""mta.cli.saslpasswd - `mta-config sasl-passwd FILE USER`: add a user or change a password.

The builtin SASL backend (mta.sasl.builtin) reads a texthash table of
user names and argon2id hashes.  This command sets USER's hash in FILE:

    mta-config sasl-passwd /etc/mta/sasl_passwd alice@example.org
    mta-config sasl-passwd -d /etc/mta/sasl_passwd alice@example.org   (delete)

The password is read from the terminal (asked twice, not echoed) or, when
standard input is not a terminal, from its first line (for scripts:
``printf '%s\\n' "$pw" | mta-config sasl-passwd FILE USER``).  The file is
created 0600 when missing; otherwise the user's line is replaced (or
added at the end), every other line, comment and continuation kept.  The
new file is written beside the old one, fsynced and renamed over it, so a
reader (the daemon rereads a changed texthash file) sees the old or the new
table, never half of one.

Exit status: 0 done, 1 an error (said on standard error), 64 bad usage.

SECURITY
    The password never appears on the command line, in the file (only its
    salted hash) or in any message.  A user name with white space, control
    characters or "#" is refused: it would not be one table key.

CONFIGURATION
    None (the file is named on the command line; smtpd_sasl_path names it
    for the daemon).
"""

import argparse
import getpass
import os
import sys
import tempfile

from mta.sasl.passwords import hashPassword

PROG = "mta-config sasl-passwd"
USAGE = 64


class _Error(Exception):
    pass


def _readPassword(stdin):
    if stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Again: "):
            raise _Error("the passwords differ")
        password = first
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise _Error("empty password")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise _Error("the password holds a control character")
    return password


def _validUser(user):
    return user and not any(c.isspace() or ord(c) < 32 or ord(c) == 127 or c == "#" for c in user)


def _keyOf(line):
    """The table key a line defines, lower case (texthash keys are case-insensitive), or None."""
    if not line.strip() or line.lstrip().startswith("#") or line[:1].isspace():
        return None
    return line.split(None, 1)[0].lower()


def update(path, user, hashed):
    """Set (C{hashed}) or delete (None) C{user}'s line in the file at C{path}; True if it was there."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        if hashed is None:
            return False
        lines, mode = [], 0o600
    out, found, skipping = [], False, False
    for line in lines:
        if skipping and line[:1].isspace() and line.strip():
            continue  # a continuation of the replaced entry
        skipping = False
        if _keyOf(line) == user.lower():
            found = skipping = True
            if hashed is not None and not any(_keyOf(o) == user.lower() for o in out):
                out.append(f"{user}\t{hashed}")
            continue
        out.append(line)
    if hashed is not None and not found:
        out.append(f"{user}\t{hashed}")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".sasl_passwd.", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in out))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dirfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    return found


def main(argv, stdin=None, stdout=None, stderr=None):
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    parser = argparse.ArgumentParser(prog=PROG, description="Add a SASL user or change its password.")
    parser.add_argument("-d", "--delete", action="store_true", help="remove the user")
    parser.add_argument("file", help="the password table (texthash), e.g. /etc/mta/sasl_passwd")
    parser.add_argument("user", help="the user name, e.g. alice@example.org")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return USAGE if e.code else 0
    if not _validUser(args.user):
        stderr.write(f"{PROG}: error: bad user name (no white space, control characters or #)\n")
        return USAGE
    try:
        if args.delete:
            if not update(args.file, args.user, None):
                raise _Error(f"{args.user}: no such user in {args.file}")
            stdout.write(f"{PROG}: {args.user} removed from {args.file}\n")
            return 0
        found = update(args.file, args.user, hashPassword(_readPassword(stdin)))
    except _Error as e:
        stderr.write(f"{PROG}: error: {e}\n")
        return 1
    except OSError as e:
        stderr.write(f"{PROG}: error: {args.file}: {e.strerror}\n")
        return 1
    stdout.write(f"{PROG}: {'password changed for' if found else 'added'} {args.user} in {args.file}\n")
    return 0
