"""playbooks/ipam.yml fails closed: a ledger that is not exactly what the IPAM writes stops the run,
nothing is written and no address moves; verify mode, job slicing and survey strings (issue 13)."""

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml
from ansible_cli import ROOT, ansible_run, copy_first_run, kept_first_run

V100_NEW = "v100-003.dc1.example.com"
OLD_HEADER = (
    "---\n# RoCE IPAM ledger: every address handed out, one line each. Written by playbooks/ipam.yml\n"
    "# (roce_ipam_assign + ipam_ledger); addresses here never move. Free one only through\n"
    "# roce_ipam_release, never by editing this file.\n"
)


def copy_inventory(source, destination, ledger):
    shutil.copytree(source, destination)
    shutil.rmtree(destination / "ipam", ignore_errors=True)
    hosts = yaml.safe_load((destination / "hosts.yml").read_text())
    if ledger is None:
        del hosts["all"]["vars"]["roce_ipam_ledger_path"]
    else:
        hosts["all"]["vars"]["roce_ipam_ledger_path"] = str(ledger)
    (destination / "hosts.yml").write_text(yaml.safe_dump(hosts))
    return destination


def add_v100_host(inventory, name=V100_NEW):
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    hosts["all"]["children"]["pool_hpc"]["children"]["hpc_v100"]["hosts"][name] = None
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))


def ipam(inventory, *args, playbook=ROOT / "playbooks" / "ipam.yml", **kwargs):
    run = ansible_run("ansible-playbook", "-i", inventory, playbook, *args, **kwargs)
    return run.returncode, run.stdout + run.stderr


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A first run on the example inventory, made once (ansible_cli.copy_first_run puts it in each test)."""
    tmp = tmp_path_factory.mktemp("first-run")
    ledger = tmp / "ledger" / "roce-ledger.yml"
    inventory = copy_inventory(ROOT / "inventories" / "example", tmp / "example", ledger)
    rc, output = ipam(inventory, "-e", "roce_ipam_ledger_init=true")
    assert rc == 0, output
    assert ledger.read_text().endswith("# end of ledger: 50 allocations, 0 released\n")
    assert [path.name for path in ledger.parent.iterdir()] == ["roce-ledger.yml"]
    return kept_first_run(ledger)


@pytest.fixture
def allocated(first_run, tmp_path):
    """(inventory, ledger) after a first run: every rail of the example inventory allocated."""
    ledger = tmp_path / "ledger" / "roce-ledger.yml"
    inventory = copy_inventory(ROOT / "inventories" / "example", tmp_path / "example", ledger)
    copy_first_run(first_run, ledger)
    return inventory, ledger


def lines_of(text):
    return text.splitlines(keepends=True)


# Each: the ledger's text made wrong from the written one, and what the run must say.
BROKEN = {
    "empty": (lambda text: "", "is empty: it holds no version and no allocations"),
    "header only": (lambda text: OLD_HEADER, "is empty"),
    "header only, with the end line promised": (lambda text: text[: text.index("version: 1")], "has no end line"),
    "allocations null": (lambda text: "version: 1\nallocations:\n", "has 'allocations' null"),
    "misspelled key": (
        lambda text: text.replace("\nallocations:\n", "\nalocations:\n"),
        "has the unknown top-level key(s) 'alocations'",
    ),
    "cut at a line": (lambda text: "".join(lines_of(text)[:-4]), "has no end line"),
    "cut in a line": (lambda text: text[: len(text) // 2], "has no end line"),
    "old form cut in a line": (
        lambda text: OLD_HEADER + text[text.index("version: 1") : len(text) // 2],
        "is not valid YAML (cut short, or edited by hand?)",
    ),
    "a line lost": (
        lambda text: text.replace(next(line for line in lines_of(text) if "a800-002" in line), ""),
        "ends with a line counting 50 allocations and 0 released, but holds 49 and 0",
    ),
    "a number for a host": (
        lambda text: (
            OLD_HEADER + "version: 1\nallocations:\n  - {pool: v100-rail0, host: 0123, device: d, ip: 10.220.0.9}\n"
        ),
        r"entry allocations[0] has host 83, not a non-empty string",
    ),
    "not UTF-8": (lambda text: text.replace("a800-001", "a800-\udcff01"), "is not UTF-8 text"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_ledger_not_exactly_as_written_stops_the_run_and_moves_nothing(allocated, case):
    inventory, ledger = allocated
    broken, reason = BROKEN[case]
    data = broken(ledger.read_text()).encode("utf-8", "surrogateescape")
    ledger.write_bytes(data)
    add_v100_host(inventory)  # a run that would write
    rc, output = ipam(inventory)
    assert rc != 0, output
    assert f"the ledger {ledger} " in output
    assert reason in output
    assert ledger.read_bytes() == data  # nothing written, no address moved
    assert [path.name for path in ledger.parent.iterdir()] == ["roce-ledger.yml"]


def test_a_ledger_that_is_a_directory_stops_the_run(allocated):
    inventory, ledger = allocated
    ledger.unlink()
    ledger.mkdir()
    rc, output = ipam(inventory)
    assert rc != 0
    assert f"cannot read the ledger {ledger}: Is a directory" in output


def test_a_missing_ledger_stops_the_run_unless_a_new_one_is_asked_for(allocated):
    inventory, ledger = allocated
    ledger.unlink()
    rc, output = ipam(inventory)
    assert rc != 0
    assert f"the ledger {ledger} does not exist, and pools are defined" in output
    assert "roce_ipam_ledger_init=true" in output
    assert not ledger.exists()
    rc, output = ipam(inventory, "-e", "roce_ipam_ledger_init=true")
    assert rc == 0, output
    assert ledger.exists()


def test_no_ledger_path_stops_the_run(tmp_path):
    inventory = copy_inventory(ROOT / "inventories" / "example", tmp_path / "example", None)
    rc, output = ipam(inventory, "-e", "roce_ipam_ledger_init=true")
    assert rc != 0
    assert "roce_ipam_ledger_path is not set" in output
    assert not (inventory / "ipam").exists()


def test_a_symlinked_ledger_is_replaced_through_the_link_and_keeps_its_mode(allocated, tmp_path):
    inventory, ledger = allocated
    store = tmp_path / "store" / "real-ledger.yml"
    store.parent.mkdir()
    shutil.move(ledger, store)
    os.symlink(store, ledger)
    store.chmod(0o640)
    add_v100_host(inventory)
    rc, output = ipam(inventory)
    assert rc == 0, output
    assert ledger.is_symlink() and ledger.resolve() == store
    assert stat.S_IMODE(store.stat().st_mode) == 0o640
    assert f"v100-rail0, host: {V100_NEW}, device: mlx5_0, ip: 10.220.0.3}}" in store.read_text()
    assert sorted(path.name for path in store.parent.iterdir()) == ["real-ledger.yml"]


def test_the_ledger_keeps_its_mode(allocated):
    inventory, ledger = allocated
    ledger.chmod(0o600)
    add_v100_host(inventory)
    rc, output = ipam(inventory)
    assert rc == 0, output
    assert V100_NEW in ledger.read_text()
    assert stat.S_IMODE(ledger.stat().st_mode) == 0o600


# --- as AWX runs it: the inventory a copy elsewhere, the ledger the project's --------------------

PROJECT_PARTS = [
    "ansible.cfg",
    "playbooks",
    "roles",
    "action_plugins",
    "filter_plugins",
    "library",
    "lookup_plugins",
    "module_utils",
    "inventories",
]


@pytest.fixture
def awx_job(tmp_path):
    """(project checkout, inventory copy with one host added, the checkout's committed ledger)."""
    project = tmp_path / "project"
    project.mkdir()
    for part in PROJECT_PARTS:
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, project / part)
    inventory = tmp_path / "awx" / "inventory"
    shutil.copytree(project / "inventories" / "example", inventory, ignore=shutil.ignore_patterns("ipam"))
    add_v100_host(inventory)
    return project, inventory, project / "inventories" / "example" / "ipam" / "roce-ledger.yml"


def awx_run(project, inventory, *args):
    run = ansible_run(
        "ansible-playbook",
        "-i",
        inventory,
        project / "playbooks" / "ipam.yml",
        *args,
        env={"ANSIBLE_CONFIG": str(project / "ansible.cfg")},
        cwd=inventory.parent,
    )
    return run.returncode, run.stdout + run.stderr


def committed(ledger):
    return {(e["pool"], e["host"], e["device"]): e["ip"] for e in yaml.safe_load(ledger.read_text())["allocations"]}


def test_an_awx_style_inventory_elsewhere_reads_and_writes_the_projects_ledger(awx_job):
    project, inventory, ledger = awx_job
    before = committed(ledger)
    rc, output = awx_run(project, inventory, "-e", "roce_ipam_mode=verify")
    assert rc != 0
    assert f"verify mode: the ledger {ledger} is not up to date: allocation would take 1 and free 0" in output
    assert f"take v100-rail0 {V100_NEW} mlx5_0 10.220.0.3" in output
    assert committed(ledger) == before
    rc, output = awx_run(project, inventory)
    assert rc == 0, output
    after = committed(ledger)
    assert {key: ip for key, ip in after.items() if key[1] != V100_NEW} == before  # nothing moved
    assert after[("v100-rail0", V100_NEW, "mlx5_0")] not in before.values()
    assert not (inventory / "ipam").exists()  # nothing beside the copy


# --- verify mode -------------------------------------------------------------------------------


def test_verify_mode_passes_an_up_to_date_ledger_and_writes_nothing(allocated):
    inventory, ledger = allocated
    text, mtime = ledger.read_text(), ledger.stat().st_mtime_ns
    rc, output = ipam(inventory, "-e", "roce_ipam_mode=verify")
    assert rc == 0, output
    assert (ledger.read_text(), ledger.stat().st_mtime_ns) == (text, mtime)


def test_verify_mode_fails_listing_a_release_and_writes_nothing(allocated):
    inventory, ledger = allocated
    text = ledger.read_text()
    release = json.dumps({"roce_ipam_release": "v100-001.dc1.example.com", "roce_ipam_mode": "verify"})
    rc, output = ipam(inventory, "-e", release)
    assert rc != 0
    # Still in the inventory, the host would take a new address: its old one is held back.
    assert "would take 1 and free 1" in output
    assert "free v100-rail0 v100-001.dc1.example.com mlx5_0 10.220.0.1" in output
    assert "take v100-rail0 v100-001.dc1.example.com mlx5_0 10.220.0.3" in output
    assert ledger.read_text() == text


def test_verify_mode_refuses_a_missing_ledger(allocated):
    inventory, ledger = allocated
    ledger.unlink()
    rc, output = ipam(inventory, "-e", "roce_ipam_mode=verify", "-e", "roce_ipam_ledger_init=true")
    assert rc != 0
    assert f"verify mode: the ledger {ledger} does not exist" in output
    assert not ledger.exists()


# --- AWX job slicing --------------------------------------------------------------------------


def test_a_sliced_job_is_refused_before_anything_is_read(allocated):
    inventory, ledger = allocated
    ledger.write_text("")  # would fail if it were read
    rc, output = ipam(inventory, "-e", "awx_job_slice_count=2", "-e", "awx_job_slice_number=1")
    assert rc != 0
    assert "the IPAM play refuses a sliced job (awx_job_slice_count=2)" in output
    assert ledger.read_text() == ""
    ledger.unlink()
    rc, output = ipam(inventory, "-e", "awx_job_slice_count=1", "-e", "roce_ipam_ledger_init=true")
    assert rc == 0, output


# --- a release typed in a survey: one string -----------------------------------------------------


def test_a_release_given_as_a_string_of_names_frees_them_and_holds_them_back(allocated):
    inventory, ledger = allocated
    before = committed(ledger)
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())  # a800-001 leaves the inventory
    hosts["all"]["children"]["pool_hpc"]["children"]["hpc_a800"]["hosts"] = {
        f"a800-00{n}.dc1.example.com": None for n in (2, 3, 4)
    }
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    typed = "a800-001.dc1.example.com,\n a800-002.dc1.example.com/mlx5_3"
    rc, output = ipam(inventory, "-e", json.dumps({"roce_ipam_release": typed}), "--limit", "gpu-001.dc1.example.com")
    assert rc == 0, output
    data = yaml.safe_load(ledger.read_text())
    freed = {key for key in before if key[1] == "a800-001.dc1.example.com"}
    rail3 = ("a800-rail3", "a800-002.dc1.example.com", "mlx5_3")
    freed.add(rail3)
    assert len(freed) == 9
    after = committed(ledger)
    assert {key: ip for key, ip in after.items() if key != rail3} == {
        key: ip for key, ip in before.items() if key not in freed
    }
    # a800-002 still has the rail: it takes a new address, neither its old one nor a800-001's.
    assert after[rail3] not in {before[key] for key in freed}
    assert after[rail3] not in before.values()
    released = {(e["pool"], e["host"], e["device"]): e["ip"] for e in data["released"]}
    assert released == {key: before[key] for key in freed}
    assert all(e["released_at"].endswith("Z") for e in data["released"])
    assert ledger.read_text().endswith(f"# end of ledger: {50 - 8} allocations, 9 released\n")


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("a800-001.dc1.example.com; rm -rf", "the host name 'a800-001.dc1.example.com;' is not one an inventory holds"),
        ("a800-001.dc1.example.com/mlx5_0/x", "the device name 'mlx5_0/x' is not 1 to 63 of"),
        ("a800-009.dc1.example.com", "names what holds no address in the ledger: a800-009.dc1.example.com"),
    ],
)
def test_a_release_string_that_is_not_names_the_ledger_holds_fails_and_frees_nothing(allocated, typed, reason):
    inventory, ledger = allocated
    text = ledger.read_text()
    rc, output = ipam(inventory, "-e", json.dumps({"roce_ipam_release": typed}))
    assert rc != 0
    assert reason in output
    assert ledger.read_text() == text


def test_the_committed_ledgers_are_read_as_they_are(tmp_path):
    for env in ("lab", "example"):
        path = Path(ROOT / "inventories" / env / "ipam" / "roce-ledger.yml")
        assert path.read_text().endswith(" released\n"), path
