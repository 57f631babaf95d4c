"""A real Postfix of the test's own: its config, queue and maildir in a temporary directory, an
SMTP listener on a free loopback port, every recipient of ``heraldo.example`` delivered to one
maildir the tests read back.

Postfix's master runs as root (it drops privileges per service), so these tests need root and the
Debian package ``postfix``; without either they are skipped with the reason. The instance is
stopped with ``postfix -c DIR stop``, which signals the master whose pid this instance wrote.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from heraldo.mesh.supervisor import MeshPorts
from tests.notifier.conftest import (  # noqa: F401 - the notifier's fixtures, used here too
    delivery_engine,
    delivery_url,
    notifiers,
    settings,
    smtp_server,
)

START_TIMEOUT_S = 30.0
MAIL_DOMAIN = "heraldo.example"
MASTER_SERVICES = """\
{listen} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
local     unix  - n n -  - local
virtual   unix  - n n -  - virtual
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


@dataclass
class Postfix:
    port: int
    root: Path

    @property
    def maildir(self) -> Path:
        return self.root / "mail" / "inbox"

    @property
    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def delivered(self) -> list[EmailMessage]:
        new = self.maildir / "new"
        if not new.is_dir():
            return []
        return [message_from_bytes(path.read_bytes(), policy=policy.default)
                for path in sorted(new.iterdir())]


def _main_cf(root: Path, port: int) -> str:
    nobody = pwd.getpwnam("nobody")
    return "\n".join([
        "compatibility_level = 3.6",
        f"queue_directory = {root / 'queue'}",
        f"data_directory = {root / 'data'}",
        f"maillog_file = {root / 'maillog'}",
        # Postfix writes its log only under the directories listed here.
        f"maillog_file_prefixes = {root}",
        "mail_owner = postfix",
        "setgid_group = postdrop",
        f"myhostname = mx.{MAIL_DOMAIN}",
        f"mydomain = {MAIL_DOMAIN}",
        f"myorigin = {MAIL_DOMAIN}",
        # Nothing is delivered to local accounts, and nothing relayed anywhere.
        "mydestination =",
        "relayhost =",
        "default_transport = error:this test instance delivers only to heraldo.example",
        "inet_interfaces = 127.0.0.1",
        "inet_protocols = ipv4",
        "mynetworks = 127.0.0.0/8",
        "smtpd_relay_restrictions = permit_mynetworks, reject",
        "alias_maps =",
        "alias_database =",
        f"virtual_mailbox_domains = {MAIL_DOMAIN}",
        f"virtual_mailbox_base = {root / 'mail'}",
        # Every recipient shares one maildir ("inbox/", the slash makes it a maildir).
        "virtual_mailbox_maps = static:inbox/",
        f"virtual_uid_maps = static:{nobody.pw_uid}",
        f"virtual_gid_maps = static:{nobody.pw_gid}",
        "smtputf8_enable = yes",
        f"# listening on 127.0.0.1:{port}",
        "",
    ])


@pytest.fixture(scope="module")
def postfix() -> Iterator[Postfix]:
    if shutil.which("postfix") is None:
        pytest.skip("Postfix is not installed (Debian package postfix, listed in .ci/run)")
    if os.geteuid() != 0:
        pytest.skip("Postfix's master process must start as root")

    # Not pytest's tmp_path: its parents are private to root, and Postfix's services run as
    # the postfix and nobody users, who must reach their directories.
    root = Path(tempfile.mkdtemp(prefix="heraldo-postfix-"))
    root.chmod(0o755)
    conf = root / "conf"
    for name in ("conf", "queue", "data", "mail"):
        (root / name).mkdir()
    # Where the master keeps its lock and the virtual agent writes, as those users.
    shutil.chown(root / "data", user="postfix")
    shutil.chown(root / "mail", user="nobody")
    port = MeshPorts.free().smtp
    (conf / "main.cf").write_text(_main_cf(root, port))
    (conf / "master.cf").write_text(MASTER_SERVICES.format(listen=f"127.0.0.1:{port}"))

    started = subprocess.run(["postfix", "-c", str(conf), "start"], capture_output=True,
                             text=True, timeout=START_TIMEOUT_S, check=False)
    instance = Postfix(port=port, root=root)
    try:
        if started.returncode != 0:
            pytest.fail(f"postfix did not start: {started.stderr}\n{instance.log}")
        _wait_listening(port, instance)
        yield instance
    finally:
        subprocess.run(["postfix", "-c", str(conf), "stop"], capture_output=True,
                       timeout=START_TIMEOUT_S, check=False)
        shutil.rmtree(root, ignore_errors=True)


def _wait_listening(port: int, instance: Postfix) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"postfix is not listening on 127.0.0.1:{port}:\n{instance.log}")
