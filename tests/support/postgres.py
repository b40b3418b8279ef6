"""A private PostgreSQL for tests: initdb in a temp dir, one loopback port, torn down after."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def _pg_bin() -> Path | None:
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    versions = sorted((p for p in root.iterdir() if (p / "bin" / "initdb").exists()),
                      key=lambda p: int(p.name) if p.name.isdigit() else 0)
    return versions[-1] / "bin" if versions else None


def postgres_available() -> bool:
    return _pg_bin() is not None


class PostgresServer:
    """initdb + pg_ctl as an unprivileged user (`postgres` when the tests run as root)."""

    def __init__(self) -> None:
        bin_dir = _pg_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries not found: run scripts/install-test-deps.sh")
        self.bin = bin_dir
        self.base = Path(tempfile.mkdtemp(prefix="mailbridge-pg-"))
        self.data = self.base / "data"
        self.port = 0
        self.user = "mailbridge"
        self._template_ready = False
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._as, *args], capture_output=True, text=True, check=False,
                              timeout=120, cwd=self.base)

    def start(self) -> PostgresServer:
        result = self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust",
                           "-U", self.user, "-E", "UTF8", "--locale=C.UTF-8")
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr}")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        options = (f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=300")
        result = self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                           str(self.base / "log"), "-o", options, "-w", "-t", "30", "start")
        if result.returncode != 0:
            log = (self.base / "log").read_text(errors="replace") if (self.base / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {result.stderr}\n{log[-2000:]}")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh database, copied from a migrated template (fast: no migration per test)."""
        import psycopg

        if not self._template_ready:
            self._admin("CREATE DATABASE mb_template")
            from mailbridge.schema import upgrade

            upgrade(self.url("mb_template"))
            self._template_ready = True
        name = f"t_{uuid.uuid4().hex[:12]}"
        deadline = time.monotonic() + 30
        while True:
            try:
                self._admin(f"CREATE DATABASE {name} TEMPLATE mb_template")
                return self.url(name)
            except psycopg.errors.ObjectInUse:  # the template is briefly busy
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(sql)

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.base, ignore_errors=True)
