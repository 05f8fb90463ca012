"""The output of bench/run.py: the table, the JSON document and the ratios."""

from __future__ import annotations

import dataclasses
import json


@dataclasses.dataclass
class Result:
    name: str
    messages: int
    ok: bool = False
    seconds: float | None = None
    rate: float | None = None
    queued: int | None = None          # accept: new messages found in the queue
    delivered: int | None = None       # relay: messages the sink received
    accept_seconds: float | None = None  # relay: time until smtp-source finished
    verified: bool = False
    error: str | None = None
    detail: str | None = None           # e.g. the last lines of mta's output
    notes: list[str] = dataclasses.field(default_factory=list)
    rounds: list[dict] = dataclasses.field(default_factory=list)  # every timed run
    cpu_ms_per_message: float | None = None  # the server's CPU (utime+stime) per message, median
    machine_ms_per_message: float | None = None  # the whole machine's busy CPU per message, median
    connections: int | None = None       # --tls: connections of the median run (handshakes)
    tls: dict | None = None              # --tls: version and cipher the client saw
    out: dict | None = None              # --relay-tls: the sink's conn, tls, resumed of the median run


def perMessage(r: Result) -> dict | None:
    """--relay-tls: messages per connection and handshakes (full, resumed) per message."""
    if not r.ok or not r.out or not r.delivered:
        return None
    conn, tls, resumed = r.out["conn"], r.out["tls"], r.out["resumed"]
    return {"messages_per_connection": r.delivered / conn if conn else None,
            "handshakes_per_message": tls / r.delivered,
            "full_handshakes_per_message": (tls - resumed) / r.delivered}


def outRatios(results: dict[str, Result]) -> dict:
    mta, pf = (perMessage(results[n]) if n in results else None for n in ("mta", "postfix"))
    if not mta or not pf:
        return {}
    return {k: mta[k] / pf[k] for k in mta if mta[k] is not None and pf[k]}


def ratio(results: dict[str, Result]) -> float | None:
    mta, pf = results.get("mta"), results.get("postfix")
    if mta and pf and mta.ok and pf.ok and mta.rate and pf.rate:
        return mta.rate / pf.rate
    return None


def cpuRatio(results: dict[str, Result]) -> float | None:
    mta, pf = results.get("mta"), results.get("postfix")
    if mta and pf and mta.ok and pf.ok and mta.cpu_ms_per_message and pf.cpu_ms_per_message:
        return mta.cpu_ms_per_message / pf.cpu_ms_per_message
    return None


def machineRatio(results: dict[str, Result]) -> float | None:
    mta, pf = results.get("mta"), results.get("postfix")
    if mta and pf and mta.ok and pf.ok and mta.machine_ms_per_message and pf.machine_ms_per_message:
        return mta.machine_ms_per_message / pf.machine_ms_per_message
    return None


def describe(args) -> str:
    if args.tls:
        how = ("STARTTLS, connections reused (one handshake per session)" if args.reuse
               else "STARTTLS, one connection and one TLS handshake per message")
        how += f", {'RSA 2048' if args.tls_key == 'rsa' else 'ECDSA P-256'} certificate, bench/tlsload.py"
    else:
        how = "connections reused (-d)" if args.reuse else "one connection per message"
    what = "accepted and queued" if args.command == "accept" else "relayed to smtp-sink"
    if getattr(args, "relay_tls", False):
        what = ("relayed over STARTTLS (smtp_tls_security_level = encrypt, TLS connection reuse on) "
                "to bench/tlssink.py")
    rounds = f", median of {args.rounds} alternating timed runs" if args.rounds > 1 else ""
    return (f"{args.command}: {args.messages} messages of {args.size} bytes {what}, "
            f"{args.sessions} parallel sessions, {how}{rounds}")


def printTable(args, results: dict[str, Result]) -> None:
    count = "queued" if args.command == "accept" else "delivered"
    print(describe(args))
    print(f"{'':10}{'messages':>10}{'seconds':>10}{'messages/s':>12}{count:>11}{'CPU ms/msg':>12}")
    for r in results.values():
        if not r.ok:
            first, *rest = (r.error or "failed").splitlines()
            print(f"{r.name:10}{'-':>10}{'-':>10}{'-':>12}{'-':>11}{'-':>12}  FAILED: {first}")
            for line in rest:
                print(f"{'':12}{line}")
            continue
        n = r.queued if args.command == "accept" else r.delivered
        mark = "ok" if r.verified else "NOT VERIFIED"
        cpu = f"{r.cpu_ms_per_message:.2f}" if r.cpu_ms_per_message is not None else "n/a"
        print(f"{r.name:10}{r.messages:>10}{r.seconds:>10.3f}{r.rate:>12.1f}{n:>11}{cpu:>12}  {mark}")
        if len(r.rounds) > 1:
            print(f"{'':12}messages/s per run: " + " ".join(f"{x['rate']:.1f}" for x in r.rounds))
            if all(x.get("cpu_ms_per_message") is not None for x in r.rounds):
                print(f"{'':12}CPU ms/message per run: "
                      + " ".join(f"{x['cpu_ms_per_message']:.2f}" for x in r.rounds))
        if r.machine_ms_per_message is not None:
            print(f"{'':12}machine CPU ms/message (every process and kernel thread, the load tools "
                  f"included): {r.machine_ms_per_message:.2f}"
                  + (" (per run: " + " ".join(f"{x['machine_ms_per_message']:.2f}" for x in r.rounds) + ")"
                     if len(r.rounds) > 1 else ""))
        if r.tls:
            per = (f"{r.connections} connections (handshakes) for {r.messages} messages"
                   if r.connections is not None else "")
            print(f"{'':12}{r.tls['version']} {r.tls['cipher']}{'; ' + per if per else ''}")
        pm = perMessage(r)
        if pm:
            mpc = pm["messages_per_connection"]
            print(f"{'':12}to the next hop: {r.out['conn']} connections, {r.out['tls']} TLS handshakes "
                  f"({r.out['resumed']} resumed): {mpc:.1f} messages per connection, "
                  f"{pm['handshakes_per_message']:.3f} handshakes per message "
                  f"({pm['full_handshakes_per_message']:.3f} full)" if mpc else "no connections")
        for note in r.notes:
            print(f"{'':12}{note}")
    x = ratio(results)
    print(f"ratio mta/postfix = {x:.2f}" if x is not None else "ratio mta/postfix = n/a")
    c = cpuRatio(results)
    if c is not None:
        print(f"CPU per message mta/postfix = {c:.2f}")
    m = machineRatio(results)
    if m is not None:
        print(f"machine CPU per message mta/postfix = {m:.2f}")
    o = outRatios(results)
    for key, text in (("messages_per_connection", "messages per connection"),
                      ("handshakes_per_message", "handshakes per message"),
                      ("full_handshakes_per_message", "full handshakes per message")):
        if key in o:
            print(f"{text} mta/postfix = {o[key]:.2f}")


def printJson(args, results: dict[str, Result]) -> None:
    doc = {
        "benchmark": args.command,
        "messages": args.messages,
        "sessions": args.sessions,
        "size": args.size,
        "reuse": args.reuse,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "results": {name: dataclasses.asdict(r) for name, r in results.items()},
        "tls": args.tls_key if args.tls else None,
        "ratio": ratio(results),
        "cpu_ratio": cpuRatio(results),
        "machine_cpu_ratio": machineRatio(results),
        "relay_tls": getattr(args, "relay_tls", False),
        "out": {name: perMessage(r) for name, r in results.items()},
        "out_ratios": outRatios(results),
    }
    print(json.dumps(doc, indent=2))
