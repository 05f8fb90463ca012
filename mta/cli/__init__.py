"""mta.cli - the command-line tools: mta, mta-config, mta-queue, mta-sendmail, mta-postmap.

Each module has a ``main(argv=None) -> int`` that setup.cfg declares as a
console script; it prints one line per problem on stderr (never a
traceback) and returns the exit status.  parseArguments() is the argparse
step the argparse-based tools share (mta-sendmail parses sendmail's own
syntax by hand).
"""


class Done(Exception):
    """Raised by parseArguments: the tool ends now with C{status} (help printed, or a usage error)."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


def parseArguments(parser, argv, needCommand=False):
    """
    C{parser.parse_args(argv)}, where --help (0) and a usage error (2,
    already printed by argparse) raise Done instead of SystemExit; with
    C{needCommand}, no sub-command prints the help and raises Done(0).
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        raise Done(e.code if isinstance(e.code, int) else 2) from None
    if needCommand and args.command is None:
        parser.print_help()
        raise Done(0)
    return args
