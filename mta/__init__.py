"""mta: a mail transfer agent on Twisted, modelled on Postfix."""

__version__ = "0.1.0"
