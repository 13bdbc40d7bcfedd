"""What the playbook tests share: one way to run an Ansible command line from the project.

A module of its own name, not conftest.py: tests/unit's tests import their conftest by that name,
and a second conftest.py would take its place in sys.modules.
"""

import os
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
