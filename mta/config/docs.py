"""mta.config.docs - the example configuration and the README's parameter table.

    python -m mta.config.docs ini > etc/mta.ini
    python -m mta.config.docs markdown

Both are generated from mta.config.schema.PARAMETERS, so that they cannot
drift from the code; tests/unit/test_docs.py fails when etc/mta.ini or the
README's table (between ``<!-- parameters:begin -->`` and
``<!-- parameters:end -->``) is out of step.

``ini`` writes every parameter of [main], grouped as the schema groups them,
as a comment block (the doc line, the type, then ``#name = default``
commented out), and a [listener:smtp] section with the default endpoint, so
the file loads and starts as it is.  Computed defaults (myhostname,
mydomain) are described by their rule, never by the value on the machine
that generated the file.

SECURITY
    None: prints static text.

CONFIGURATION
    Documents all of it.
"""

import argparse
import inspect
import sys

from mta.config import types as T
from mta.config.schema import DEFAULT_LISTENERS, LISTENER_KEYS, PARAMETERS

REGENERATE = "scripts/gen-docs"

# For parameters whose default is computed at start-up: a value to show on
# the commented-out line, clearly marked as an example.
EXAMPLES = {
    "myhostname": "mail.example.com",
    "mydomain": "example.com",
}

# The usual three services of master.cf, shown commented out in the example
# configuration after the default listener: (name, endpoint, overrides, comment).
# They need a certificate: smtpd_tls_cert_file and smtpd_tls_key_file in [main].
# The default listener's real-server settings: master.cf's smtp service on port 25, STARTTLS offered.
EXAMPLE_SMTP = (("endpoint", "tcp:port=25"), ("smtpd_tls_security_level", "may"))
EXAMPLE_LISTENERS = (
    ("submission", "tcp:port=587",
     (("smtpd_tls_security_level", "encrypt"), ("smtpd_sasl_auth_enable", "yes"), ("smtpd_tls_auth_only", "yes"),
      ("smtpd_sender_restrictions", "reject_sender_login_mismatch"),
      ("smtpd_recipient_restrictions", ""),
      ("smtpd_relay_restrictions", "permit_sasl_authenticated, reject"),
      ("smtpd_recipient_limit", "100")),
     "submission on port 587: mail from users, STARTTLS required (530 5.7.0 before it), then AUTH"),
    ("submissions", "tcp:port=465",
     (("smtpd_tls_wrappermode", "yes"), ("smtpd_sasl_auth_enable", "yes"),
      ("smtpd_sender_restrictions", "reject_sender_login_mismatch"),
      ("smtpd_recipient_restrictions", ""),
      ("smtpd_relay_restrictions", "permit_sasl_authenticated, reject"),
      ("smtpd_recipient_limit", "100")),
     "submissions on port 465: TLS from the first byte (wrapper mode), then AUTH"),
)
# What the submission services need besides their own lines.
SUBMISSION_NOTE = (
    "# AUTH needs smtpd_sasl_type and smtpd_sasl_path in [main] (Dovecot's auth socket, or\n"
    "# smtpd_sasl_type = builtin with a table made by mta-config sasl-passwd); a sender may\n"
    "# only use the addresses that smtpd_sender_login_maps gives its login (none: any)."
)

INI_HEADER = f"""\
# mta.ini - the mta configuration, annotated.
#
# Generated from mta.config.schema by `{REGENERATE}`:
# change the schema and regenerate, do not edit this copy by hand.
#
# Syntax, as Postfix's main.cf: `name = value`; a line that starts with white
# space continues the previous value; a line whose first non-blank character
# is # or ; is a comment (a # later in a line is part of the value).
# Values may refer to other parameters: $name, ${{name}} or $(name); also
# ${{name?text}} (text when name is not empty), ${{name:text}} (text when name is
# empty) and $$ (a dollar sign).  References are expanded when used, in the
# scope in use: in a listener, its own overrides win.
#
# [main] holds the parameters (main.cf).  Each [listener:NAME] section is one
# server (a master.cf service): `endpoint =` a Twisted endpoint string, then
# any [main] parameters it overrides (as -o does in master.cf).
#
# As it stands this file runs mta on the defaults: one SMTP listener on
# 127.0.0.1:2525, relaying for the loopback networks only.  See what a file
# changes with `mta-config -c FILE -n`; check it with `mta-config -c FILE --check`.
"""


def typeText(parameterType):
    """The type's name, with what a reader needs to write a value."""
    if isinstance(parameterType, T.Time):
        return f"{parameterType.name} (unit s, m, h, d or w; without one: {parameterType.unit})"
    if isinstance(parameterType, T.Integer) and parameterType.maximum is not None:
        return f"{parameterType.name} ({parameterType.minimum} to {parameterType.maximum})"
    if isinstance(parameterType, T.Integer) and parameterType.minimum:
        return f"{parameterType.name} (at least {parameterType.minimum})"
    if isinstance(parameterType, (T.Choice, T.ChoiceList)):
        return f"{parameterType.name} ({', '.join(c or '(empty)' for c in parameterType.choices)})"
    if isinstance(parameterType, T.Size):
        return f"{parameterType.name} (bytes; a k, m or g suffix multiplies by 1024, 1024^2, 1024^3)"
    return parameterType.name


def computedRule(parameter):
    """For a computed default: the rule, from the callable's docstring; else None."""
    if not callable(parameter.default):
        return None
    doc = inspect.getdoc(parameter.default) or "computed at start-up"
    return " ".join(doc.split("\n\n", 1)[0].split())


def groups():
    """[(group, [parameters])] in schema order."""
    result = []
    for parameter in PARAMETERS:
        if not result or result[-1][0] != parameter.group:
            result.append((parameter.group, []))
        result[-1][1].append(parameter)
    return result


def _rule(title):
    return f"# == {title} " + "=" * max(3, 72 - len(title))


def _assignment(name, value, prefix=""):
    return f"{prefix}{name} = {value}" if value else f"{prefix}{name} ="


def ini():
    """The annotated example configuration, as one string."""
    lines = INI_HEADER.splitlines()
    lines += ["", "[main]"]
    for group, parameters in groups():
        lines += ["", _rule(group)]
        for parameter in parameters:
            lines += ["", f"# {parameter.doc}", f"# Type: {typeText(parameter.type)}."]
            rule = computedRule(parameter)
            if rule is None:
                lines.append(_assignment(parameter.name, parameter.default, "#"))
            elif parameter.name in EXAMPLES:
                lines.append(f"# Default: computed at start-up: {rule} For example:")
                lines.append(_assignment(parameter.name, EXAMPLES[parameter.name], "#"))
            else:
                lines.append(f"# Default: computed at start-up: {rule}")
                lines.append(f"# Set {parameter.name} = VALUE to override it.")

    name, endpoint = DEFAULT_LISTENERS[0]
    lines += [
        "",
        "",
        _rule("listeners"),
        "#",
        "# One [listener:NAME] section per server.",
        "# endpoint: " + LISTENER_KEYS["endpoint"],
        "# The other keys override [main] parameters for this listener only.",
        "",
        f"[listener:{name}]",
        f"endpoint = {endpoint}",
        "# On a real server, as master.cf's smtp service: port 25, STARTTLS offered",
        "# (replace the endpoint above with these lines):",
        *(_assignment(key, value, "#") for key, value in EXAMPLE_SMTP),
        "",
        "# The submission services, as master.cf has them (remove the # signs of a section",
        "# to enable it).  TLS needs smtpd_tls_cert_file and smtpd_tls_key_file in [main]",
        "# (or smtpd_tls_chain_files); ports below 1024 need root.",
        *SUBMISSION_NOTE.split("\n"),
    ]
    for other, otherEndpoint, overrides, comment in EXAMPLE_LISTENERS:
        lines += ["", f"# {comment}", f"#[listener:{other}]", f"#endpoint = {otherEndpoint}"]
        lines += [_assignment(key, value, "#") for key, value in overrides]
    return "\n".join(lines) + "\n"


def _cell(text):
    return text.replace("|", "\\|")


def _code(text):
    return f"`{_cell(text)}`"


def markdown():
    """The README's parameter table, as one string (no markers)."""
    lines = ["| parameter | type | default | description |", "| --- | --- | --- | --- |"]
    for parameter in PARAMETERS:
        rule = computedRule(parameter)
        if rule is not None:
            default = f"computed: {_cell(rule)}"
        elif parameter.default:
            default = _code(parameter.default)
        else:
            default = "*(empty)*"
        lines.append(
            f"| {_code(parameter.name)} | {_cell(typeText(parameter.type))} | {default} | {_cell(parameter.doc)} |"
        )
    return "\n".join(lines) + "\n"


FORMATS = {"ini": ini, "markdown": markdown}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m mta.config.docs",
        description="Print documentation generated from mta.config.schema.",
        epilog=f"Regenerate the example configuration with: {REGENERATE}",
    )
    parser.add_argument("format", choices=sorted(FORMATS),
                        help="ini: the annotated example configuration (etc/mta.ini); "
                             "markdown: the README's parameter table")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    sys.stdout.write(FORMATS[args.format]())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
