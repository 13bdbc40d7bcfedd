"""--tags <capability> on site.yml runs preflight and that capability, nothing else (issue 13).

Ansible itself decides what a tag selects: each case asks ansible-playbook --list-tasks, on the lab
inventory, and reads which roles' tasks it lists. Roles are listed by their tasks that Ansible
knows before the run (tasks of dynamic includes inherit the role's tags at run time).
"""

import re
from pathlib import Path

import pytest
import yaml
from ansible_cli import ansible_run

ROOT = Path(__file__).resolve().parents[2]

ROLES = sorted(path.name for path in (ROOT / "roles").iterdir() if path.is_dir())
# The IPAM play: its role's tasks, or, where ipam.yml includes the role dynamically, the play's own
# task (what --list-tasks knows of it before the run).
IPAM = "ipam"
IPAM_OWNERS = {"roce_ipam", "play: " + yaml.safe_load((ROOT / "playbooks" / "ipam.yml").read_text())[0]["name"]}
# Ansible prepends a check of a role's arguments to the role and tags it `always`: it runs
# whatever the tags, reading variables only, never a node.
VALIDATION = re.compile(r"Validating arguments against arg spec ")
CAPABILITIES = ["preflight", "nvme", "bond", "rdma", "roce", "ipam", "sriov", "shared_mounts"]
TASK = re.compile(r"^ {6}(?P<name>.*?)\tTAGS: \[(?P<tags>[^\]]*)\]$")
PLAY = re.compile(r"^  play #\d+ \([^)]*\): (?P<name>.*?)\tTAGS: ")


def listed(*args):
    """[(role, 'ipam' or 'play: <name>' for a task outside roles; task name; its tags)] of --list-tasks."""
    run = ansible_run("ansible-playbook", "playbooks/site.yml", "-i", "inventories/lab", "--list-tasks", *args)
    assert run.returncode == 0, run.stdout + run.stderr
    tasks, play = [], None
    for line in run.stdout.splitlines():
        if match := PLAY.match(line):
            play = match["name"]
        elif match := TASK.match(line):
            role, sep, name = match["name"].partition(" : ")
            owner, name = (role, name) if sep and role in ROLES else (f"play: {play}", match["name"])
            owner = IPAM if owner in IPAM_OWNERS else owner
            tasks.append((owner, name, set(match["tags"].split(", "))))
    assert tasks, run.stdout
    return tasks


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("preflight", {"preflight"}),
        ("nvme", {"preflight", "nvme_storage"}),
        # The bond and the rails change the network through the one network layer (network_change).
        ("bond", {"preflight", "bond", "network_change"}),
        ("rdma", {"preflight", "rdma_stack"}),
        # The rails read the addresses that the IPAM play allocates in the same run.
        ("roce", {"preflight", IPAM, "roce", "network_change"}),
        ("ipam", {"preflight", IPAM}),
        ("sriov", {"preflight", "sriov"}),
        ("shared_mounts", {"preflight", "shared_mounts"}),
    ],
)
def test_a_tag_runs_preflight_and_its_own_part_only(tag, expected):
    tasks = listed("--tags", tag)
    work = [(owner, name) for owner, name, _ in tasks if not VALIDATION.match(name)]
    assert {owner for owner, _ in work} == expected
    # Beside them, only the argument checks that Ansible tags `always` itself.
    assert all("always" in tags for _, name, tags in tasks if VALIDATION.match(name))
    # None of them reads a result registered by a task the tags skip: network_change's arguments
    # are its callers' results, so it checks them itself, under its caller's tags (the `always`
    # check failed `--tags sriov` on an undefined __bond_inspect).
    assert [name for owner, name, _ in tasks if owner == "network_change" and VALIDATION.match(name)] == []


def test_every_task_of_site_yml_carries_a_capability_tag():
    untagged = [(owner, name) for owner, name, tags in listed() if not tags & set(CAPABILITIES)]
    assert untagged == []


def test_the_capability_tags_are_the_ones_site_yml_offers():
    run = ansible_run("ansible-playbook", "playbooks/site.yml", "-i", "inventories/lab", "--list-tags")
    assert run.returncode == 0, run.stdout + run.stderr
    offered = set()
    for tags in re.findall(r"TASK TAGS: \[([^\]]*)\]", run.stdout):
        offered |= set(tags.split(", "))
    assert offered - {"always"} == set(CAPABILITIES)
