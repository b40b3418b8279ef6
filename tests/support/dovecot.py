"""A private, unprivileged Dovecot IMAP server on 127.0.0.1 for the tests."""

from __future__ import annotations

import atexit
import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import InitVar, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imapclient import IMAPClient

DOVECOT_CANDIDATES = ("/usr/sbin/dovecot", "/usr/local/sbin/dovecot")
MISSING_REASON = (
    "Dovecot is not installed (needed for the real-IMAP tests): "
    "install dovecot-imapd: scripts/install-test-deps.sh"
)
START_TIMEOUT = 10.0
LOOPBACK = "127.0.0.1"


_running_servers: set[DovecotServer] = set()


@atexit.register
def _stop_leftovers() -> None:
    # A test run that dies must not leave Dovecot masters behind.
    for server in list(_running_servers):
        with contextlib.suppress(Exception):
            server.stop(timeout=3)


class DovecotError(RuntimeError):
    """The test Dovecot could not be started or driven."""


def dovecot_binary() -> str | None:
    """The Dovecot master binary, or None when the package is not installed."""
    for candidate in DOVECOT_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("dovecot")
    return found


def skip_unless_dovecot() -> None:
    """pytest.skip with the install hint when Dovecot is missing (for fixtures)."""
    if dovecot_binary() is None:
        import pytest

        pytest.skip(MISSING_REASON)


def dovecot_version(binary: str | None = None) -> str | None:
    binary = binary or dovecot_binary()
    if binary is None:
        return None
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip() or None


def free_port() -> int:
    """A port the OS says is free on the loopback right now (it may be taken later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _login_user(current: str) -> str:
    """Dovecot refuses to run login processes as root: use its own user then."""
    if os.getuid() != 0:
        return current
    for candidate in ("dovenull", "nobody"):
        try:
            pwd.getpwnam(candidate)
        except KeyError:
            continue
        return candidate
    raise DovecotError("running as root but neither dovenull nor nobody exists")


def _mail_ids() -> tuple[int, int]:
    """The uid/gid mail is accessed as: ours, or nobody's when we are root."""
    if os.getuid() != 0:
        return os.getuid(), os.getgid()
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid


def _live_group_members(pgid: int) -> bool:
    """Whether any non-zombie process is left in the group (Linux /proc; else ask kill)."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after "comm)": state, ppid, pgrp
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


@dataclass
class TLSFiles:
    """A self-signed certificate for 127.0.0.1/localhost; `cert` is also the CA file."""

    cert: Path
    key: Path


def make_self_signed_cert(directory: Path) -> TLSFiles:
    """Generate a one-day self-signed certificate with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise DovecotError("openssl CLI not found: cannot make a test certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True, capture_output=True, timeout=60,
    )
    key.chmod(0o600)
    return TLSFiles(cert=cert, key=key)


@dataclass(eq=False)
class DovecotServer:
    """One Dovecot instance in a temporary directory, driven from the tests.

    `tls=True` adds a self-signed certificate: the plain port then offers
    STARTTLS and `tls_port` speaks IMAPS; `tls_files.cert` is the CA to trust.
    """

    user: str = "desk@mesa.example"
    password: str = "clave-de-prueba"
    tls: bool = False
    host: str = LOOPBACK
    directory: InitVar[Path | None] = None  # where it lives; default a fresh temp dir
    base: Path = field(init=False)
    port: int = 0
    tls_port: int = 0
    tls_files: TLSFiles | None = None
    # OAuth2 (XOAUTH2/OAUTHBEARER) beside the password: tokens are checked at this RFC 7662
    # introspection URL (client credentials in its userinfo), trusting this CA for it.
    oauth2_introspection_url: str | None = None
    oauth2_ca_file: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _owns_base: bool = field(default=True, repr=False)

    def __post_init__(self, directory: Path | None) -> None:
        self.binary = dovecot_binary()
        if self.binary is None:
            raise DovecotError(MISSING_REASON)
        self._owns_base = directory is None
        # short: Dovecot's unix sockets live under it (sun_path is ~108 bytes)
        self.base = (directory or Path(tempfile.mkdtemp(prefix="dcv-"))).resolve()

    # -- paths ---------------------------------------------------------------
    @property
    def conf_path(self) -> Path:
        return self.base / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.base / "dovecot.log"

    @property
    def home(self) -> Path:
        return self.base / "home" / "desk"

    @property
    def maildir(self) -> Path:
        return self.home / "Maildir"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- configuration -------------------------------------------------------
    def _write_config(self) -> None:
        user_name = pwd.getpwuid(os.getuid()).pw_name
        group_name = grp.getgrgid(os.getgid()).gr_name
        login_user = _login_user(user_name)
        uid, gid = _mail_ids()
        for sub in ("run", "state", "home/desk"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:
            # Login processes drop to an unprivileged user and must reach base_dir;
            # mail is accessed as the unprivileged mail user (Dovecot refuses uid 0).
            self.base.chmod(0o755)
            for path in (self.base / "home", *(self.base / "home").rglob("*")):
                os.chown(path, uid, gid)
        passwd = self.base / "passwd"
        # user:password:uid:gid:gecos:home:shell:extra — passdb and userdb in one file
        passwd.write_text(f"{self.user}:{{PLAIN}}{self.password}:{uid}:{gid}::{self.home}::\n")
        passwd.chmod(0o600)
        if self.tls and self.tls_files is None:
            self.tls_files = make_self_signed_cert(self.base)
        if self.tls and self.tls_files is not None:
            ssl_block = (
                "ssl = yes\n"
                f"ssl_cert = <{self.tls_files.cert}\n"
                f"ssl_key = <{self.tls_files.key}\n"
            )
            imaps = (
                "  inet_listener imaps {\n"
                f"    address = {self.host}\n    port = {self.tls_port}\n    ssl = yes\n"
                "  }\n"
            )
        else:
            ssl_block = "ssl = no\n"
            imaps = "  inet_listener imaps {\n    port = 0\n  }\n"
        conf = f"""# generated by tests/support/dovecot.py: a throwaway test server
instance_name = mailbridge-test-{self.base.name}
base_dir = {self.base / "run"}
state_dir = {self.base / "state"}
protocols = imap
listen = {self.host}
log_path = {self.log_path}
info_log_path = {self.log_path}
debug_log_path = {self.log_path}
default_internal_user = {user_name}
default_internal_group = {group_name}
default_login_user = {login_user}
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
{ssl_block}# plaintext auth is acceptable only because this server listens on the loopback
disable_plaintext_auth = no
auth_mechanisms = plain login{" xoauth2 oauthbearer" if self.oauth2_introspection_url else ""}
mail_location = maildir:~/Maildir
mail_fsync = never
{self._oauth2_passdb()}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = {self.host}
    port = {self.port}
  }}
{imaps}}}
service anvil {{
  chroot =
}}
service stats {{
  inet_listener http {{
    port = 0
  }}
}}
"""
        self.conf_path.write_text(conf)

    def _oauth2_passdb(self) -> str:
        """Dovecot's oauth2 passdb (doc.dovecot.org/2.3, "Open Authentication v2.0 database":
        introspection_mode = post sends token=… to the URL, the answer's `active` must be
        true and its `username` the login name). Without it: nothing."""
        if not self.oauth2_introspection_url:
            return ""
        settings = self.base / "dovecot-oauth2.conf.ext"
        lines = [
            "introspection_mode = post",
            f"introspection_url = {self.oauth2_introspection_url}",
            "force_introspection = yes",
            "username_attribute = username",
            "active_attribute = active",
            "active_value = true",
        ]
        if self.oauth2_ca_file is not None:
            lines.append(f"tls_ca_cert_file = {self.oauth2_ca_file}")
        settings.write_text("\n".join(lines) + "\n")
        settings.chmod(0o600)
        return (f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                f"  args = {settings}\n}}\n")

    # -- lifecycle -----------------------------------------------------------
    def start(self, attempts: int = 3) -> DovecotServer:
        """Start the master in the foreground; retry on a port conflict."""
        if self.running:
            return self
        keep_ports = self.port != 0
        last_error: Exception | None = None
        for _ in range(attempts):
            if not keep_ports:
                self.port = free_port()
                self.tls_port = free_port() if self.tls else 0
            self._write_config()
            try:
                self._spawn_and_wait()
                return self
            except DovecotError as exc:
                last_error = exc
                self.stop()
                if "Address already in use" not in str(exc):
                    raise
                if keep_ports:
                    # A restart after kill() may see the port briefly in use.
                    time.sleep(0.5)
        raise DovecotError(f"could not start Dovecot after {attempts} attempts: {last_error}")

    def _spawn_and_wait(self) -> None:
        assert self.binary is not None
        stderr = open(self.base / "dovecot.stderr", "ab")
        try:
            # -F: foreground, so the Popen is the master; own session so kill()
            # can take the whole server (master and children) down like a crash.
            self._proc = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                start_new_session=True,
            )
        finally:
            stderr.close()
        _running_servers.add(self)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise DovecotError(self._failure("exited with " + str(self._proc.returncode)))
            tls_ok = not self.tls or self._answers(self.tls_port, tls=True)
            if self._answers(self.port) and tls_ok:
                return
            time.sleep(0.05)
        raise DovecotError(self._failure(f"did not answer within {START_TIMEOUT:.0f}s"))

    def _answers(self, port: int, *, tls: bool = False) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=1.0) as sock:
                if tls:
                    ctx = ssl.create_default_context(cafile=str(self.tls_files.cert))  # type: ignore[union-attr]
                    with ctx.wrap_socket(sock, server_hostname=self.host) as tls_sock:
                        return tls_sock.recv(64).startswith(b"* OK")
                return sock.recv(64).startswith(b"* OK")
        except OSError:
            return False

    def _failure(self, what: str) -> str:
        stderr = _tail(self.base / "dovecot.stderr", 10)
        return (
            f"Dovecot on {self.host}:{self.port} {what}; config {self.conf_path}\n"
            f"--- log tail ({self.log_path}) ---\n{_tail(self.log_path)}\n"
            f"--- stderr ---\n{stderr}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop cleanly (SIGTERM to the master, which stops its children)."""
        if self._proc is None:
            return
        _running_servers.discard(self)
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout)
        self._kill_group()
        self._reap()

    def kill(self) -> None:
        """Crash the server: SIGKILL the master and then whatever it left running."""
        if self._proc is None:
            return
        _running_servers.discard(self)
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(10)
        self._kill_group()
        self._reap()

    def restart(self) -> DovecotServer:
        """Stop (if running) and start on the same port."""
        self.stop()
        return self.start()

    def _kill_group(self) -> None:
        # The group id is the master's pid (start_new_session): only our processes.
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _live_group_members(self._proc.pid):
            time.sleep(0.02)

    def _reap(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
        self._proc = None

    def cleanup(self) -> None:
        """Take the server down (no graceful shutdown: it is thrown away) and remove it."""
        self.kill()
        if self._owns_base:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> DovecotServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.cleanup()

    # -- mailbox helpers (over real IMAP) ------------------------------------
    def client(self) -> IMAPClient:
        """A logged-in imapclient.IMAPClient over plain IMAP on the loopback."""
        from imapclient import IMAPClient

        client = IMAPClient(self.host, port=self.port, ssl=False, timeout=30)
        client.login(self.user, self.password)
        return client

    def append(
        self,
        raw: bytes,
        folder: str = "INBOX",
        flags: tuple[str, ...] = (),
        msg_time: datetime | None = None,
    ) -> int:
        """APPEND one raw message and return its UID (from APPENDUID)."""
        with self.client() as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            response = client.append(folder, raw, flags=flags, msg_time=msg_time)
        match = re.search(rb"APPENDUID \d+ (\d+)", response)
        if match is None:
            raise DovecotError(f"no APPENDUID in {response!r}")
        return int(match.group(1))

    def uids(self, folder: str = "INBOX") -> list[int]:
        with self.client() as client:
            if not client.folder_exists(folder):
                return []
            client.select_folder(folder, readonly=True)
            return sorted(client.search("ALL"))

    def uidvalidity(self, folder: str = "INBOX") -> int:
        with self.client() as client:
            status = client.folder_status(folder, [b"UIDVALIDITY"])
        return int(status[b"UIDVALIDITY"])

    def flags(self, folder: str = "INBOX") -> dict[int, tuple[bytes, ...]]:
        with self.client() as client:
            client.select_folder(folder, readonly=True)
            fetched = client.fetch(uids, ["FLAGS"]) if (uids := client.search("ALL")) else {}
        return {uid: tuple(data[b"FLAGS"]) for uid, data in fetched.items()}

    def bodies(self, folder: str = "INBOX") -> dict[int, bytes]:
        with self.client() as client:
            client.select_folder(folder, readonly=True)
            fetched = client.fetch(uids, ["BODY.PEEK[]"]) if (uids := client.search("ALL")) else {}
        return {uid: bytes(data[b"BODY[]"]) for uid, data in fetched.items()}

    def reset_uidvalidity(self, folder: str = "INBOX") -> int:
        """Give `folder` a new UIDVALIDITY (and renumber its mail), as a rebuilt
        mailbox would; the server is stopped for it and restarted if it was running.
        Returns the new UIDVALIDITY."""
        was_running = self.running
        old = self.uidvalidity(folder) if was_running else None
        self.stop()
        directory = self.maildir if folder == "INBOX" else self.maildir / f".{folder}"
        for path in directory.glob("dovecot*"):
            if path.name.startswith(("dovecot-uidlist", "dovecot.index")):
                path.unlink()
        # Dovecot hands out the next UIDVALIDITY from Maildir/dovecot-uidvalidity,
        # always above the last one, so the new value differs without waiting.
        self.start()
        new = self.uidvalidity(folder)
        if old is not None and new == old:
            raise DovecotError(f"UIDVALIDITY did not change ({old})")
        if not was_running:
            self.stop()
        return new
