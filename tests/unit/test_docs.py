"""mta.config.docs: etc/mta.ini and the README's table stay in step with the schema."""

import os
import re


from mta.config import docs, load
from mta.config.schema import DEFAULT_LISTENERS, PARAMETERS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "etc", "mta.ini")
README = os.path.join(ROOT, "README.md")
BEGIN, END = "<!-- parameters:begin -->", "<!-- parameters:end -->"


def test_example_configuration_is_generated():
    with open(EXAMPLE, encoding="utf-8") as f:
        current = f.read()
    assert current == docs.ini(), (
        f"etc/mta.ini is out of step with mta.config.schema; run `{docs.REGENERATE}` from the top directory"
    )


def test_example_configuration_loads_and_starts_as_is():
    config = load(EXAMPLE)
    assert config.main.setHere() == ()  # every parameter is commented out: the defaults
    assert [(l.name, l.endpoint) for l in config.listeners] == [DEFAULT_LISTENERS[0]]
    assert config.listeners[0].endpoint == "tcp:port=2525:interface=127.0.0.1"


def test_the_example_listeners_work_when_uncommented(tmp_path):
    from tests.tlssupport import Certificates

    certs = Certificates(tmp_path)
    lines = docs.ini().splitlines()
    start = lines.index("[listener:smtp]")
    assignment = re.compile(r"#(\[listener:|[A-Za-z0-9_]+ = )")
    enabled = lines[:start + 1] + [line[1:] for line in lines[start + 1:] if assignment.match(line)]
    main = lines.index("[main]")
    enabled[main + 1:main + 1] = [f"smtpd_tls_cert_file = {certs['server.pem']}",
                                  f"smtpd_tls_key_file = {certs['server.key']}"]
    path = tmp_path / "enabled.ini"
    path.write_text("\n".join(enabled) + "\n")
    config = load(str(path))
    smtp, submission, submissions = config.listeners
    assert [(listener.name, listener.endpoint) for listener in config.listeners] == [
        ("smtp", "tcp:port=25"), ("submission", "tcp:port=587"), ("submissions", "tcp:port=465")]
    assert (smtp.settings.tls.level, submission.settings.tls.level) == ("may", "encrypt")
    assert submissions.settings.tls.wrapperMode and submissions.settings.tls.enabled
    assert submission.params["smtpd_recipient_limit"] == 100
    assert smtp.params["smtpd_recipient_limit"] == 1000
    assert (submission.settings.sasl.enabled, submission.settings.sasl.tlsAuthOnly) == (True, True)
    assert submissions.settings.sasl.enabled and not smtp.settings.sasl.enabled
    assert "permit_sasl_authenticated" in submission.params["smtpd_relay_restrictions"]


def test_every_parameter_uncommented_gives_its_default(tmp_path):
    # Uncommenting '#name = value' lines in [main] must give valid values equal to the defaults.
    text = docs.ini()
    main, listeners = text.split("\n[listener:", 1)
    uncommented = re.sub(r"(?m)^#([A-Za-z0-9_]+ =)", r"\1", main)  # Postfix's smtpd_tls_CAfile has capitals
    path = tmp_path / "all.ini"
    path.write_text(uncommented + "\n[listener:" + listeners)
    config = load(str(path))
    assert sorted(e.key for e in config.main.setHere()) == sorted(p.name for p in PARAMETERS)
    # the defaults, with the computed ones replaced by the examples shown
    reference = tmp_path / "reference.ini"
    reference.write_text("[main]\n" + "".join(f"{k} = {v}\n" for k, v in docs.EXAMPLES.items()))
    defaults = load(str(reference))
    for parameter in PARAMETERS:
        assert config[parameter.name] == defaults[parameter.name], parameter.name


def test_ini_blocks():
    text = docs.ini()
    for parameter in PARAMETERS:
        block = f"# {parameter.doc}\n# Type: {docs.typeText(parameter.type)}.\n"
        assert block in text, parameter.name
        if callable(parameter.default):
            assert f"# Default: computed at start-up: {docs.computedRule(parameter)}" in text
        else:
            assert re.search(rf"(?m)^#{parameter.name} =( {re.escape(parameter.default)})?$", text), parameter.name
    for group in {p.group for p in PARAMETERS}:
        assert f"# == {group} ==" in text
    assert text.index("[main]") < text.index("[listener:smtp]")


def test_computed_defaults_are_described_not_evaluated(monkeypatch):
    from mta.config import schema

    monkeypatch.setattr(schema, "_hostname", lambda: "unique-host-4711.generated.test")
    assert schema.defaultMyhostname() == "unique-host-4711.generated.test"
    for text in (docs.ini(), docs.markdown()):
        assert "unique-host-4711" not in text
        assert "generated.test" not in text
        assert "gethostname() if it is fully qualified, else that name plus .localdomain." in text
        assert "$myhostname less its first label, or localdomain (Postfix's rule)." in text


def test_typeText():
    from mta.config import types as T

    assert docs.typeText(T.Time("d")) == "time (unit s, m, h, d or w; without one: d)"
    assert docs.typeText(T.Integer(minimum=80)) == "integer (at least 80)"
    assert docs.typeText(T.Integer()) == "integer"
    assert docs.typeText(T.Choice(("a", "b"))) == "choice (a, b)"
    assert docs.typeText(T.String()) == "string"


def markdownRows(text):
    rows = []
    for line in text.strip().splitlines():
        cells = re.split(r"(?<!\\)\|", line)
        assert cells[0] == "" and cells[-1] == "", line
        rows.append([cell.strip() for cell in cells[1:-1]])
    return rows


def test_markdown_table():
    rows = markdownRows(docs.markdown())
    assert rows[0] == ["parameter", "type", "default", "description"]
    assert rows[1] == ["---"] * 4
    assert [row[0] for row in rows[2:]] == [f"`{p.name}`" for p in PARAMETERS]
    byName = {row[0].strip("`"): row for row in rows[2:]}
    assert byName["message_size_limit"][1:] == [
        docs.typeText(PARAMETERS[[p.name for p in PARAMETERS].index("message_size_limit")].type),
        "`10240000`",
        "The largest message accepted, in bytes, envelope and headers included.",
    ]
    assert byName["relayhost"][2] == "*(empty)*"
    assert byName["myhostname"][2].startswith("computed: gethostname()")


def test_markdown_escapes_pipes():
    assert docs._cell("a|b") == "a\\|b"
    assert docs._code("x | y") == "`x \\| y`"


def test_main(capsys):
    assert docs.main(["ini"]) == 0
    assert capsys.readouterr().out == docs.ini()
    assert docs.main(["markdown"]) == 0
    assert capsys.readouterr().out == docs.markdown()
    assert docs.main(["html"]) == 2
    assert "invalid choice: 'html'" in capsys.readouterr().err


def test_readme_table_lists_every_parameter():
    assert os.path.exists(README), "README.md does not exist yet"
    with open(README, encoding="utf-8") as f:
        text = f.read()
    assert BEGIN in text and END in text, f"README.md has no {BEGIN} ... {END} markers"
    table = text.split(BEGIN, 1)[1].split(END, 1)[0]
    names = {row[0].strip("`") for row in markdownRows(table)[2:]}
    missing = [p.name for p in PARAMETERS if p.name not in names]
    assert not missing, (
        f"README.md's parameter table lacks {', '.join(missing)}; paste the output of "
        "`python -m mta.config.docs markdown` between the markers (scripts/gen-docs does both)"
    )
    assert table.strip() == docs.markdown().strip(), (
        "README.md's parameter table is out of step with mta.config.schema; paste the output of "
        "`python -m mta.config.docs markdown` between the markers (scripts/gen-docs does both)"
    )
