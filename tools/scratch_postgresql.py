"""A throwaway PostgreSQL 15 server for the IPAM store's tests and benchmark.

Debian's postgresql-15 (tools/setup.sh installs it): initdb and pg_ctl as an unprivileged user
(nobody, when run as root: PostgreSQL refuses root), in a temporary directory, listening on
127.0.0.1 only, with a password (scram-sha-256); stopped and removed afterwards.
"""

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def scratch_server(password):
    """Yields libpq's environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE) of a fresh server."""
    if not (PG_BIN / "initdb").exists():
        raise RuntimeError(f"PostgreSQL 15 is not installed ({PG_BIN}): tools/setup.sh installs postgresql-15")
    base = Path(tempfile.mkdtemp(prefix="ipam-pg-"))
    base.chmod(0o755)
    data, password_file = base / "data", base / "password"
    data.mkdir(mode=0o700)
    password_file.write_text(password + "\n")
    as_user = []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        for path in (data, password_file):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        as_user = ["runuser", "-u", "nobody", "--"]
    port = _free_port()
    try:
        subprocess.run(
            [*as_user, PG_BIN / "initdb", "-D", data, "-U", "ipam", "--pwfile", password_file, "--auth=scram-sha-256"],
            check=True,
            capture_output=True,
        )
        password_file.unlink()
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories=''"
        started = subprocess.run(
            [*as_user, PG_BIN / "pg_ctl", "-D", data, "-l", data / "server.log", "-o", options, "-w", "start"],
            check=False,
            capture_output=True,
            text=True,
        )
        if started.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {started.stdout}{started.stderr}")
        yield {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(port),
            "PGUSER": "ipam",
            "PGPASSWORD": password,
            "PGDATABASE": "postgres",
        }
    finally:
        subprocess.run(
            [*as_user, PG_BIN / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop"], check=False, capture_output=True
        )
        shutil.rmtree(base, ignore_errors=True)
