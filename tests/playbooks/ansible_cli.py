"""What the playbook tests share: one way to run an Ansible command line from the project.

A module of its own name, not conftest.py: tests/unit's tests import their conftest by that name,
and a second conftest.py would take its place in sys.modules.
"""

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def ansible_environment(**overrides):
    """The environment of a nested Ansible command: the project's ansible.cfg, this venv's tools."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **overrides,
    }
    return {key: value for key, value in env.items() if value is not None}


def ansible_run(*command, env=None, cwd=ROOT):
    """Run an Ansible command line in the project; returns the CompletedProcess (text, not checked).

    env: variables to add, or to remove with None (ANSIBLE_CONFIG=None runs with the ansible.cfg
    that Ansible finds itself, as AWX and ansible-runner do).
    """
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        env=ansible_environment(**(env or {})),
        cwd=cwd,
        check=False,
    )


# --- an IPAM ledger after a first run, made once and copied into each test ------------------------
#
# A first run of playbooks/ipam.yml writes the same bytes wherever its ledger is, and the cache
# entry it leaves (roce_ipam_allocate's picture of the ledger, which a later run that only adds
# keys starts from) names the ledger by path only in its file name. A copy of both under another
# path is what a first run there leaves: tests that start after a first run copy one instead of
# running it again (about a second of CPU each).


@functools.cache
def _allocate_action():
    """action_plugins/roce_ipam_allocate.py, for where it keeps a ledger's cache entry."""
    name = "roce_ipam_allocate_of_playbook_tests"
    spec = importlib.util.spec_from_file_location(name, ROOT / "action_plugins" / "roce_ipam_allocate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def kept_first_run(ledger):
    """(ledger, its cache entry or None where the run kept none) just after a first run wrote it."""
    cache = _allocate_action().cache_directory()
    kept = cache and Path(_allocate_action().cache_file(str(ledger), cache))
    return ledger, kept if kept and kept.is_file() else None


def copy_first_run(first_run, ledger):
    """Put what kept_first_run kept at ledger (its bytes and mode, its cache entry): what a first run leaves there."""
    written, kept = first_run
    ledger.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(written, ledger)
    if kept:
        shutil.copy2(kept, _allocate_action().cache_file(str(ledger), _allocate_action().cache_directory()))
