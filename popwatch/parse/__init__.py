"""Pure parsing: a raw log line -> AuthEvent or None. (Contract; implemented in this package.)

    parser = Parser(now=time.time)        # stateful only for de-duplication, bounded memory
    ev = parser.parse(raw: RawLine) -> AuthEvent | None

Dispatch is on the daemon tag (sshd, dovecot, postfix/..., courier), never by trying every rule.
"""
