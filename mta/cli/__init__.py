"""mta.cli - the command-line tools: mta-config, mta-queue, mta-sendmail.

Each module has a ``main(argv=None) -> int`` that setup.cfg declares as a
console script; it prints one line per problem on stderr (never a
traceback) and returns the exit status.
"""
