"""popwatch: watch a mail/SSH server under a dictionary attack, ban in one key."""

__version__ = "0.1.0"
