"""postfix SASL and courier imapd/pop3d/esmtpd rules (stateless)."""

from __future__ import annotations

import base64
import binascii
import re

from ..model import Kind, Service

K_FAIL, K_PROBE, K_SUCCESS = Kind.AUTH_FAILED.value, Kind.PROBE.value, Kind.SUCCESS.value

Hit = tuple[str, str, "str | None", "str | None", int, "str | None"]

# `warning: NAME[ADDR]: SASL LOGIN authentication failed: REPLY[, sasl_username=USER]`
# (smtpd_sasl_glue.c: no `: REPLY` before 2.3, `, sasl_username=` since 3.10)
# NAME is a validated hostname or `unknown` (no spaces or brackets); the address comes only
# from inside the brackets, at the fixed position right after `warning: `.
_SASL = re.compile(
    r"warning: [A-Za-z0-9._-]*\[([^\[\]\s]+)\](?::\d+)?: SASL [A-Za-z0-9_-]+ authentication failed(?::|$)")
_LOST_AUTH = re.compile(r"lost connection after AUTH from [^\s\[\]]*\[([^\[\]\s]+)\]")
_SUBMISSION = frozenset({"submission", "submissions", "smtps"})


def postfix_service(tag: str) -> str | None:
    """``postfix/smtpd`` -> smtp, ``postfix/submission/smtpd`` -> submission; None if not smtpd."""
    parts = tag.split("/")
    if len(parts) < 2 or parts[-1] != "smtpd" or not parts[0].startswith("postfix"):
        return None
    if len(parts) > 2 and parts[-2] in _SUBMISSION:
        return Service.SUBMISSION.value
    return Service.SMTP.value


def postfix(service: str, msg: str) -> Hit | None:
    """One postfix smtpd message."""
    c = msg[:1]
    if c == "[" and msg.startswith("[ID "):  # illumos `[ID 947420 mail.warning] `
        e = msg.find("] ")
        if e < 0:
            return None
        msg = msg[e + 2:]
        c = msg[:1]
    if c == "w":
        if " authentication failed" not in msg:
            return None
        m = _SASL.match(msg)
        if m is None:
            return None
        user = None
        rest = msg[m.end():]
        u = rest.find(", sasl_username=")
        if u >= 0:
            user = rest[u + 16:]
            rest = rest[:u]
            if user == "(unavailable)":
                user = None
        if "]: SASL " in rest:
            return None  # a second client field before the user name: not a line postfix writes
        return (service, K_FAIL, m.group(1), user, 1, None)
    if c == "m" and msg.startswith("message repeated "):
        # rsyslog RepeatedMsgReduction: `message repeated N times: [ MSG]`, MSG N more times
        k = msg.find(" times: [", 17, 30)
        times = msg[17:k] if k > 0 else ""
        if not (times.isdigit() and times.isascii() and msg.endswith("]")):
            return None
        inner = msg[k + 9:-1].removeprefix(" ")  # rsyslog: "[%.800s]" of the message
        hit = postfix(service, inner) if not inner.startswith("message repeated ") else None
        if hit is None:
            return None
        return (hit[0], hit[1], hit[2], hit[3], hit[4] * min(int(times), 1000), hit[5])
    if c == "l" and msg.startswith("lost connection after AUTH from "):
        m = _LOST_AUTH.match(msg)
        if m is not None:
            return (service, K_PROBE, m.group(1), None, 0, None)
    return None


# courier: `LOGIN FAILED, [method=X, ]user=USER, ip=[ADDR][, port=[N]]` - the user is attacker
# text before the address, so the address is the one anchored at the end of the line. SASL
# logins (imaplogin.C `LOGIN FAILED, method=%s, ip=[%s], port=[%s]`) and older pop3d
# (`LOGIN FAILED, ip=[%s]`) name no user.
_COURIER_FAIL = re.compile(
    r"(?:INFO: )?LOGIN FAILED, (?:method=[^,\s]*, )?(?:user=(.*), )?ip=\[([^\[\]\s]*)\](?:, port=\[\d+\])?$")
_COURIER_OK = re.compile(
    r"(?:INFO: )?LOGIN, user=(.*), ip=\[([^\[\]\s]*)\](?:, port=\[\d+\])?(?:, protocol=[A-Z0-9]+)?$")

COURIER_TAGS = {
    "imapd": Service.IMAP.value, "imapd-ssl": Service.IMAP.value,
    "courier-imapd": Service.IMAP.value, "courier-imapd-ssl": Service.IMAP.value,
    "pop3d": Service.POP3.value, "pop3d-ssl": Service.POP3.value,
    "courier-pop3d": Service.POP3.value, "courier-pop3d-ssl": Service.POP3.value,
    "courierpop3login": Service.POP3.value,
    "courieresmtpd": Service.SMTP.value,
}

# Courier-MTA courieresmtpd.C iov_logerror() after a failed AUTH (`535 Authentication failed.`):
# `error,relay=ADDR[,port=N (2019+)][,ident="..."],msg="535 ...",cmd: AUTH MECH [USER]` - the
# address is the first field, courier's own; ident (a remote ident reply) and USER come after.
_COURIER_ESMTP = re.compile(
    r"(?:INFO: )?error,relay=([0-9A-Fa-f:.]+)(?:,port=\d+)?(?:,ident=\"[^\n]*?\")?"
    r",msg=\"535 Authentication failed\.\",cmd: AUTH(?: \S+(?: (.*))?)?$")


_B64 = re.compile(r"[A-Za-z0-9+/]{1,20}={0,2}")


def _courier_auth_user(rest: str | None) -> str | None:
    """What follows ``cmd: AUTH MECH``: courieresmtpd writes the client's initial response
    (base64, cut at 20 characters) and then the user id it extracted, each only when there is
    one. For PLAIN that response holds the password: never shown as the user."""
    if not rest:
        return None
    first, sep, after = rest.partition(" ")
    if sep and after and _B64.fullmatch(first):
        return after  # initial response, then the user id
    if sep or _B64.fullmatch(first) is None:
        return rest
    try:
        raw = base64.b64decode(first + "=" * (-len(first) % 4), validate=True)
    except (ValueError, binascii.Error):
        return rest
    return None if b"\0" in raw else rest


def courier(service: str, msg: str) -> Hit | None:
    """One courier imapd/pop3d message."""
    if msg.startswith("[ID "):  # illumos `[ID 702911 mail.info] `
        e = msg.find("] ")
        if e < 0:
            return None
        msg = msg[e + 2:]
    if msg.startswith(("error,relay=", "INFO: error,relay=")):
        if "535 Authentication failed." not in msg:
            return None
        m = _COURIER_ESMTP.match(msg)
        if m is None:
            return None
        return (service, K_FAIL, m.group(1), _courier_auth_user(m.group(2)), 1, None)
    if "LOGIN FAILED, " in msg[:20]:
        m = _COURIER_FAIL.match(msg)
        if m is None:
            return None
        return (service, K_FAIL, m.group(2), m.group(1), 1, None)
    if "LOGIN, user=" in msg[:20]:
        m = _COURIER_OK.match(msg)
        if m is None:
            return None
        return (service, K_SUCCESS, m.group(2), m.group(1), 0, None)
    return None
