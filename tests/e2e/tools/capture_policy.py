"""Capture real sshd output for the wild corpus: OpenSSH with AllowUsers/DenyUsers/DenyGroups,
PermitRootLogin no, MaxAuthTries 3 and UsePAM, attacked by hydra from the lab's namespaces.

    sudo python -m tests.e2e.tools.capture_policy OUT.log
    sudo python -m tests.e2e.tools.capture_policy --dovecot-pam OUT.log

Brings the mail lab up (tests/e2e/mailab.py), appends the policy options to its sshd_config,
restarts sshd, runs two short bounded hydra ssh runs (IPv4 and IPv6) and copies the server's
auth.log (RFC 3339 syslog) to OUT.log. With ``--dovecot-pam``: dovecot authenticates through
PAM (Debian's /etc/pam.d/dovecot, pam_unix against the lab's own shadow file) with
auth_verbose, attacked by hydra on pop3 and imap; OUT.log is auth.log + mail.log. Everything
is torn down on exit. The captured files are tests/data/parse/openssh92-policy-lab.log and
dovecot23-pam-lab.log, checked by test_parse_wild.py.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from tests.e2e.mailab import SSH_USER, MailLab

POLICY = f"""
# capture_policy.py: every refusal sshd can log
MaxAuthTries 3
PermitRootLogin no
DenyUsers test
DenyGroups nogroup
AllowUsers {SSH_USER} root test admin nobody
"""


def dovecot_pam(out: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="pwcap-") as d, MailLab(Path(d)) as lab:
        conf = lab.tmp / "dovecot.conf"
        text = conf.read_text()
        a = text.index("passdb {")
        b = text.index("}", a) + 1
        conf.write_text(text[:a] + "passdb {\n  driver = pam\n}" + text[b:])
        lab.restart_dovecot()
        users = ["root", "admin", "carol"]
        pw = ["123456", "password"]
        runs = [lab.hydra("a1", "pop3", users=users, passwords=pw, seconds=150, tasks=2),
                lab.hydra("a3", "imap", users=users, passwords=pw, seconds=150, tasks=2, family=6,
                          label="hydra-imap-a3-v6")]
        deadline = time.monotonic() + 160
        for r in runs:
            while r.popen.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            lab.stop(r)
        time.sleep(3)  # the summaries of closed connections, rsyslog flush
        with out.open("w") as f:
            f.write(lab.auth_log.read_text())
            f.write(lab.mail_log.read_text())
    print(f"{out}: {sum(1 for _ in out.open())} lines")
    return 0


def main(out: Path) -> int:
    with tempfile.TemporaryDirectory(prefix="pwcap-") as d, MailLab(Path(d)) as lab:
        (lab.tmp / "sshd_config").write_text((lab.tmp / "sshd_config").read_text() + POLICY)
        lab.stop(lab.daemons.pop("sshd"))
        lab.daemons["sshd"] = lab.spawn("sshd", lab.in_server(
            ["/usr/sbin/sshd", "-D", "-f", str(lab.tmp / "sshd_config")]))
        lab.wait_for(lambda: lab._listening({22}), 15, "sshd listening again")
        users = ["root", "test", "nobody", "webmaster", "admin", SSH_USER]
        pw = ["123456", "password", "qwerty", "letmein"]
        runs = [lab.hydra("a1", "ssh", users=users, passwords=pw, seconds=90, tasks=2),
                lab.hydra("a3", "ssh", users=users, passwords=pw, seconds=90, tasks=2, family=6,
                          label="hydra-ssh-a3-v6")]
        deadline = time.monotonic() + 100
        for r in runs:
            while r.popen.poll() is None and time.monotonic() < deadline:
                time.sleep(0.5)
            lab.stop(r)
        time.sleep(2)  # rsyslog flush
        shutil.copy(lab.auth_log, out)
    print(f"{out}: {sum(1 for _ in out.open())} lines")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--dovecot-pam":
        raise SystemExit(dovecot_pam(Path(sys.argv[2])))
    raise SystemExit(main(Path(sys.argv[1])))
