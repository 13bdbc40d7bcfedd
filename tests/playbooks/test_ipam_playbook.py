"""playbooks/ipam.yml end to end on a copy of the example inventory (it connects to no node)."""

import ipaddress
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_cli import copy_first_run, kept_first_run

ROOT = Path(__file__).resolve().parents[2]
A800 = [f"a800-00{i}.dc1.example.com" for i in range(1, 5)]
EVERY_HOST = [
    *A800,
    "ascend-001.dc1.example.com",
    "ascend-002.dc1.example.com",
    "v100-001.dc1.example.com",
    "v100-002.dc1.example.com",
    "gpu-001.dc1.example.com",
    "gpu-002.dc1.example.com",
    "gpu-003.dc1.example.com",
]


def example_copy(directory):
    """A copy of the example inventory whose ledger is the copy's own ipam/roce-ledger.yml, not there yet."""
    copy = directory / "example"
    shutil.copytree(ROOT / "inventories" / "example", copy)
    shutil.rmtree(copy / "ipam", ignore_errors=True)
    hosts = yaml.safe_load((copy / "hosts.yml").read_text())
    hosts["all"]["vars"]["roce_ipam_ledger_path"] = str(copy / "ipam" / "roce-ledger.yml")
    (copy / "hosts.yml").write_text(yaml.safe_dump(hosts))
    return copy


@pytest.fixture
def inventory(tmp_path):
    """A copy of the example inventory whose ledger is the copy's own ipam/roce-ledger.yml, not there yet."""
    return example_copy(tmp_path)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A first run on the example inventory, made once (ansible_cli.copy_first_run puts it in each test)."""
    copy = example_copy(tmp_path_factory.mktemp("first-run"))
    rc, _, output = playbook(copy)
    assert rc == 0, output
    return kept_first_run(copy / "ipam" / "roce-ledger.yml")


@pytest.fixture
def allocated(inventory, first_run):
    """The inventory after a first run of the IPAM play: every rail allocated."""
    copy_first_run(first_run, inventory / "ipam" / "roce-ledger.yml")
    return inventory


# The first run of an inventory starts its ledger only when told to (a missing ledger stops a run).
NEW_LEDGER = ("-e", "roce_ipam_ledger_init=true")


def run_playbook(inventory, playbook, *args, env=None):
    """(rc, the JSON callback's report or None, stdout and stderr) of one ansible-playbook run."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "json",
        **(env or {}),
    }
    run = subprocess.run(
        ["ansible-playbook", "-i", str(inventory), str(playbook), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    try:
        return run.returncode, json.loads(run.stdout), run.stdout + run.stderr
    except json.JSONDecodeError:
        return run.returncode, None, run.stdout + run.stderr


def playbook(inventory, *args):
    return run_playbook(inventory, ROOT / "playbooks" / "ipam.yml", *NEW_LEDGER, *args)


def changed_total(report):
    return sum(stats["changed"] for stats in report["stats"].values())


def ledger(inventory):
    return yaml.safe_load((inventory / "ipam" / "roce-ledger.yml").read_text())


def addresses(inventory):
    return {(e["host"], e["device"]): e["ip"] for e in ledger(inventory)["allocations"]}


def test_allocates_every_rail_once_then_changes_nothing(inventory):
    rc, report, output = playbook(inventory)
    assert rc == 0, output
    assert changed_total(report) == 1  # the one ledger write
    allocated = addresses(inventory)
    assert len(allocated) == 4 * 8 + 2 * 8 + 2 * 1
    assert allocated[(A800[2], "mlx5_7")] == "10.200.7.3"
    assert allocated[("ascend-002.dc1.example.com", "npu0")] == "10.210.0.9"
    rc, report, output = playbook(inventory)
    assert rc == 0, output
    assert changed_total(report) == 0


# A play that reads addresses as the roce role does, on every host, and one other host's from the
# first host; READ_ADDRESSES runs it after the IPAM play.
READ = """
- name: Read the addresses as the roce role does
  hosts: all
  gather_facts: false
  tasks:
    - name: Each host reads its own
      ansible.builtin.debug:
        msg: "{{ lookup('roce_ipam_addresses', inventory_hostname) }}"

    - name: One host reads another's
      ansible.builtin.debug:
        msg: "{{ lookup('roce_ipam_addresses', 'v100-002.dc1.example.com') }}"
      run_once: true
"""
READ_ADDRESSES = f"""
- name: The IPAM play
  ansible.builtin.import_playbook: {ROOT / "playbooks" / "ipam.yml"}
{READ}"""


def read_addresses(inventory, *args):
    """{host: what the lookup gave it} and what the first host read of v100-002's."""
    probe = inventory.parent / "read-addresses.yml"
    probe.write_text(READ_ADDRESSES)
    rc, report, output = run_playbook(inventory, probe, *NEW_LEDGER, *args)
    assert rc == 0, output
    own, other = report["plays"][1]["tasks"]
    (other_result,) = other["hosts"].values()
    return {host: result["msg"] for host, result in own["hosts"].items()}, other_result["msg"]


def expected_addresses(inventory):
    """{host: {device: {address, prefix, pool, gateway}}} from the ledger file and the pools."""
    pools = yaml.safe_load((inventory / "group_vars" / "all" / "ipam.yml").read_text())["roce_ipam_pools"]
    pools = {pool["name"]: pool for pool in pools}
    expected = {host: {} for host in EVERY_HOST}
    for entry in ledger(inventory)["allocations"]:
        pool = pools[entry["pool"]]
        expected[entry["host"]][entry["device"]] = {
            "address": entry["ip"],
            "prefix": ipaddress.ip_network(pool["subnet"]).prefixlen,
            "pool": pool["name"],
            "gateway": pool.get("gateway"),
        }
    return expected


def test_each_host_reads_exactly_its_addresses(inventory):
    read, other = read_addresses(inventory)
    expected = expected_addresses(inventory)
    assert read == expected  # every host, those without rails ({}) included
    assert read["v100-001.dc1.example.com"]["mlx5_0"] == {
        "address": "10.220.0.1",
        "prefix": 24,
        "pool": "v100-rail0",
        "gateway": "10.220.0.254",
    }
    assert other == expected["v100-002.dc1.example.com"]


def test_a_limited_run_reads_the_same_addresses(allocated):
    inventory = allocated
    read, other = read_addresses(inventory, "--limit", A800[1])
    expected = expected_addresses(inventory)
    assert read == {A800[1]: expected[A800[1]]}
    assert other == expected["v100-002.dc1.example.com"]  # a host outside the limit


def test_check_mode_reads_what_the_run_would_allocate_and_writes_nothing(inventory):
    read, _ = read_addresses(inventory, "--check")
    assert not (inventory / "ipam").exists()
    assert playbook(inventory)[0] == 0
    assert read == expected_addresses(inventory)


def test_reading_addresses_without_an_ipam_run_fails_and_says_why(inventory):
    probe = inventory.parent / "no-ipam.yml"
    probe.write_text(READ)
    rc, _, output = run_playbook(inventory, probe, "--limit", A800[0])
    assert rc != 0
    assert "no RoCE addresses were allocated in this run" in output


def test_reading_a_name_outside_the_inventory_fails(inventory):
    probe = inventory.parent / "stranger.yml"
    probe.write_text(READ_ADDRESSES.replace("'v100-002.dc1.example.com'", "'v100-009.dc1.example.com'"))
    rc, _, output = run_playbook(inventory, probe, *NEW_LEDGER)
    assert rc != 0
    assert "'v100-009.dc1.example.com' is not a host of the inventory" in output


def test_limit_changes_nothing(inventory, tmp_path):
    rc, _, output = playbook(inventory, "--limit", A800[3])
    assert rc == 0, output
    limited = addresses(inventory)
    assert len(limited) == 4 * 8 + 2 * 8 + 2 * 1  # every rail of every host, not the limited host's
    (inventory / "ipam" / "roce-ledger.yml").unlink()
    rc, _, output = playbook(inventory)
    assert rc == 0, output
    assert addresses(inventory) == limited


def test_check_mode_previews_a_new_host_and_writes_nothing(allocated):
    inventory = allocated
    before = (inventory / "ipam" / "roce-ledger.yml").read_text()
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    hosts["all"]["children"]["pool_hpc"]["children"]["hpc_v100"]["hosts"]["v100-003.dc1.example.com"] = None
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    rc, _, output = playbook(inventory, "--check", "--diff")
    assert rc == 0, output
    assert "v100-rail0 v100-003.dc1.example.com mlx5_0 10.220.0.3" in output
    assert (inventory / "ipam" / "roce-ledger.yml").read_text() == before


def remove_host(inventory, host):
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    hosts["all"]["children"]["pool_hpc"]["children"]["hpc_a800"]["hosts"] = dict.fromkeys(sorted(set(A800) - {host}))
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))


def test_removed_host_keeps_its_addresses_until_released(allocated):
    inventory = allocated
    before = addresses(inventory)
    remove_host(inventory, A800[0])
    rc, report, output = playbook(inventory)
    assert rc == 0, output
    assert changed_total(report) == 0
    assert addresses(inventory) == before  # absence is not a release
    release = json.dumps({"roce_ipam_release": [{"host": A800[0]}]})
    rc, _, output = playbook(inventory, "-e", release, "--limit", A800[1])
    assert rc == 0, output
    assert addresses(inventory) == {key: ip for key, ip in before.items() if key[0] != A800[0]}


def test_rail_with_an_unknown_pool_fails_and_writes_nothing(allocated):
    inventory = allocated
    before = (inventory / "ipam" / "roce-ledger.yml").read_text()
    (inventory / "group_vars" / "hpc_v100" / "rails.yml").write_text(
        "roce_rails:\n  - {device: mlx5_0, netdev: ens5f0np0, pool: v100-rail9}\n"
    )
    rc, _, output = playbook(inventory)
    assert rc != 0
    assert "unknown pool v100-rail9 requested by v100-001.dc1.example.com, v100-002.dc1.example.com" in output
    assert (inventory / "ipam" / "roce-ledger.yml").read_text() == before


def test_rail_without_a_pool_names_host_and_variable(inventory):
    (inventory / "group_vars" / "hpc_v100" / "rails.yml").write_text("roce_rails:\n  - {device: mlx5_0}\n")
    rc, _, output = playbook(inventory)
    assert rc != 0
    assert "host v100-001.dc1.example.com: roce_rails[0] needs a device and a pool" in output
    assert not (inventory / "ipam").exists()


# --- the IPAM play at fleet scale: nothing per host ---------------------------------------------


def test_every_task_of_the_ipam_play_runs_for_one_host(inventory):
    for limit in ([], ["--limit", "a800-*"]):
        rc, report, output = playbook(inventory, *limit)
        assert rc == 0, output
        (ipam_play,) = report["plays"]
        tasks = {task["task"]["name"]: list(task["hosts"]) for task in ipam_play["tasks"]}
        assert any(name.startswith("roce_ipam : Validating arguments") for name in tasks), tasks
        assert "roce_ipam : Allocate every RoCE port of the inventory, once, on the controller" in tasks
        assert all(len(hosts) == 1 for hosts in tasks.values()), tasks
        assert len(report["stats"]) == 1  # no other host has a result of any kind


def add_a800_hosts(inventory, count):
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    a800 = hosts["all"]["children"]["pool_hpc"]["children"]["hpc_a800"]["hosts"]
    a800.update(dict.fromkeys(f"a800-{n:03d}.dc1.example.com" for n in range(100, 100 + count)))
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))


def host_steps(inventory):
    """How many (host, task) pairs the strategy built variables for (each is a host's task)."""
    rc, _, output = run_playbook(
        inventory,
        ROOT / "playbooks" / "ipam.yml",
        *NEW_LEDGER,
        env={"ANSIBLE_DEBUG": "1", "ANSIBLE_STDOUT_CALLBACK": "default"},
    )
    assert rc == 0, output[-3000:]
    return len(re.findall(r"^\s*\d+ [\d.]+: getting variables$", output, flags=re.MULTILINE))


def test_controller_work_does_not_grow_with_the_inventory(inventory):
    # Ansible builds a host's variables (about 1 ms, and more as the inventory grows) for every
    # task it runs on that host, implicit ones included (the end of a role listed in `roles:`).
    small = host_steps(inventory)
    add_a800_hosts(inventory, 40)
    shutil.rmtree(inventory / "ipam")
    assert host_steps(inventory) == small
    assert small <= 6  # the include, the role's validation and two tasks, the role's end


# --- the rails, read at scale exactly as hostvars gives them -------------------------------------

SOURCES_INVENTORY = """
all:
  children:
    profile_a:
      hosts:
        a1:
        a2:
        a3: {roce_rails: [{device: d3, pool: inventory-host-var}]}
        a4:
        a5:
        a6:
        a7:
    profile_b:
      hosts:
        b1: {b_pool: pool-of-b1}
        b2: {b_pool: pool-of-b2}
    low:
      hosts:
        c1:
        c2:
    high:
      vars: {ansible_group_priority: 10}
      hosts:
        c1:
    next_to_playbook:
      hosts:
        p1:
  hosts:
    u1:
"""
SOURCE_FILES = {
    "inventory/group_vars/profile_a.yml": "roce_rails: [{device: m0, pool: group-a}, {device: m1, pool: group-a}]",
    "inventory/group_vars/profile_b.yml": "roce_rails: [{device: mlx5_0, pool: '{{ b_pool }}'}]",
    "inventory/group_vars/low.yml": "roce_rails: [{device: d, pool: group-low}]",
    "inventory/group_vars/high.yml": "roce_rails: [{device: d, pool: group-high}]",
    "inventory/host_vars/a2.yml": "roce_rails: [{device: d2, pool: host-vars-file}]",
    "playbook/host_vars/a7.yml": "roce_rails: [{device: d7, pool: host-vars-next-to-playbook}]",
    "playbook/group_vars/next_to_playbook.yml": "roce_rails: [{device: dp, pool: group-vars-next-to-playbook}]",
    "playbook/a6-rails.yml": "roce_rails: [{device: d6, pool: include-vars}]",
    "playbook/cache-a-fact.yml": """
- name: An earlier run leaves a fact of a5 in the fact cache (AWX keeps facts this way)
  hosts: a5
  gather_facts: false
  tasks:
    - name: Cache it
      ansible.builtin.set_fact:
        roce_rails: [{device: d5, pool: cached-fact}]
        cacheable: true
""",
}
SOURCES_PLAYBOOK = """
- name: Set the rails on hosts in a task
  hosts: a4,a6
  gather_facts: false
  tasks:
    - name: set_fact on a4
      ansible.builtin.set_fact:
        roce_rails: [{device: d4, pool: set-fact}]
      when: inventory_hostname == 'a4'

    - name: include_vars on a6
      ansible.builtin.include_vars: a6-rails.yml
      when: inventory_hostname == 'a6'

- name: Read every host's rails both ways
  hosts: all
  gather_facts: false
  tasks:
    - name: Through hostvars, host by host
      ansible.builtin.debug:
        msg: "{{ hostvars[item].roce_rails | default([]) }}"
      loop: "{{ groups['all'] }}"
      run_once: true

    - name: Through roce_ipam_requests, all at once
      ansible.builtin.debug:
        msg: "{{ hostvars | roce_ipam_requests(groups['all']) }}"
      run_once: true
"""


def requests_both_ways(tmp_path, *args):
    for path, text in SOURCE_FILES.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text + "\n")
    (tmp_path / "inventory" / "hosts.yml").write_text(SOURCES_INVENTORY)
    (tmp_path / "playbook" / "read.yml").write_text(SOURCES_PLAYBOOK)
    facts = {
        "ANSIBLE_CACHE_PLUGIN": "ansible.builtin.jsonfile",
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp_path / "facts"),
    }
    rc, _, output = run_playbook(tmp_path / "inventory", tmp_path / "playbook" / "cache-a-fact.yml", env=facts)
    assert rc == 0, output
    rc, report, output = run_playbook(tmp_path / "inventory", tmp_path / "playbook" / "read.yml", *args, env=facts)
    assert rc == 0, output
    host_by_host, all_at_once = report["plays"][1]["tasks"]
    (loop,) = host_by_host["hosts"].values()
    expected = [
        {"host": item["item"], "device": str(rail["device"]), "pool": str(rail["pool"])}
        for item in loop["results"]
        for rail in item["msg"]
    ]
    (requests,) = all_at_once["hosts"].values()
    return requests["msg"], expected


def test_rails_are_read_from_every_variable_source_as_hostvars_gives_them(tmp_path):
    requests, expected = requests_both_ways(tmp_path)
    assert requests == expected
    pools = {(request["host"], request["pool"]) for request in requests}
    assert {
        ("a1", "group-a"),
        ("a2", "host-vars-file"),
        ("a3", "inventory-host-var"),
        ("a4", "set-fact"),
        ("a5", "cached-fact"),
        ("a6", "include-vars"),
        ("a7", "host-vars-next-to-playbook"),
        ("b1", "pool-of-b1"),
        ("b2", "pool-of-b2"),
        ("c1", "group-high"),
        ("c2", "group-low"),
        ("p1", "group-vars-next-to-playbook"),
    } <= pools
    assert not [request for request in requests if request["host"] == "u1"]


def test_rails_given_as_extra_vars_are_every_hosts(tmp_path):
    extra = json.dumps({"roce_rails": [{"device": "dx", "pool": "extra-vars"}]})
    requests, expected = requests_both_ways(tmp_path, "-e", extra)
    assert requests == expected
    assert {request["pool"] for request in requests} == {"extra-vars"}
    assert len(requests) == 13  # one rail on each of the 13 hosts


def test_without_pools_nothing_is_read_or_written_and_every_host_has_no_addresses(inventory):
    read, other = read_addresses(inventory, "-e", json.dumps({"roce_ipam_pools": []}))
    assert read == {host: {} for host in EVERY_HOST}
    assert other == {}
    assert not (inventory / "ipam").exists()
