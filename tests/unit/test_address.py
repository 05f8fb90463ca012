"""Tests for mta.address: envelope path and MAIL/RCPT parameter parsing."""

import pytest

from mta.address import (
    MailParameters,
    NonAsciiPathError,
    ParameterError,
    PathError,
    RcptParameters,
    SizeExceeded,
    formatAddress,
    parseDomain,
    parseMailParameters,
    parsePath,
    parseRcptParameters,
    splitPathAndParameters,
    xtextDecode,
    xtextEncode,
)
from mta.model import NULL_SENDER, Address

ALL = frozenset({"SIZE", "8BITMIME", "SMTPUTF8", "DSN", "BINARYMIME", "CHUNKING", "AUTH"})


def rcpt(path, smtputf8=False):
    return parsePath(path, allowNull=False, smtputf8=smtputf8)


def mail(path, smtputf8=False):
    return parsePath(path, allowNull=True, smtputf8=smtputf8)


def assertSafe(message):
    """Error messages go into replies: printable ASCII only."""
    assert message
    assert all(" " <= c <= "~" for c in message), repr(message)


# -- splitPathAndParameters ------------------------------------------------------


class TestSplit:
    @pytest.mark.parametrize("strict", [True, False])
    def test_plain(self, strict):
        assert splitPathAndParameters("<user@example.com>", strict) == ("<user@example.com>", [])

    @pytest.mark.parametrize("strict", [True, False])
    def test_spaces_after_colon(self, strict):
        assert splitPathAndParameters("   <user@example.com>", strict) == ("<user@example.com>", [])

    @pytest.mark.parametrize("strict", [True, False])
    def test_null(self, strict):
        assert splitPathAndParameters("<>", strict) == ("<>", [])
        assert splitPathAndParameters("<> SIZE=10", strict) == ("<>", [("SIZE", "10")])

    @pytest.mark.parametrize("strict", [True, False])
    def test_parameters_in_order_uppercased(self, strict):
        path, params = splitPathAndParameters(
            "<a@example.com> size=1000 Body=8BITMIME smtputf8 ret=hdrs ENVID=QQ+2Bx", strict
        )
        assert path == "<a@example.com>"
        assert params == [
            ("SIZE", "1000"),
            ("BODY", "8BITMIME"),
            ("SMTPUTF8", None),
            ("RET", "hdrs"),
            ("ENVID", "QQ+2Bx"),
        ]

    def test_extra_and_trailing_spaces_tolerated(self):
        assert splitPathAndParameters("<a@b.example>   SIZE=1   BODY=7BIT  ", True) == (
            "<a@b.example>",
            [("SIZE", "1"), ("BODY", "7BIT")],
        )

    def test_strict_refuses_bare_address(self):
        with pytest.raises(PathError, match="<>"):
            splitPathAndParameters("user@example.com", True)

    def test_lenient_accepts_bare_address(self):
        assert splitPathAndParameters("user@example.com", False) == ("<user@example.com>", [])

    def test_lenient_bare_address_with_parameters_as_postfix(self):
        # Postfix 3.7 (strict_rfc821_envelopes=no) answers 250 to this.
        assert splitPathAndParameters("user@example.com SIZE=100", False) == (
            "<user@example.com>",
            [("SIZE", "100")],
        )

    def test_lenient_bare_quoted_local_part(self):
        assert splitPathAndParameters('"john smith"@example.com BODY=7BIT', False) == (
            '<"john smith"@example.com>',
            [("BODY", "7BIT")],
        )

    @pytest.mark.parametrize("argument", ["user@example.com>", "a<b@example.com", "<user@example.com"])
    def test_unbalanced_brackets(self, argument):
        with pytest.raises(PathError):
            splitPathAndParameters(argument, False)

    @pytest.mark.parametrize("strict", [True, False])
    def test_rfc822_forms_refused(self, strict):
        # Postfix accepts these with strict_rfc821_envelopes=no; we do not.
        with pytest.raises(PathError):
            splitPathAndParameters("<Joe <joe@example.com>>", strict)

    def test_comment_in_path_ends_up_refused_by_parsePath(self):
        path, params = splitPathAndParameters("<joe@example.com (comment)>", False)
        assert params == []
        with pytest.raises(PathError):
            mail(path)

    @pytest.mark.parametrize("strict", [True, False])
    def test_nested_angle_bracket(self, strict):
        with pytest.raises(PathError, match="unexpected <"):
            splitPathAndParameters("<a<b@example.com> SIZE=1", strict)

    @pytest.mark.parametrize("strict", [True, False])
    def test_garbage_glued_to_path(self, strict):
        with pytest.raises(PathError, match="garbage"):
            splitPathAndParameters("<user@example.com>SIZE=100", strict)

    def test_quoted_gt_does_not_end_path(self):
        assert splitPathAndParameters('<"a>b"@example.com> SIZE=1', True) == (
            '<"a>b"@example.com>',
            [("SIZE", "1")],
        )

    def test_quoted_escaped_quote(self):
        assert splitPathAndParameters(r'<"a\">"@example.com>', True) == (r'<"a\">"@example.com>', [])

    @pytest.mark.parametrize("argument", ['<"abc@example.com>', '"abc@example.com'])
    def test_unbalanced_quote(self, argument):
        with pytest.raises(PathError, match="quote"):
            splitPathAndParameters(argument, False)

    @pytest.mark.parametrize("argument", ["", "   "])
    def test_missing(self, argument):
        with pytest.raises(PathError, match="missing"):
            splitPathAndParameters(argument, False)

    def test_second_address_is_a_bad_parameter(self):
        with pytest.raises(ParameterError) as e:
            splitPathAndParameters("<user@example.com> <other@example.com>", True)
        assertSafe(str(e.value))

    @pytest.mark.parametrize(
        "argument",
        [
            "<user@example.com>\r\nRCPT TO:<x@evil.example>",
            "<user@example.com\r\n>",
            "<user@exa\x00mple.com>",
            "<user@example.com>\n",
            "<us\ter@example.com>",
        ],
    )
    def test_control_characters_in_path(self, argument):
        with pytest.raises((PathError, ParameterError)) as e:
            splitPathAndParameters(argument, False)
        assertSafe(str(e.value))

    @pytest.mark.parametrize(
        "argument",
        ["<a@example.com> SIZE=1\x00", "<a@example.com> ENVID=x\rRCPT", "<a@example.com>\tSIZE=1"],
    )
    def test_control_characters_in_parameters(self, argument):
        with pytest.raises((ParameterError, PathError)) as e:
            splitPathAndParameters(argument, True)
        assert "\x00" not in str(e.value) and "\r" not in str(e.value)
        assertSafe(str(e.value))

    def test_nul_in_parameter_is_a_parameter_error(self):
        with pytest.raises(ParameterError, match="control"):
            splitPathAndParameters("<a@example.com> SIZE=1\x00", True)

    def test_duplicate_keywords(self):
        with pytest.raises(ParameterError, match="duplicate parameter SIZE"):
            splitPathAndParameters("<a@example.com> SIZE=1 size=2", True)

    @pytest.mark.parametrize(
        "word",
        ["-FOO=1", "FO_O=1", "=1", "SIZE=", "FOO=a=b", "F\u00dcO=1", "FOO=\u00e9"],
    )
    def test_malformed_parameters(self, word):
        with pytest.raises(ParameterError) as e:
            splitPathAndParameters("<a@example.com> " + word, True)
        assertSafe(str(e.value))

    def test_keyword_syntax(self):
        assert splitPathAndParameters("<a@example.com> X-FOO-1=v 9X", True)[1] == [("X-FOO-1", "v"), ("9X", None)]

    def test_value_characters(self):
        value = "".join(chr(c) for c in range(33, 127) if c != 61)
        assert splitPathAndParameters("<a@example.com> X=" + value, True)[1] == [("X", value)]

    def test_utf8_value_needs_smtputf8(self):
        with pytest.raises(ParameterError, match="SMTPUTF8"):
            splitPathAndParameters("<a@example.com> X=caf\u00e9", True)
        assert splitPathAndParameters("<a@example.com> SMTPUTF8 X=caf\u00e9", True)[1] == [
            ("SMTPUTF8", None),
            ("X", "caf\u00e9"),
        ]
        assert splitPathAndParameters("<a@example.com> X=caf\u00e9", True, smtputf8=True)[1] == [("X", "caf\u00e9")]
        with pytest.raises(ParameterError):
            splitPathAndParameters("<a@example.com> SMTPUTF8 X=caf\u00e9", True, smtputf8=False)

    def test_utf8_value_never_holds_unicode_controls(self):
        for bad in ("\u0085", "\u2028", "\u202e", "\u00a0"):
            with pytest.raises(ParameterError):
                splitPathAndParameters("<a@example.com> SMTPUTF8 X=a" + bad, True)

    def test_huge_argument(self):
        with pytest.raises(PathError, match="too long"):
            splitPathAndParameters("<" + "a" * 100000 + "@example.com>", False)


# -- parsePath ------------------------------------------------------------------------


class TestParsePath:
    def test_simple(self):
        assert rcpt("<user@example.com>") == Address("user", "example.com")

    def test_null_sender(self):
        assert mail("<>") is NULL_SENDER
        with pytest.raises(PathError, match="null"):
            rcpt("<>")

    def test_domain_lowercased_local_kept(self):
        assert rcpt("<John.Doe@Example.COM>") == Address("John.Doe", "example.com")

    def test_mixed_case_relay_domain(self):
        assert rcpt("<user@ReLaY.ExAmPlE>").domain == "relay.example"

    def test_source_route_stripped(self):
        assert rcpt("<@evil.example:user@good.example>") == Address("user", "good.example")
        assert mail("<@a.example,@B.example:user@c.example>") == Address("user", "c.example")

    @pytest.mark.parametrize(
        "path",
        [
            "<@evil.example>",
            "<@evil.example:>",
            "<@evil.example,user@good.example>",
            "<@:user@good.example>",
            "<@evil..example:user@good.example>",
            "<@evil.example,:user@good.example>",
            "<@[1.2.3.4]:user@good.example>",
            "<evil.example:user@good.example>",
        ],
    )
    def test_bad_source_routes(self, path):
        with pytest.raises(PathError):
            rcpt(path)

    # relay tricks: the split the relay check will judge
    def test_percent_hack(self):
        assert rcpt("<user%other@relay.example>") == Address("user%other", "relay.example")

    def test_bang_path(self):
        assert rcpt("<other!user@relay.example>") == Address("other!user", "relay.example")

    def test_quoted_at_in_local_part(self):
        address = rcpt('<"user@other"@relay.example>')
        assert address == Address("user@other", "relay.example")
        assert str(address) == '"user@other"@relay.example'

    def test_quoted_percent_and_bang(self):
        assert rcpt('<"user%other"@relay.example>') == Address("user%other", "relay.example")
        assert rcpt('<"other!user@x"@Relay.Example>') == Address("other!user@x", "relay.example")

    def test_domain_literal(self):
        assert rcpt("<user@[127.0.0.1]>") == Address("user", "[127.0.0.1]")

    def test_trailing_dot(self):
        with pytest.raises(PathError, match="trailing dot"):
            rcpt("<user@relay.example.>")

    def test_only_last_at_is_not_used_to_split(self):
        # user@other@relay: "@" is not atext, so this is not a mailbox.
        with pytest.raises(PathError):
            rcpt("<user@other@relay.example>")

    @pytest.mark.parametrize(
        "path,local",
        [
            ('<"john smith"@example.com>', "john smith"),
            ('<"a\\"b"@example.com>', 'a"b'),
            ('<"a\\\\b"@example.com>', "a\\b"),
            ('<"\\a"@example.com>', "a"),
            ('<"user"@example.com>', "user"),
            ('<"a..b"@example.com>', "a..b"),
            ('<".a"@example.com>', ".a"),
            ('<"a>b"@example.com>', "a>b"),
            ('<"a<b"@example.com>', "a<b"),
            ('<"a,b:c"@example.com>', "a,b:c"),
        ],
    )
    def test_quoted_local_parts(self, path, local):
        assert rcpt(path) == Address(local, "example.com")

    @pytest.mark.parametrize(
        "path",
        [
            '<""@example.com>',
            '<"abc@example.com>',
            '<"abc"def@example.com>',
            '<abc"def"@example.com>',
            '<"ab\\',
            '<"a\\\x01"@example.com>',
            '<"a\tb"@example.com>',
        ],
    )
    def test_bad_quoted_local_parts(self, path):
        with pytest.raises(PathError):
            rcpt(path)

    @pytest.mark.parametrize(
        "local",
        ["a", "a.b", "a.b.c", "user+tag", "a!#$%&'*+-/=?^_`{|}~z", "0"],
    )
    def test_dot_atoms(self, local):
        assert rcpt(f"<{local}@example.com>") == Address(local, "example.com")

    @pytest.mark.parametrize(
        "path,message",
        [
            ("<.user@example.com>", "dots"),
            ("<user.@example.com>", "dots"),
            ("<us..er@example.com>", "dots"),
            ("<us er@example.com>", "space"),
            ("<us(er@example.com>", "bad character"),
            ("<us\\er@example.com>", "bad character"),
            ("<us[er@example.com>", "bad character"),
            ("<@example.com>", "source route"),
            ("<user@>", "missing domain"),
            ("<user@@example.com>", "bad character in domain"),
            ("<user>", "no domain"),
            ("<root>", "no domain"),
            ("user@example.com", "<>"),
            ("<user@example.com", "<>"),
            ("user@example.com>", "<>"),
            ("<<user@example.com>>", "bad character in local part"),
            ("<joe@example.com (comment)>", "bad character in domain"),
            ("<Joe <joe@example.com>>", "space in address"),
        ],
    )
    def test_bad_syntax(self, path, message):
        with pytest.raises(PathError, match=message) as e:
            rcpt(path)
        assertSafe(str(e.value))

    def test_postmaster_without_domain_for_rcpt(self):
        assert rcpt("<postmaster>") == Address("postmaster", "")
        assert rcpt("<PostMaster>") == Address("postmaster", "")
        assert str(rcpt("<POSTMASTER>")) == "postmaster"

    def test_postmaster_without_domain_not_for_mail(self):
        with pytest.raises(PathError, match="no domain"):
            mail("<postmaster>")
        assert parsePath("<postmaster>", True, allowPostmaster=True) == Address("postmaster", "")
        with pytest.raises(PathError):
            parsePath("<postmaster>", False, allowPostmaster=False)

    def test_postmaster_forms_that_are_not_special(self):
        assert rcpt("<Postmaster@Example.com>") == Address("Postmaster", "example.com")
        for path in ('<"postmaster">', "<@a.example:postmaster>", "<postmaster.>", "<postmasters>"):
            with pytest.raises(PathError):
                rcpt(path)

    # -- domains

    @pytest.mark.parametrize(
        "domain,expected",
        [
            ("example.com", "example.com"),
            ("EXAMPLE.COM", "example.com"),
            ("localhost", "localhost"),
            ("a-b.c-d.example", "a-b.c-d.example"),
            ("1.2.3.4", "1.2.3.4"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("a.b.c.d.e.f.g", "a.b.c.d.e.f.g"),
            ("0ab.example", "0ab.example"),
        ],
    )
    def test_good_domains(self, domain, expected):
        assert rcpt(f"<u@{domain}>") == Address("u", expected)

    @pytest.mark.parametrize(
        "domain,message",
        [
            ("-example.com", "label"),
            ("example-.com", "label"),
            ("exa_mple.com", "bad character"),
            ("example..com", "empty label"),
            (".example.com", "empty label"),
            ("example.com.", "trailing dot"),
            ("exa mple.com", "bad character"),
            ("example.com:25", "bad character"),
            ("exam/ple.com", "bad character"),
            ("exam\\ple.com", "bad character"),
        ],
    )
    def test_bad_domains(self, domain, message):
        with pytest.raises(PathError, match=message):
            rcpt(f"<u@{domain}>")

    # -- address literals

    @pytest.mark.parametrize(
        "literal,expected",
        [
            ("[1.2.3.4]", "[1.2.3.4]"),
            ("[127.0.0.1]", "[127.0.0.1]"),
            ("[IPv6:::1]", "[IPv6:::1]"),
            ("[ipv6:::1]", "[IPv6:::1]"),
            ("[IPV6:2001:DB8::1]", "[IPv6:2001:db8::1]"),
            ("[IPv6:2001:db8:0:0:0:0:0:1]", "[IPv6:2001:db8::1]"),
            ("[IPv6:::ffff:192.0.2.1]", "[IPv6:::ffff:c000:201]"),
        ],
    )
    def test_address_literals(self, literal, expected):
        assert rcpt(f"<user@{literal}>") == Address("user", expected)

    @pytest.mark.parametrize(
        "literal,message",
        [
            ("[1.2.3.999]", "IPv4"),
            ("[1.2.3]", "IPv4"),
            ("[010.1.2.3]", "IPv4"),
            ("[]", "IPv4"),
            ("[ 1.2.3.4]", "IPv4"),
            ("[::1]", "unsupported"),
            ("[IPv6:1.2.3.4]", "IPv6"),
            ("[IPv6:fe80::1%eth0]", "IPv6"),
            ("[IPv6:2001:db8::1::2]", "IPv6"),
            ("[IPv6:]", "IPv6"),
            ("[foo:bar]", "unsupported"),
            ("[x400:c=us]", "unsupported"),
            ("[1.2.3.4", "unbalanced"),
            ("[1.2.[3].4]", "unbalanced"),
            ("[1.2.3.4]x", "unbalanced"),
        ],
    )
    def test_bad_address_literals(self, literal, message):
        with pytest.raises(PathError, match=message):
            rcpt(f"<user@{literal}>")

    def test_parseDomain_public(self):
        assert parseDomain("MX.Example.ORG") == "mx.example.org"
        assert parseDomain("[IPv6:0::1]") == "[IPv6:::1]"
        with pytest.raises(PathError):
            parseDomain("")

    # -- control characters and injection

    @pytest.mark.parametrize(
        "path",
        [
            "<user@example.com\r\n>",
            "<user\r\nRCPT TO:<x@evil.example>@example.com>",
            "<user@exa\x00mple.com>",
            "<u\x00ser@example.com>",
            "<u\x01ser@example.com>",
            "<user@example.com\x7f>",
            '<"u\r\nser"@example.com>',
            '<"u\\\rser"@example.com>',
            '<"u\x00"@example.com>',
            "<user@[1.2.3.4\n]>",
            "<@a.exa\nmple:user@example.com>",
        ],
    )
    @pytest.mark.parametrize("smtputf8", [False, True])
    def test_control_characters(self, path, smtputf8):
        with pytest.raises(PathError) as e:
            parsePath(path, allowNull=True, smtputf8=smtputf8)
        assert "control character" in str(e.value)
        assertSafe(str(e.value))

    def test_c1_control_even_with_smtputf8(self):
        with pytest.raises(PathError, match="control"):
            rcpt("<u\u0085ser@example.com>", smtputf8=True)

    # -- length limits (RFC 5321 4.5.3.1)

    def test_local_part_64_ok_65_refused(self):
        assert rcpt(f"<{'a' * 64}@example.com>").local == "a" * 64
        with pytest.raises(PathError, match="local part exceeds 64 octets"):
            rcpt(f"<{'a' * 65}@example.com>")

    def test_local_part_limit_counts_quotes_as_sent(self):
        assert rcpt(f'<"{"a" * 62}"@example.com>').local == "a" * 62
        with pytest.raises(PathError, match="local part exceeds 64"):
            rcpt(f'<"{"a" * 63}"@example.com>')

    def test_local_part_limit_counts_octets(self):
        e32 = "\u00e9" * 32  # 64 octets in UTF-8
        assert rcpt(f"<{e32}@example.com>", smtputf8=True).local == e32
        with pytest.raises(PathError, match="local part exceeds 64 octets"):
            rcpt(f"<{e32}a@example.com>", smtputf8=True)

    @staticmethod
    def domainOf(length):
        """A valid domain of exactly `length` octets (labels of 63)."""
        labels = []
        remaining = length
        while remaining > 0:
            size = min(63, remaining)
            if remaining - size == 1:  # avoid a trailing 0-char label
                size -= 1
            labels.append("d" * size)
            remaining -= size + 1
        domain = ".".join(labels)
        assert len(domain) == length, len(domain)
        return domain

    def test_domain_255_passes_domain_limit_256_refused(self):
        # <u@ + 255 + > is 259 octets: the path limit is what refuses it.
        with pytest.raises(PathError, match="path exceeds 256 octets"):
            rcpt(f"<u@{self.domainOf(255)}>")
        with pytest.raises(PathError, match="domain exceeds 255 octets"):
            rcpt(f"<u@{self.domainOf(256)}>")
        assert parseDomain(self.domainOf(255)) == self.domainOf(255)
        with pytest.raises(PathError, match="domain exceeds 255 octets"):
            parseDomain(self.domainOf(256))

    def test_path_256_ok_257_refused(self):
        local = "l" * 64
        domain = self.domainOf(256 - 64 - 3)
        path = f"<{local}@{domain}>"
        assert len(path) == 256
        assert rcpt(path) == Address(local, domain)
        domain = self.domainOf(257 - 64 - 3)
        path = f"<{local}@{domain}>"
        assert len(path) == 257
        with pytest.raises(PathError, match="path exceeds 256 octets"):
            rcpt(path)

    def test_path_limit_counts_source_route(self):
        domain = self.domainOf(200)
        assert rcpt(f"<@{'r' * 40}:user@{domain}>") == Address("user", domain)
        with pytest.raises(PathError, match="path exceeds 256"):
            rcpt(f"<@{'r' * 60}:user@{domain}>")

    def test_label_63_ok_64_refused(self):
        assert rcpt(f"<u@{'x' * 63}.example>").domain == "x" * 63 + ".example"
        with pytest.raises(PathError, match="label exceeds 63"):
            rcpt(f"<u@{'x' * 64}.example>")

    def test_huge_path_refused_early(self):
        with pytest.raises(PathError, match="path exceeds 256"):
            rcpt("<" + "a" * 50000 + "@example.com>")

    # -- SMTPUTF8

    def test_non_ascii_needs_smtputf8(self):
        for path in ("<\u00fcser@example.com>", "<user@ex\u00e4mple.com>"):
            with pytest.raises(NonAsciiPathError, match="SMTPUTF8"):
                rcpt(path)
            with pytest.raises(PathError):
                mail(path)

    def test_non_ascii_with_smtputf8(self):
        assert rcpt("<\u00dcser@Ex\u00c4mple.com>", smtputf8=True) == Address("\u00dcser", "ex\u00e4mple.com")
        assert rcpt("<\u7528\u6237@\u4f8b\u5b50.\u6d4b\u8bd5>", smtputf8=True) == Address(
            "\u7528\u6237", "\u4f8b\u5b50.\u6d4b\u8bd5"
        )
        assert rcpt('<"J\u00fcrgen M"@example.com>', smtputf8=True) == Address("J\u00fcrgen M", "example.com")

    @pytest.mark.parametrize(
        "domain,message",
        [
            ("ex\u00e4mple\u3002com", "bad character"),  # ideographic full stop
            ("ex\u00e4\u00a0mple.com", "bad character"),  # no-break space
            ("ex\u00e4\u2028mple.com", "bad character"),  # line separator
            ("ex\u00e4\u202emple.com", "bad character"),  # RTL override
            ("-\u00e4.example", "label"),
            ("\u00e4-.example", "label"),
            ("\u0301a.example", "label"),  # leading combining mark
            ("\u00e4!.example", "bad character"),
            ("\u00e4_b.example", "bad character"),
            ("\u2603.example", "bad character"),  # snowman: a symbol
            ("\u00e4" * 60 + ".example", "label exceeds 63"),
            ("\u00e4mple.com.", "trailing dot"),
        ],
    )
    def test_bad_unicode_domains(self, domain, message):
        with pytest.raises(PathError, match=message):
            rcpt(f"<u@{domain}>", smtputf8=True)

    @pytest.mark.parametrize("local", ["\u00fc\u2028x", "\u00fc\u00a0x", "\u00fc\u202ex", "\u00fc\u200bx"])
    def test_bad_unicode_local_parts(self, local):
        with pytest.raises(PathError):
            rcpt(f"<{local}@example.com>", smtputf8=True)

    def test_surrogates_refused(self):
        with pytest.raises(PathError):
            rcpt("<a\udcc3@example.com>", smtputf8=True)

    @pytest.mark.parametrize(
        "path",
        [
            "<\x1b[31mred@example.com>",
            "<u\u202eser@example.com>",
            "<u\u0000@example.com>",
            '<"a\r\nb"@example.com>',
            "<a@exa\u2028mple.com>",
            "<a@[IPv6:\u0661::1]>",
            "<a@[1.2.3.4\x00]>",
            "<a@-\u00e4.example>",
        ],
    )
    @pytest.mark.parametrize("smtputf8", [False, True])
    def test_messages_never_echo_input(self, path, smtputf8):
        with pytest.raises(PathError) as e:
            parsePath(path, allowNull=True, smtputf8=smtputf8)
        assertSafe(str(e.value))
        assert "example" not in str(e.value)


# -- formatAddress ------------------------------------------------------------------


class TestFormat:
    @pytest.mark.parametrize(
        "address,text",
        [
            (NULL_SENDER, ""),
            (Address("user", "example.com"), "user@example.com"),
            (Address("a.b+c", "example.com"), "a.b+c@example.com"),
            (Address("user%other", "relay.example"), "user%other@relay.example"),
            (Address("other!user", "relay.example"), "other!user@relay.example"),
            (Address("user@other", "relay.example"), '"user@other"@relay.example'),
            (Address("john smith", "example.com"), '"john smith"@example.com'),
            (Address('a"b', "example.com"), '"a\\"b"@example.com'),
            (Address("a\\b", "example.com"), '"a\\\\b"@example.com'),
            (Address("a..b", "example.com"), '"a..b"@example.com'),
            (Address(".a", "example.com"), '".a"@example.com'),
            (Address("a.", "example.com"), '"a."@example.com'),
            (Address("user", "[127.0.0.1]"), "user@[127.0.0.1]"),
            (Address("user", "[IPv6:::1]"), "user@[IPv6:::1]"),
            (Address("postmaster", ""), "postmaster"),
            (Address("\u00fcser", "ex\u00e4mple.com"), "\u00fcser@ex\u00e4mple.com"),
        ],
    )
    def test_format(self, address, text):
        assert formatAddress(address) == text
        assert str(address) == text

    @pytest.mark.parametrize(
        "path",
        [
            "<user@example.com>",
            '<"user@other"@relay.example>',
            '<"john smith"@example.com>',
            '<"a\\"b\\\\c"@example.com>',
            "<user%other@relay.example>",
            "<user@[IPv6:2001:db8::1]>",
            "<a!#$%&'*+-/=?^_`{|}~z@example.com>",
        ],
    )
    def test_round_trip(self, path):
        address = rcpt(path)
        assert rcpt(f"<{formatAddress(address)}>") == address
        assert f"<{address}>" == path

    def test_quoted_dot_atom_is_formatted_unquoted(self):
        assert str(rcpt('<"user"@example.com>')) == "user@example.com"

    @pytest.mark.parametrize(
        "address", [Address("a\r\nb", "example.com"), Address("a", "exa\nmple.com"), Address("a\x00", "x")]
    )
    def test_control_characters_refused(self, address):
        with pytest.raises(ValueError):
            formatAddress(address)


# -- xtext -------------------------------------------------------------------------------


class TestXtext:
    @pytest.mark.parametrize(
        "encoded,decoded",
        [
            ("", ""),
            ("abc", "abc"),
            ("a+2Bb", "a+b"),
            ("a+3Db", "a=b"),
            ("a+20b", "a b"),
            ("user@example.com", "user@example.com"),
            ("+2B+3D", "+="),
            ("!~<>", "!~<>"),
            ("caf+C3+A9", "caf\u00e9"),
        ],
    )
    def test_decode(self, encoded, decoded):
        assert xtextDecode(encoded) == decoded

    @pytest.mark.parametrize(
        "encoded,message",
        [
            ("a+2bb", "hex"),  # lower-case hex: RFC 3461 wants upper case
            ("a+2", "hex"),
            ("a+", "hex"),
            ("a+GG", "hex"),
            ("a+ 2B", "hex"),
            ("a=b", "bad character"),
            ("a b", "bad character"),
            ("caf\u00e9", "bad character"),
            ("a\x00", "bad character"),
            ("a+0D+0A", "control"),
            ("a+00", "control"),
            ("a+7F", "control"),
            ("a+C2+85", "control"),
            ("a+C3", "UTF-8"),
            ("a+FF", "UTF-8"),
        ],
    )
    def test_decode_errors(self, encoded, message):
        with pytest.raises(ParameterError, match=message) as e:
            xtextDecode(encoded)
        assertSafe(str(e.value))

    @pytest.mark.parametrize(
        "text,encoded",
        [
            ("", ""),
            ("abc", "abc"),
            ("a+b", "a+2Bb"),
            ("a=b", "a+3Db"),
            ("a b", "a+20b"),
            ("a\r\n", "a+0D+0A"),
            ("caf\u00e9", "caf+C3+A9"),
            ("~!", "~!"),
        ],
    )
    def test_encode(self, text, encoded):
        assert xtextEncode(text) == encoded

    def test_round_trip_all_printable(self):
        text = "".join(chr(c) for c in range(32, 127)) + "\u00e9\u4f8b"
        assert xtextDecode(xtextEncode(text)) == text


# -- MAIL parameters -------------------------------------------------------------------


def mailParams(argument, offered=ALL, sizeLimit=10240000):
    _, params = splitPathAndParameters("<a@example.com> " + argument, True)
    return parseMailParameters(params, sizeLimit=sizeLimit, offered=offered)


class TestMailParameters:
    def test_defaults(self):
        assert parseMailParameters([], sizeLimit=0, offered=frozenset()) == MailParameters(
            size=None, body="7BIT", smtputf8=False, ret=None, envid=None, auth=None
        )

    def test_all(self):
        result = mailParams("SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1 AUTH=joe+2Bx@example.com")
        assert result == MailParameters(
            size=1000, body="8BITMIME", smtputf8=True, ret="HDRS", envid="QQ+1", auth="joe+x@example.com"
        )

    @pytest.mark.parametrize(
        "value,size", [("0", 0), ("10240000", 10240000), ("00100", 100), ("9" * 20, 10**20 - 1)]
    )
    def test_size(self, value, size):
        assert mailParams(f"SIZE={value}", sizeLimit=0).size == size

    @pytest.mark.parametrize("value", ["abc", "-1", "+1", "1.5", "1e3", "9" * 21, "\uff11"])
    def test_bad_size(self, value):
        with pytest.raises(ParameterError):
            parseMailParameters([("SIZE", value)], sizeLimit=0, offered=ALL)

    def test_size_needs_value(self):
        with pytest.raises(ParameterError, match="SIZE needs a value"):
            mailParams("SIZE")

    def test_size_limit(self):
        assert mailParams("SIZE=1000", sizeLimit=1000).size == 1000
        with pytest.raises(SizeExceeded) as e:
            mailParams("SIZE=1001", sizeLimit=1000)
        assertSafe(str(e.value))
        assert not isinstance(e.value, ParameterError)
        assert mailParams("SIZE=99999999999", sizeLimit=0).size == 99999999999
        with pytest.raises(SizeExceeded):
            mailParams("SIZE=2", sizeLimit=1)

    def test_malformed_wins_over_size_exceeded(self):
        with pytest.raises(ParameterError):
            mailParams("SIZE=5000 FOO=bar", sizeLimit=1000)

    @pytest.mark.parametrize(
        "value,body",
        [("7BIT", "7BIT"), ("7bit", "7BIT"), ("8BITMIME", "8BITMIME"), ("8bitMIME", "8BITMIME"),
         ("BINARYMIME", "BINARYMIME"), ("binarymime", "BINARYMIME")],
    )
    def test_body(self, value, body):
        assert mailParams(f"BODY={value}").body == body

    @pytest.mark.parametrize("value", ["8BIT", "", None, "7BITS", "8BITMIME "])
    def test_bad_body(self, value):
        with pytest.raises(ParameterError, match="BODY"):
            parseMailParameters([("BODY", value)], sizeLimit=0, offered=ALL)

    def test_body_needs_offer(self):
        with pytest.raises(ParameterError, match="8BITMIME not offered"):
            mailParams("BODY=8BITMIME", offered=ALL - {"8BITMIME"})
        with pytest.raises(ParameterError, match="BINARYMIME not offered"):
            mailParams("BODY=BINARYMIME", offered=ALL - {"BINARYMIME"})
        with pytest.raises(ParameterError, match="CHUNKING not offered"):
            mailParams("BODY=BINARYMIME", offered=ALL - {"CHUNKING"})
        assert mailParams("BODY=BINARYMIME", offered=frozenset({"BINARYMIME", "CHUNKING"})).body == "BINARYMIME"

    def test_smtputf8(self):
        assert mailParams("SMTPUTF8").smtputf8 is True
        with pytest.raises(ParameterError, match="SMTPUTF8 takes no value"):
            mailParams("SMTPUTF8=yes")
        with pytest.raises(ParameterError, match="SMTPUTF8 not offered"):
            mailParams("SMTPUTF8", offered=ALL - {"SMTPUTF8"})

    @pytest.mark.parametrize("value,ret", [("FULL", "FULL"), ("hdrs", "HDRS"), ("Full", "FULL")])
    def test_ret(self, value, ret):
        assert mailParams(f"RET={value}").ret == ret

    @pytest.mark.parametrize("argument", ["RET=BOTH", "RET"])
    def test_bad_ret(self, argument):
        with pytest.raises(ParameterError):
            mailParams(argument)

    def test_ret_only_once(self):
        with pytest.raises(ParameterError, match="duplicate"):
            mailParams("RET=FULL RET=HDRS")
        with pytest.raises(ParameterError, match="duplicate"):
            parseMailParameters([("RET", "FULL"), ("ret", "FULL")], sizeLimit=0, offered=ALL)

    def test_envid(self):
        assert mailParams("ENVID=abc+2Bdef+3D").envid == "abc+def="
        assert mailParams("ENVID=" + "e" * 100).envid == "e" * 100
        with pytest.raises(ParameterError, match="ENVID exceeds 100"):
            mailParams("ENVID=" + "e" * 101)

    @pytest.mark.parametrize("value", ["a+2b", "a+0D+0AX-Header:+20x", "a+C3+A9", "a+00"])
    def test_bad_envid(self, value):
        with pytest.raises(ParameterError):
            mailParams("ENVID=" + value)

    def test_auth(self):
        assert mailParams("AUTH=<>").auth == "<>"
        assert mailParams("AUTH=e+3Dmc2@example.com").auth == "e=mc2@example.com"
        with pytest.raises(ParameterError, match="AUTH not offered"):
            mailParams("AUTH=<>", offered=ALL - {"AUTH"})
        with pytest.raises(ParameterError):
            mailParams("AUTH=a+0Db")
        with pytest.raises(ParameterError, match="AUTH needs a value"):
            mailParams("AUTH")

    @pytest.mark.parametrize(
        "argument,extension",
        [("SIZE=1", "SIZE"), ("RET=FULL", "DSN"), ("ENVID=x", "DSN"), ("BODY=7BIT", "8BITMIME")],
    )
    def test_not_offered(self, argument, extension):
        with pytest.raises(ParameterError, match=f"{extension} not offered"):
            mailParams(argument, offered=ALL - {extension})

    @pytest.mark.parametrize("argument", ["FOO=bar", "NOTIFY=NEVER", "ORCPT=rfc822;a@b", "XVERP", "TRANSID=1"])
    def test_unknown(self, argument):
        with pytest.raises(ParameterError, match="unsupported parameter") as e:
            mailParams(argument)
        assertSafe(str(e.value))

    def test_unknown_keyword_echo_is_bounded(self):
        with pytest.raises(ParameterError) as e:
            parseMailParameters([("X" * 500, None)], sizeLimit=0, offered=ALL)
        assert len(str(e.value)) < 80

    def test_non_ascii_value_without_smtputf8(self):
        with pytest.raises(ParameterError, match="SMTPUTF8"):
            parseMailParameters([("AUTH", "j\u00f6@example.com")], sizeLimit=0, offered=ALL)


# -- RCPT parameters -----------------------------------------------------------------------


def rcptParams(argument, offered=ALL, smtputf8=False):
    _, params = splitPathAndParameters("<a@example.com> " + argument, True, smtputf8=smtputf8)
    return parseRcptParameters(params, offered=offered, smtputf8=smtputf8)


class TestRcptParameters:
    def test_defaults(self):
        assert parseRcptParameters([], offered=frozenset(), smtputf8=False) == RcptParameters(notify=(), orcpt=None)

    @pytest.mark.parametrize(
        "value,notify",
        [
            ("NEVER", ("NEVER",)),
            ("never", ("NEVER",)),
            ("SUCCESS", ("SUCCESS",)),
            ("FAILURE", ("FAILURE",)),
            ("DELAY", ("DELAY",)),
            ("failure,success", ("SUCCESS", "FAILURE")),
            ("DELAY,FAILURE,SUCCESS", ("SUCCESS", "FAILURE", "DELAY")),
            ("SUCCESS,DELAY", ("SUCCESS", "DELAY")),
        ],
    )
    def test_notify(self, value, notify):
        assert rcptParams(f"NOTIFY={value}").notify == notify

    @pytest.mark.parametrize(
        "value,message",
        [
            ("NEVER,SUCCESS", "NEVER"),
            ("FAILURE,NEVER", "NEVER"),
            ("SUCCESS,SUCCESS", "duplicate"),
            ("NEVER,NEVER", "duplicate"),
            ("FOO", "bad NOTIFY"),
            ("SUCCESS,", "bad NOTIFY"),
            (",SUCCESS", "bad NOTIFY"),
            ("SUCCESS,,FAILURE", "bad NOTIFY"),
        ],
    )
    def test_bad_notify(self, value, message):
        with pytest.raises(ParameterError, match=message):
            rcptParams(f"NOTIFY={value}")

    def test_notify_needs_value_and_once(self):
        with pytest.raises(ParameterError, match="NOTIFY needs a value"):
            rcptParams("NOTIFY")
        with pytest.raises(ParameterError, match="duplicate"):
            rcptParams("NOTIFY=SUCCESS NOTIFY=FAILURE")

    @pytest.mark.parametrize(
        "value,orcpt",
        [
            ("rfc822;user@example.com", "rfc822;user@example.com"),
            ("RFC822;User@Example.com", "rfc822;User@Example.com"),
            ("rfc822;a+2Bb@example.com", "rfc822;a+b@example.com"),
            ("rfc822;a+20b@example.com", "rfc822;a b@example.com"),
            ("rfc822;a;b", "rfc822;a;b"),
            ("x400;c+3Dus", "x400;c=us"),
            ("X-Local;bob", "X-Local;bob"),
            ("UTF-8;user@example.com", "utf-8;user@example.com"),
            ("utf-8;us\\x{E9}r@example.com", "utf-8;us\u00e9r@example.com"),
            ("utf-8;\\x{7528}\\x{6237}@example.com", "utf-8;\u7528\u6237@example.com"),
            ("utf-8;a\\x{2B}b\\x{3D}c\\x{20}d\\x{5C}e", "utf-8;a+b=c d\\e"),
            ("utf-8;\\x{1F600}@example.com", "utf-8;\U0001f600@example.com"),
        ],
    )
    def test_orcpt(self, value, orcpt):
        assert rcptParams(f"ORCPT={value}").orcpt == orcpt

    def test_orcpt_utf8_raw_needs_smtputf8(self):
        with pytest.raises(ParameterError):
            parseRcptParameters([("ORCPT", "utf-8;us\u00e9r@example.com")], offered=ALL, smtputf8=False)
        assert rcptParams("ORCPT=utf-8;us\u00e9r@example.com", smtputf8=True).orcpt == "utf-8;us\u00e9r@example.com"
        assert (
            rcptParams("ORCPT=utf-8;\u00e9\\x{E9}@example.com", smtputf8=True).orcpt == "utf-8;\u00e9\u00e9@example.com"
        )

    @pytest.mark.parametrize(
        "value,message",
        [
            ("rfc822", "syntax"),
            (";user@example.com", "syntax"),
            ("rfc 822;a", "syntax"),
            ("rfc822;", "empty"),
            ("rfc822;a+4", "hex"),
            ("rfc822;a+2b", "hex"),
            ("rfc822;a+0D+0ARCPT", "control"),
            ("rfc822;caf+C3+A9", "ASCII"),
            ("rf(c;a", "syntax"),
            ("utf-8;a+2Bb", "bad character"),
            ("utf-8;a\\x{e9}", "escape"),
            ("utf-8;a\\x{0E9}", "escape"),
            ("utf-8;a\\x{41}", "escape"),
            ("utf-8;a\\x{D800}", "escape"),
            ("utf-8;a\\x{110000}", "escape"),
            ("utf-8;a\\x{D}", "escape"),
            ("utf-8;a\\x{85}", "bad character"),
            ("utf-8;a\\xE9", "escape"),
            ("utf-8;a\\", "escape"),
        ],
    )
    def test_bad_orcpt(self, value, message):
        with pytest.raises(ParameterError, match=message) as e:
            parseRcptParameters([("ORCPT", value)], offered=ALL, smtputf8=False)
        assertSafe(str(e.value))

    def test_orcpt_length(self):
        address = "a" * (500 - len("rfc822;"))
        assert rcptParams("ORCPT=rfc822;" + address).orcpt == "rfc822;" + address
        with pytest.raises(ParameterError, match="ORCPT exceeds 500"):
            rcptParams("ORCPT=rfc822;a" + address)

    def test_orcpt_only_once(self):
        with pytest.raises(ParameterError, match="duplicate"):
            rcptParams("ORCPT=rfc822;a ORCPT=rfc822;b")

    def test_both(self):
        assert rcptParams("NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;user@example.com") == RcptParameters(
            notify=("SUCCESS", "FAILURE"), orcpt="rfc822;user@example.com"
        )

    def test_dsn_not_offered(self):
        for argument in ("NOTIFY=NEVER", "ORCPT=rfc822;a@b"):
            with pytest.raises(ParameterError, match="DSN not offered"):
                rcptParams(argument, offered=ALL - {"DSN"})

    @pytest.mark.parametrize("argument", ["SIZE=1", "BODY=8BITMIME", "FOO", "RET=FULL", "SMTPUTF8"])
    def test_unknown(self, argument):
        with pytest.raises(ParameterError, match="unsupported parameter"):
            rcptParams(argument)

    def test_non_ascii_without_smtputf8(self):
        with pytest.raises(ParameterError, match="SMTPUTF8"):
            parseRcptParameters([("NOTIFY", "N\u00c9VER")], offered=ALL, smtputf8=False)


# -- the whole path through the functions, as the server uses them -----------------------


class TestServerFlow:
    @pytest.mark.parametrize(
        "argument,expected",
        [
            ("<user%other@relay.example>", Address("user%other", "relay.example")),
            ("<other!user@relay.example>", Address("other!user", "relay.example")),
            ("<@evil.example:user@good.example>", Address("user", "good.example")),
            ('<"user@other"@relay.example>', Address("user@other", "relay.example")),
            ("<user@[127.0.0.1]>", Address("user", "[127.0.0.1]")),
            ("<USER@RELAY.EXAMPLE>", Address("USER", "relay.example")),
            (" <user@Relay.Example> NOTIFY=NEVER", Address("user", "relay.example")),
        ],
    )
    def test_relay_tricks(self, argument, expected):
        path, params = splitPathAndParameters(argument, strict=False)
        assert parsePath(path, allowNull=False) == expected
        parseRcptParameters(params, offered=ALL, smtputf8=False)

    def test_trailing_dot_relay_trick(self):
        path, _ = splitPathAndParameters("<user@relay.example.>", strict=False)
        with pytest.raises(PathError, match="trailing dot"):
            parsePath(path, allowNull=False)

    def test_mail_smtputf8(self):
        path, params = splitPathAndParameters("<J\u00fcrgen@B\u00fccher.example> SMTPUTF8 SIZE=10", True)
        mp = parseMailParameters(params, sizeLimit=100, offered=ALL)
        assert mp.smtputf8 is True and mp.size == 10
        assert parsePath(path, allowNull=True, smtputf8=mp.smtputf8) == Address("J\u00fcrgen", "b\u00fccher.example")

    def test_bare_lenient_mail(self):
        path, params = splitPathAndParameters("user@Example.com SIZE=100", strict=False)
        assert parsePath(path, allowNull=True) == Address("user", "example.com")
        assert parseMailParameters(params, sizeLimit=0, offered=ALL).size == 100

    def test_bare_postmaster_rcpt(self):
        path, params = splitPathAndParameters("Postmaster", strict=False)
        assert parsePath(path, allowNull=False) == Address("postmaster", "")
        assert params == []
