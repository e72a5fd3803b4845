"""A private Dovecot instance for the IMAP and POP3 tests.

The instance gets its own configuration, runtime directory, log and maildir in
a temporary directory, and listens on free ports on 127.0.0.1. It runs as root
(as in CI) or as an ordinary user. It does not read /etc/dovecot.

With ``OAuth2Settings`` the instance also offers the XOAUTH2 and OAUTHBEARER
mechanisms and checks their access tokens at a tokeninfo URL, such as the one
of tests.fakes.google.FakeGoogle. Password sign-in keeps working.
"""

import contextlib
import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from imapclient.imap_utf7 import encode as encode_modified_utf7

from tests.servers.certs import CertificateFiles
from tests.servers.ports import free_port

USERNAME = "alice@portal.test"
PASSWORD = "Pässwörd-Ωμέγα-✓"  # non-ASCII on purpose: sent as UTF-8
# A second login to the same mailbox, whose ASCII password IMAP LOGIN can carry.
ASCII_USERNAME = "bob@portal.test"
ASCII_PASSWORD = "ascii-Secret-42"
# A login without a password, which signs in to the same mailbox by XOAUTH2 or
# OAUTHBEARER only. The token provider must know this address.
OAUTH2_USERNAME = "carol@portal.test"
GMAIL_SCOPE = "https://mail.google.com/"

# Folder name -> number of messages seeded into it.
FOLDERS = {"INBOX": 3, "Entwürfe": 1, "Отправленные": 2, "Archive": 0}

START_TIMEOUT = 10.0  # seconds to wait for every listener


@dataclass(frozen=True)
class DovecotServer:
    """A running Dovecot: its ports, test account and seeded folders."""

    imap_port: int  # plain IMAP, offers STARTTLS
    imaps_port: int  # IMAP over implicit TLS
    pop3_port: int  # plain POP3, offers STLS
    pop3s_port: int  # POP3 over implicit TLS
    log_path: Path
    host: str = "127.0.0.1"
    username: str = USERNAME
    password: str = field(default=PASSWORD, repr=False)
    ascii_username: str = ASCII_USERNAME
    ascii_password: str = field(default=ASCII_PASSWORD, repr=False)
    folders: dict[str, int] = field(default_factory=lambda: dict(FOLDERS))
    # The login that signs in with a token, when OAuth2Settings were given.
    oauth2_username: str | None = None


@dataclass(frozen=True)
class OAuth2Settings:
    """How Dovecot's oauth2 passdb checks access tokens."""

    # Dovecot appends the token to this URL, so it ends with "access_token=".
    tokeninfo_url: str
    # The tokeninfo "scope" field must contain this scope. Dovecot 2.3 accepts
    # a single scope here.
    scope: str = GMAIL_SCOPE
    # The tokeninfo field that must equal the user name given at sign-in.
    username_attribute: str = "email"


def dovecot_version() -> tuple[int, int, int] | None:
    """Return the installed Dovecot version, or None when it is not installed."""
    executable = shutil.which("dovecot")
    if executable is None:
        return None

    output = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", output)
    if match is None:
        raise RuntimeError(f"cannot parse the output of dovecot --version: {output!r}")
    return int(match[1]), int(match[2]), int(match[3])


@dataclass(frozen=True)
class _Accounts:
    """The system users that Dovecot's processes and the test mailbox run as."""

    mail_uid: int
    mail_gid: int
    # Settings that let an unprivileged master start its services. Empty as
    # root, where the packaged dovenull and dovecot users are kept.
    process_settings: str


def _accounts() -> _Accounts:
    if os.geteuid() == 0:
        # Dovecot rejects mail users below first_valid_uid (500 by default), so
        # as root the test mailbox belongs to "nobody".
        nobody = pwd.getpwnam("nobody")
        return _Accounts(nobody.pw_uid, nobody.pw_gid, "")

    uid, gid = os.getuid(), os.getgid()
    user = pwd.getpwuid(uid).pw_name
    group = grp.getgrgid(gid).gr_name
    settings = (
        f"default_login_user = {user}\n"
        f"default_internal_user = {user}\n"
        f"default_internal_group = {group}\n"
    )
    return _Accounts(uid, gid, settings)


def _services(ports: dict[str, int]) -> str:
    # chroot needs root, so the login services and anvil run without it.
    return f"""
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {ports["imap"]}
  }}
  inet_listener imaps {{
    port = {ports["imaps"]}
    ssl = yes
  }}
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    port = {ports["pop3"]}
  }}
  inet_listener pop3s {{
    port = {ports["pop3s"]}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
  # Mode 0 turns off the growing delay after failed sign-ins from one IP
  # address, which would slow every later test.
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


def _config_2_3(
    directory: Path, certificate: CertificateFiles, oauth2: OAuth2Settings | None
) -> str:
    config = f"""
ssl_cert = <{certificate.cert_path}
ssl_key = <{certificate.key_path}
# Cleartext passwords are accepted only over TLS. Dovecot counts a client on its
# own IP address as secured, so the plain-port tests on 127.0.0.1 can sign in.
disable_plaintext_auth = yes
mail_location = maildir:~/Maildir
"""
    if oauth2 is None:
        return (
            config
            + f"""
passdb {{
  driver = passwd-file
  args = {directory / "passwd"}
}}
userdb {{
  driver = passwd-file
  args = {directory / "passwd"}
}}
"""
        )

    # Each passdb serves only its own mechanisms, so a token is never compared
    # with a password. The token logins have no password, so they are found
    # in a userdb of their own.
    oauth2_config = directory / "dovecot-oauth2.conf.ext"
    oauth2_config.write_text(
        f"tokeninfo_url = {oauth2.tokeninfo_url}\n"
        f"username_attribute = {oauth2.username_attribute}\n"
        f"scope = {oauth2.scope}\n"
        # Without a timeout, a stopped token provider would hang sign-ins.
        "timeout_msecs = 5000\n"
    )
    return (
        config
        + f"""
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = {directory / "passwd"}
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {oauth2_config}
}}
userdb {{
  driver = passwd-file
  args = {directory / "passwd"}
}}
userdb {{
  driver = passwd-file
  args = {directory / "oauth2-users"}
}}
"""
    )


def _config_2_4(
    directory: Path,
    certificate: CertificateFiles,
    version: tuple[int, int, int],
    oauth2: OAuth2Settings | None,
) -> str:
    # NOTE: only the 2.3 branch has run. This one follows the Dovecot 2.4
    # upgrade notes (named passdb/userdb sections, mail_driver and mail_path,
    # ssl_server_*_file, auth_allow_cleartext).
    release = ".".join(str(part) for part in version)
    config = f"""
dovecot_config_version = {release}
dovecot_storage_version = {release}
ssl_server_cert_file = {certificate.cert_path}
ssl_server_key_file = {certificate.key_path}
auth_allow_cleartext = no
passdb passwd-file {{
  passwd_file_path = {directory / "passwd"}
}}
userdb passwd-file {{
  passwd_file_path = {directory / "passwd"}
}}
mail_driver = maildir
mail_path = ~/Maildir
"""
    if oauth2 is None:
        return config
    # NOTE: untested, like the rest of this branch. According to Dovecot 2.4's
    # oauth2 database documentation, its OAuth2 mechanisms check tokens with
    # the global oauth2 settings and use no passdb. Whether 2.4 takes several
    # scopes in oauth2_scope is not checked.
    return (
        config
        + f"""
userdb oauth2-users {{
  driver = passwd-file
  passwd_file_path = {directory / "oauth2-users"}
}}
oauth2 {{
  tokeninfo_url = {oauth2.tokeninfo_url}
  username_attribute = {oauth2.username_attribute}
  scope = {oauth2.scope}
  timeout_msecs = 5000
}}
"""
    )


def write_config(
    directory: Path,
    certificate: CertificateFiles,
    ports: dict[str, int],
    version: tuple[int, int, int],
    accounts: _Accounts,
    oauth2: OAuth2Settings | None = None,
) -> Path:
    """Write dovecot.conf for ``version`` into ``directory`` and return its path.

    With ``oauth2`` it also writes what the token sign-in needs.
    """
    if version >= (2, 4, 0):
        # 2.4 requires dovecot_config_version as the first setting.
        version_specific = _config_2_4(directory, certificate, version, oauth2)
    else:
        version_specific = _config_2_3(directory, certificate, oauth2)
    mechanisms = "plain login"
    token_settings = ""
    if oauth2 is not None:
        mechanisms += " xoauth2 oauthbearer"
        # The log then gives the reason for each rejected token, such as a
        # missing scope.
        token_settings = "auth_verbose = yes\n"

    common = f"""
base_dir = {directory / "run"}
state_dir = {directory / "state"}
log_path = {directory / "dovecot.log"}
protocols = imap pop3
listen = 127.0.0.1
ssl = yes
auth_mechanisms = {mechanisms}
# Cut the delay before the reply to a failed sign-in, 2 seconds by default.
auth_failure_delay = 0
{token_settings}{accounts.process_settings}"""
    path = directory / "dovecot.conf"
    path.write_text(version_specific.lstrip() + common + _services(ports))
    return path


def _message(folder: str, folder_number: int, number: int) -> bytes:
    return (
        f"From: Sender {number} <sender{number}@portal.test>\r\n"
        f"To: {USERNAME}\r\n"
        f"Subject: {folder} message {number}\r\n"
        f"Message-ID: <{folder_number}.{number}@portal.test>\r\n"
        "Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
        "\r\n"
        f"Body of message {number}.\r\n"
    ).encode()


def seed_maildir(home: Path) -> None:
    """Write the folders and messages of FOLDERS in Maildir++ layout."""
    maildir = home / "Maildir"
    for folder_number, (folder, count) in enumerate(FOLDERS.items()):
        # Maildir++ keeps subfolders as ".<name>" with modified UTF-7 names.
        if folder == "INBOX":
            folder_dir = maildir
        else:
            folder_dir = maildir / f".{encode_modified_utf7(folder).decode('ascii')}"
        for subdirectory in ("cur", "new", "tmp"):
            (folder_dir / subdirectory).mkdir(parents=True, exist_ok=True)
        if folder != "INBOX":
            (folder_dir / "maildirfolder").touch()

        for number in range(1, count + 1):
            name = f"{1700000000 + number}.M{number}P1.portal-test:2,S"
            (folder_dir / "cur" / name).write_bytes(
                _message(folder, folder_number, number)
            )


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, gid)


def _wait_for_ports(
    process: subprocess.Popen[bytes], ports: dict[str, int], directory: Path
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    waiting = dict(ports)
    while waiting:
        if process.poll() is not None:
            raise RuntimeError(
                f"dovecot exited with status {process.returncode}: "
                f"{_read_logs(directory)}"
            )
        for name, port in list(waiting.items()):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                del waiting[name]
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(
                f"dovecot did not open {sorted(waiting)} within {START_TIMEOUT} s: "
                f"{_read_logs(directory)}"
            )
        time.sleep(0.05)


def _read_logs(directory: Path) -> str:
    """Return the end of Dovecot's stderr (configuration errors) and its log."""
    text = ""
    for name in ("stderr.txt", "dovecot.log"):
        with contextlib.suppress(FileNotFoundError):
            text += (directory / name).read_text(errors="replace")
    return text[-4000:] or "(nothing logged)"


@contextlib.contextmanager
def run_dovecot(
    certificate: CertificateFiles,
    version: tuple[int, int, int],
    oauth2: OAuth2Settings | None = None,
) -> Iterator[DovecotServer]:
    """Start Dovecot in the foreground, yield its ports, then stop it.

    With ``oauth2``, OAUTH2_USERNAME signs in by token to the same mailbox.
    """
    accounts = _accounts()
    # Not under pytest's temporary directory: as root that one is mode 0700,
    # and Dovecot's unprivileged processes must reach the mailbox.
    directory = Path(tempfile.mkdtemp(prefix="portal-dovecot-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        directory.chmod(0o755)
        home = directory / "home"
        seed_maildir(home)
        _chown_tree(home, accounts.mail_uid, accounts.mail_gid)
        passwd = directory / "passwd"
        passwd.write_text(
            "".join(
                f"{username}:{{PLAIN}}{password}:"
                f"{accounts.mail_uid}:{accounts.mail_gid}::{home}::\n"
                for username, password in (
                    (USERNAME, PASSWORD),
                    (ASCII_USERNAME, ASCII_PASSWORD),
                )
            ),
            encoding="utf-8",
        )
        passwd.chmod(0o644)
        if oauth2 is not None:
            # A userdb entry only, so the password field stays empty.
            oauth2_users = directory / "oauth2-users"
            oauth2_users.write_text(
                f"{OAUTH2_USERNAME}::{accounts.mail_uid}:{accounts.mail_gid}"
                f"::{home}::\n",
                encoding="utf-8",
            )
            oauth2_users.chmod(0o644)

        ports = {name: free_port() for name in ("imap", "imaps", "pop3", "pop3s")}
        config = write_config(directory, certificate, ports, version, accounts, oauth2)
        with open(directory / "stderr.txt", "wb") as stderr:
            process = subprocess.Popen(
                ["dovecot", "-F", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        _wait_for_ports(process, ports, directory)

        yield DovecotServer(
            imap_port=ports["imap"],
            imaps_port=ports["imaps"],
            pop3_port=ports["pop3"],
            pop3s_port=ports["pop3s"],
            log_path=directory / "dovecot.log",
            oauth2_username=OAUTH2_USERNAME if oauth2 is not None else None,
        )
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(directory, ignore_errors=True)
