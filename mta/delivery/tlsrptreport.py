"""mta.delivery.tlsrptreport - TLS-RPT (RFC 8460): the _smtp._tls record, the JSON report and its mail.

NAME
    parseRecords(texts)        the TXT strings of _smtp._tls.DOMAIN -> rua URIs
    RecordError                no usable reporting policy (why)
    buildReport(...)           the RFC 8460 4 report, a dict
    compress(report, limit)    its gzipped JSON within limit octets (details dropped), or None
    reportFilename(...)        RFC 8460 5.3's attachment name
    reportMessage(...)         the report mail (bytes, CRLF), RFC 8460 5.3

DESCRIPTION
    The pure parts of mta.delivery.tlsrpt (which records sessions, keeps
    them in SQLite and sends the reports): see there.

SECURITY
    The TXT record is untrusted: at most MAX_RECORD octets, exactly one
    "v=TLSRPTv1;" record, fields name=value, at most MAX_RUA URIs of at
    most MAX_URI octets, mailto: addresses checked, https: URLs without
    credentials; every text that reaches the report, a header or the log
    is printable ASCII and cut (clean).

CONFIGURATION
    None (the reporter passes what it reads).
"""

import datetime
import email.policy
import email.utils
import gzip
import json
import re
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from urllib.parse import unquote, urlsplit

__all__ = ["RecordError", "buildReport", "clean", "compress", "isoTime", "parseRecords", "reportFilename", "reportId",
           "reportMessage"]

MAX_TEXT = 500  # a policy string, a host name, a reason: at most this many characters
MAX_RECORD = 2048  # octets of one TXT record
MAX_RUA = 10  # URIs of one rua=
MAX_URI = 1024
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_PRINTABLE = re.compile(r"[^\x20-\x7e]")


def clean(value, limit=MAX_TEXT):
    """Printable ASCII, cut: for the report, the log and headers."""
    return _PRINTABLE.sub("?", str(value))[:limit]


def isoTime(t):
    """RFC 3339 UTC, as RFC 8460's examples: 2026-12-01T00:00:00Z."""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the _smtp._tls record ------------------------------------------------------------------------


class RecordError(ValueError):
    """The _smtp._tls answer gives no usable reporting policy (the text says why)."""


def parseRecords(texts):
    """
    The rua URIs (("mailto", address) and ("https", url) pairs, in order)
    of the TXT record strings C{texts} (each record's strings joined) as
    RFC 8460 3: records not starting "v=TLSRPTv1;" are ignored, exactly one
    must remain; RecordError otherwise or when it has no usable rua.
    """
    candidates = [t for t in texts if re.match(r"v=TLSRPTv1[ \t]*;", t)]
    if not candidates:
        raise RecordError("no TLSRPTv1 record")
    if len(candidates) > 1:
        raise RecordError(f"{len(candidates)} TLSRPTv1 records")
    record = candidates[0]
    if len(record) > MAX_RECORD:
        raise RecordError("record too long")
    rua = None
    for index, field in enumerate(f.strip(" \t") for f in record.split(";")):
        if index == 0 or not field:
            continue  # the version; an empty field after a trailing ";"
        name, eq, value = field.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}", name):
            raise RecordError(f"bad field {clean(field, 60)!r}")
        if name == "rua":
            if rua is not None:
                raise RecordError("more than one rua=")
            rua = value
    if rua is None:
        raise RecordError("no rua=")
    uris = []
    for item in rua.split(","):
        uri = item.strip(" \t")
        if not uri or len(uri) > MAX_URI or any(ord(c) <= 32 or ord(c) > 126 for c in uri):
            continue
        scheme = uri.split(":", 1)[0].lower()
        if scheme == "mailto":
            target = unquote(uri[len("mailto:"):].split("?", 1)[0])
            for address in target.split(","):
                if _ADDRESS.fullmatch(address.strip()):
                    uris.append(("mailto", address.strip()))
        elif scheme == "https":
            parts = urlsplit(uri)
            if parts.hostname and not parts.username and not parts.password:
                uris.append(("https", uri))
        if len(uris) >= MAX_RUA:
            break
    if not uris:
        raise RecordError("no usable mailto: or https: URI in rua=")
    return uris


# -- the report --------------------------------------------------------------------------------------


def reportId(start, domain, hostname):
    return f"{isoTime(start)}_{domain}@{hostname}"


def buildReport(*, organization, contact, start, end, domain, hostname, policies, maxDetails=None):
    """
    The RFC 8460 4 report (a dict) of C{policies}: [((type, strings, mx),
    success, failure, [((result, sending, mxname, ip, reason), count)])].
    C{maxDetails}: keep at most this many failure details per policy (the
    most counted).
    """
    entries = []
    for (kind, strings, mx), success, failure, details in policies:
        policy = {"policy-type": kind}
        if strings:
            policy["policy-string"] = list(strings)
        policy["policy-domain"] = domain
        if mx:
            policy["mx-host"] = list(mx)
        entry = {"policy": policy,
                 "summary": {"total-successful-session-count": success, "total-failure-session-count": failure}}
        ordered = sorted(details, key=lambda d: (-d[1], d[0]))
        if maxDetails is not None:
            ordered = ordered[:maxDetails]
        if ordered:
            items = []
            for (result, sending, mxname, ip, reason), count in ordered:
                item = {"result-type": result}
                if sending:
                    item["sending-mta-ip"] = sending
                if mxname:
                    item["receiving-mx-hostname"] = mxname
                if ip:
                    item["receiving-ip"] = ip
                item["failed-session-count"] = count
                if reason:
                    item["failure-reason-code"] = reason
                items.append(item)
            entry["failure-details"] = items
        entries.append(entry)
    return {
        "organization-name": organization,
        "date-range": {"start-datetime": isoTime(start), "end-datetime": isoTime(end - 1)},
        "contact-info": contact,
        "report-id": reportId(start, domain, hostname),
        "policies": entries,
    }


def compress(report, limit):
    """The gzipped JSON of C{report} within C{limit} octets, dropping failure details if need be; None: cannot."""

    def packed(value):
        return gzip.compress(json.dumps(value, indent=None, separators=(",", ":")).encode("utf-8"), mtime=0)

    data = packed(report)
    if len(data) <= limit:
        return data
    most = max((len(p.get("failure-details", ())) for p in report["policies"]), default=0)
    while most > 0:
        most //= 2
        trimmed = dict(report, policies=[dict(p, **{"failure-details": p["failure-details"][:most]})
                                         if "failure-details" in p else p for p in report["policies"]])
        for p in trimmed["policies"]:
            if "failure-details" in p and not p["failure-details"]:
                del p["failure-details"]
        data = packed(trimmed)
        if len(data) <= limit:
            return data
    return None


def reportFilename(organization, domain, start, end, unique):
    """RFC 8460 5.3: sender!policy-domain!begin!end!unique.json.gz (no "!" or "/" from the inputs)."""
    clean = [re.sub(r"[^A-Za-z0-9._@-]", "_", str(v)) for v in (organization, domain, int(start), int(end), unique)]
    return "!".join(clean) + ".json.gz"


def reportMessage(*, sender, recipients, organization, domain, report, payload, start, end, now, hostname):
    """The report mail (bytes, CRLF) of RFC 8460 5.3."""
    rid = report["report-id"]
    unique = re.sub(r"[^A-Za-z0-9]", "", isoTime(start))
    message = MIMEMultipart("report", report_type="tlsrpt")
    message["From"] = clean(sender, 200)
    message["To"] = ", ".join(clean(r, 200) for r in recipients)
    message["Subject"] = f"Report Domain: {clean(domain, 255)} Submitter: {clean(organization, 255)} " \
                         f"Report-ID: <{clean(rid, 300)}>"
    message["Date"] = email.utils.format_datetime(datetime.datetime.fromtimestamp(now, datetime.timezone.utc))
    message["Message-ID"] = f"<tlsrpt.{unique}.{clean(domain, 255)}@{clean(hostname, 255)}>"
    message["TLS-Report-Domain"] = clean(domain, 255)
    message["TLS-Report-Submitter"] = clean(organization, 255)
    message["Auto-Submitted"] = "auto-generated"
    text = (f"This is an aggregate TLS report (RFC 8460) from {clean(organization)} for {clean(domain)},\r\n"
            f"covering {report['date-range']['start-datetime']} to {report['date-range']['end-datetime']}.\r\n")
    message.attach(MIMEText(text, "plain", "us-ascii"))
    attachment = MIMEApplication(payload, "tlsrpt+gzip")
    attachment.add_header("Content-Disposition", "attachment",
                          filename=reportFilename(organization, domain, start, end, unique))
    message.attach(attachment)
    return message.as_bytes(policy=email.policy.SMTP)
