"""The command line's exit codes: one set for every subcommand (README "Exit codes").

==  =========================================================================================
0   done (also: nothing needed doing, e.g. ``unban`` of an address that was not banned)
1   the firewall refused or failed (the kernel said no; rules could not be read or written)
2   usage, configuration or a bad value (unknown option, bad address, ttl beyond the kernel's
    limit, network too large, ``--backend none`` asked to change the firewall)
3   needs root / CAP_NET_ADMIN
4   refused: a protected address (this SSH client, loopback, the host, the allow-list)
5   refused by the current bans: nothing to undo, an address inside a network ban
6   busy: another popwatch holds the state directory (a second ``watch``)
7   the state directory cannot be written (read-only, full, no permission); nothing was
    changed in the kernel, or the change was rolled back (the message says which)
==  =========================================================================================
"""

OK, FAIL, USAGE, ROOT, PROTECTED, CONFLICT, BUSY, STATE = 0, 1, 2, 3, 4, 5, 6, 7
