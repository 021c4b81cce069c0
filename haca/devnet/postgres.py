"""A private PostgreSQL server for a node's workers (and the tests of them): Debian's `postgresql`
binaries, a fresh cluster in a folder of our own, listening on loopback at a port of our choosing.
Run as root (a container), the server runs as the `postgres` user: initdb and postgres refuse root."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from haca.devnet.processes import free_ports

SERVER_USER = "postgres"  # the account Debian's package creates


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here (or no way to run them): the reason says which."""


def server_binaries() -> Path:
    """The folder holding initdb, pg_ctl and postgres (the newest Debian version installed)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    raise PostgresUnavailable("PostgreSQL is not installed: `apt-get install postgresql` (make test does this)")


def _run_as() -> pwd.struct_passwd | None:
    """The user the server runs as: None for the current one; the `postgres` account under root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError as exc:
        raise PostgresUnavailable(f"running as root and there is no {SERVER_USER!r} user to run PostgreSQL") from exc


def _demote(user: pwd.struct_passwd | None) -> dict[str, object]:
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@dataclass
class PostgresServer:
    """One cluster: `start()` makes it (first time) and starts it; `dsn(db)` connects to a database."""

    folder: Path
    port: int

    @classmethod
    def temporary(cls) -> PostgresServer:
        return cls(Path(tempfile.mkdtemp(prefix="haca-pg-")), free_ports(1)[0])

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def _call(self, args: list[str], timeout: float = 120.0) -> None:
        user = _run_as()
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.folder, **_demote(user)
        )  # type: ignore[call-overload]
        if result.returncode != 0:
            raise PostgresUnavailable(f"{Path(args[0]).name} failed: {(result.stderr or result.stdout).strip()[-800:]}")

    def start(self) -> PostgresServer:
        bin_dir = server_binaries()
        user = _run_as()
        self.folder.mkdir(parents=True, exist_ok=True)
        if user is not None:
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            os.chmod(self.folder, 0o755)
        if not (self.data / "PG_VERSION").exists():
            initdb = [str(bin_dir / "initdb"), "-D", str(self.data), "-U", SERVER_USER, "--auth=trust"]
            self._call([*initdb, "-E", "UTF8", "--no-sync"])
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
        log = self.folder / "server.log"
        pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", options]
        self._call([*pg_ctl, "-w", "-t", "60", "start"])
        return self

    def stop(self) -> None:
        with contextlib.suppress(PostgresUnavailable, subprocess.TimeoutExpired, FileNotFoundError):
            self._call([str(server_binaries() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"], 60)

    def create_database(self, name: str) -> str:
        """A fresh database on this server; its DSN."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def remove(self) -> None:
        self.stop()
        for _ in range(3):
            with contextlib.suppress(OSError):
                shutil.rmtree(self.folder)
                return
            time.sleep(0.2)
