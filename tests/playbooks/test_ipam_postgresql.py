"""The IPAM's PostgreSQL store against a real PostgreSQL 15 that the test starts itself (issue 13).

Debian's postgresql-15 (tools/setup.sh installs it), started by tools/scratch_postgresql.py as an
unprivileged user (nobody, when the tests run as root), in a temporary directory, listening on
127.0.0.1 only with a password (scram-sha-256) given to libpq through the environment, stopped
afterwards.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import yaml
from ansible_cli import ROOT, ansible_run

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is pinned in requirements.txt: run tools/setup.sh")

PASSWORD = "ipam-test-" + os.urandom(6).hex()  # a throwaway server's, never a real one


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


store = _load("ipam_postgresql_under_test", ROOT / "library" / "ipam_postgresql.py")
scratch_postgresql = _load("scratch_postgresql", ROOT / "tools" / "scratch_postgresql.py")


@pytest.fixture(scope="module")
def server():
    """libpq's environment of a fresh PostgreSQL 15 server (tools/scratch_postgresql.py)."""
    if not (scratch_postgresql.PG_BIN / "initdb").exists():
        pytest.fail(f"PostgreSQL 15 is not installed ({scratch_postgresql.PG_BIN}): tools/setup.sh installs it")
    with scratch_postgresql.scratch_server(PASSWORD) as environment:
        yield environment


@pytest.fixture
def database(server, monkeypatch):
    """An empty store: libpq's environment set for this process and the runs it starts."""
    for key, value in server.items():
        monkeypatch.setenv(key, value)
    with psycopg.connect("", autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS roce_ipam_allocation, roce_ipam_released")
        connection.execute(store.SCHEMA)
    return server


def rows(table="roce_ipam_allocation"):
    with psycopg.connect("", autocommit=True) as connection:
        if table == "roce_ipam_allocation":
            return sorted(connection.execute(f"SELECT pool, host, device, ip FROM {table}").fetchall())  # noqa: S608
        return sorted(connection.execute(f"SELECT * FROM {table}").fetchall())  # noqa: S608


def inventory_with(tmp_path, name, *extra_hosts):
    copy = tmp_path / name
    shutil.copytree(ROOT / "inventories" / "example", copy, ignore=shutil.ignore_patterns("ipam"))
    hosts = yaml.safe_load((copy / "hosts.yml").read_text())
    hosts["all"]["vars"] = {"roce_ipam_backend": "postgresql", "roce_ipam_ledger_path": str(copy / "unused.yml")}
    v100 = hosts["all"]["children"]["pool_hpc"]["children"]["hpc_v100"]["hosts"]
    v100.update(dict.fromkeys(extra_hosts))
    (copy / "hosts.yml").write_text(yaml.safe_dump(hosts))
    return copy


def playbook(inventory, *args):
    return ansible_run("ansible-playbook", "-i", inventory, ROOT / "playbooks" / "ipam.yml", *args)


COMMITTED = ROOT / "inventories" / "example" / "ipam" / "roce-ledger.yml"


def ipam_store(*args):
    return ansible_run(sys.executable, ROOT / "tools" / "ipam_store.py", *args)


def test_a_file_ledger_moves_into_the_database_and_back_identical(database, tmp_path):
    run = ipam_store("import", COMMITTED)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout == f"imported 50 allocations from {COMMITTED}\n"
    assert len(rows()) == 50
    exported = tmp_path / "roce-ledger.yml"
    run = ipam_store("export", exported)
    assert run.returncode == 0, run.stdout + run.stderr
    assert exported.read_bytes() == COMMITTED.read_bytes()
    listed = ipam_store("list")
    assert listed.stdout.count("\n") == 50
    assert "a800-rail7 a800-003.dc1.example.com mlx5_7 10.200.7.3\n" in listed.stdout
    run = ipam_store("import", COMMITTED)
    assert run.returncode != 0
    assert "already holds 50 allocations; import refused" in run.stderr
    module = ansible_run("ansible", "localhost", "-m", "ipam_postgresql", "-a", "command=list")
    assert module.returncode == 0, module.stdout
    assert "\n    allocations: 50\n" in module.stdout
    assert PASSWORD not in run.stdout + run.stderr + listed.stdout + module.stdout


def test_the_round_trip_keeps_released_entries_too(database, tmp_path):
    text = COMMITTED.read_text()
    ledger_file = _load("ipam_ledger_under_test", ROOT / "library" / "ipam_ledger.py")
    data = yaml.safe_load(text)
    data["released"] = [
        {"pool": "v100-rail0", "host": "v100-009", "device": "mlx5_0", "ip": "10.220.0.9", "released_at": t}
        for t in ("2026-01-02T03:04:05Z",)
    ]
    source = tmp_path / "with-released.yml"
    source.write_text(ledger_file.render(data))
    assert store.import_file("", str(source)) == 50
    back = tmp_path / "back.yml"
    store.export_file("", str(back))
    assert back.read_bytes() == source.read_bytes()


def test_the_database_itself_refuses_a_forged_duplicate(database):
    assert store.import_file("", str(COMMITTED)) == 50
    taken = rows()[0]
    with psycopg.connect("", autocommit=True) as connection:
        with pytest.raises(psycopg.errors.UniqueViolation, match="roce_ipam_allocation_pool_ip_key"):
            connection.execute(
                "INSERT INTO roce_ipam_allocation VALUES (%s, 'forged-host', 'mlx5_0', %s)", (taken[0], taken[3])
            )
        with pytest.raises(psycopg.errors.UniqueViolation, match="roce_ipam_allocation_pool_host_device_key"):
            connection.execute(
                "INSERT INTO roce_ipam_allocation VALUES (%s, %s, %s, '10.255.255.1')", (taken[0], taken[1], taken[2])
            )
    assert len(rows()) == 50


def test_a_pod_range_over_held_addresses_is_refused_in_the_transaction_and_the_rows_kept(database):
    """The store's allocation runs the filter inside its transaction (the action's compute): a
    pod_range newly declared over addresses the store holds fails naming them, and rolls back."""
    from ansible.errors import AnsibleFilterError  # noqa: PLC0415

    ipam = _load("roce_ipam_under_test", ROOT / "filter_plugins" / "roce_ipam.py")
    rail = {"name": "rail0", "subnet": "10.10.0.0/24"}
    wanted = [{"host": f"node{n}", "device": "mlx5_0", "pool": "rail0"} for n in range(1, 5)]
    store.allocate("", lambda base: ipam.roce_ipam_assign(base, [rail], wanted[:3])["ledger"])
    before = rows()
    pods = [{**rail, "pod_range": "10.10.0.2/31"}]
    with pytest.raises(
        AnsibleFilterError,
        match=r"pool rail0: the ledger holds addresses that are now inside pod_range 10\.10\.0\.2/31, which "
        r"whereabouts hands to pods: node2/mlx5_0 10\.10\.0\.2, node3/mlx5_0 10\.10\.0\.3",
    ):
        store.allocate("", lambda base: ipam.roce_ipam_assign(base, pods, wanted)["ledger"])
    assert rows() == before
    clear = [{**rail, "pod_range": "10.10.0.4/30"}]
    store.allocate("", lambda base: ipam.roce_ipam_assign(base, clear, wanted)["ledger"])
    assert rows() == sorted([*before, ("rail0", "node4", "mlx5_0", "10.10.0.8")])


def test_playbook_runs_need_a_ledger_then_allocate_then_check_mode_writes_nothing(database, tmp_path):
    inventory = inventory_with(tmp_path, "one")
    run = playbook(inventory)
    assert run.returncode != 0
    assert "the IPAM database holds no allocation" in run.stdout
    assert rows() == []
    run = playbook(inventory, "-e", "roce_ipam_ledger_init=true")
    assert run.returncode == 0, run.stdout + run.stderr
    allocated = rows()
    assert len(allocated) == 50
    assert PASSWORD not in run.stdout + run.stderr
    grown = inventory_with(tmp_path, "grown", "v100-003.dc1.example.com")
    run = playbook(grown, "--check", "--diff")
    assert run.returncode == 0, run.stdout + run.stderr
    assert rows() == allocated
    run = playbook(grown, "-e", "roce_ipam_mode=verify")
    assert run.returncode != 0
    assert "take v100-rail0 v100-003.dc1.example.com mlx5_0 10.220.0.3" in run.stdout
    assert rows() == allocated
    run = playbook(grown)
    assert run.returncode == 0, run.stdout + run.stderr
    assert set(allocated) < set(rows())
    assert ("v100-rail0", "v100-003.dc1.example.com", "mlx5_0", "10.220.0.3") in rows()


def test_two_concurrent_playbook_runs_end_with_every_key_once_and_no_address_twice(database, tmp_path):
    assert store.import_file("", str(COMMITTED)) == 50
    first = inventory_with(tmp_path, "first", *(f"v100-1{n:02d}.dc1.example.com" for n in range(20)))
    second = inventory_with(tmp_path, "second", *(f"v100-2{n:02d}.dc1.example.com" for n in range(20)))
    environment = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    runs = [
        subprocess.Popen(
            ["ansible-playbook", "-i", str(inventory), str(ROOT / "playbooks" / "ipam.yml")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
            cwd=ROOT,
        )
        for inventory in (first, second)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    final = rows()
    assert len(final) == 50 + 40
    assert len({(pool, host, device) for pool, host, device, _ in final}) == 90  # every key once
    assert len({(pool, ip) for pool, _, _, ip in final}) == 90  # no address twice
    assert {host for _, host, _, _ in final} >= {f"v100-1{n:02d}.dc1.example.com" for n in range(20)}
    assert {host for _, host, _, _ in final} >= {f"v100-2{n:02d}.dc1.example.com" for n in range(20)}


KILLED_WRITER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("store", sys.argv[1])
store = importlib.util.module_from_spec(spec)
spec.loader.exec_module(store)
written = store.write_difference

def write_then_hang(connection, base, ledger):
    changes = written(connection, base, ledger)
    print("written", flush=True)
    time.sleep(120)
    return changes

store.write_difference = write_then_hang
extra = [{"pool": "v100-rail0", "host": "v100-999", "device": "mlx5_0", "ip": "10.220.0.99"}]
store.allocate("", lambda base: {**base, "allocations": base["allocations"] + extra})
"""


def test_a_run_killed_mid_transaction_leaves_the_database_as_it_was(database, tmp_path):
    assert store.import_file("", str(COMMITTED)) == 50
    before = rows()
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(ROOT / "library" / "ipam_postgresql.py")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "written"  # inside the transaction, rows inserted
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    # Nothing of the killed transaction is left: the rows it inserted were never committed.
    assert rows() == before
    # The lock went with the killed session: the next allocator runs.
    base, ledger, _ = store.allocate("", lambda base: base)
    assert base == ledger
    assert json.dumps(base)  # plain data
