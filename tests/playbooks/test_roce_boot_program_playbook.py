"""roce_fabric state=install through ansible-playbook, with ansible-core's strategy and with mitogen's.

The module writes its own module_utils/hpc_datapath/roce.py as the boot program; where that text
comes from depends on who loaded the module_utils on the node: AnsiballZ's zipimporter (linear),
or mitogen's ModuleUtilsImporter (mitogen_linear, the strategy of the lab and CI), which keeps no
source. Both runs must write the project's file byte for byte, once, and nothing in check mode. A
probe module in the run says which loader the node had, so each case proves the path it claims.
Runs on localhost with connection local, into a temporary directory.
"""

import json
import stat
import sys
from pathlib import Path

import pytest
from ansible_cli import ROOT, ansible_run

SOURCE = (ROOT / "module_utils" / "hpc_datapath" / "roce.py").read_bytes()
MITOGEN_STRATEGIES = next((Path(sys.executable).parent.parent / "lib").glob("python3*/site-packages/ansible_mitogen"))

PROBE = '''#!/usr/bin/python
"""Which loader gave this module ansible.module_utils.hpc_datapath.roce."""
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath import roce

module = AnsibleModule(argument_spec={}, supports_check_mode=True)
loader = roce.__spec__.loader
module.exit_json(loader=f"{type(loader).__module__}.{type(loader).__name__}")
'''

PLAYBOOK = """
- name: Install the RoCE boot program on this machine
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Which loader gives the module its module_utils
      loader_probe:
      register: probe

    - name: Install it in check mode first
      roce_fabric:
        state: install
        boot_program: "{{ program }}"
      check_mode: true
      register: checked

    - name: Install it
      roce_fabric:
        state: install
        boot_program: "{{ program }}"
      register: first

    - name: Install it again
      roce_fabric:
        state: install
        boot_program: "{{ program }}"
      register: second

    - name: Report
      ansible.builtin.copy:
        content: "{{ {'loader': probe.loader, 'checked': checked.changed, 'first': first.changed,
                     'second': second.changed, 'sha256': first.sha256} | to_json }}"
        dest: "{{ report }}"
        mode: "0644"
"""

STRATEGIES = {
    "linear": ({"ANSIBLE_STRATEGY": "linear"}, "zipimport.zipimporter"),
    "mitogen_linear": (
        {
            "ANSIBLE_STRATEGY": "mitogen_linear",
            "ANSIBLE_STRATEGY_PLUGINS": str(MITOGEN_STRATEGIES / "plugins" / "strategy"),
        },
        "ansible_mitogen.runner.ModuleUtilsImporter",
    ),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_install_writes_the_project_file_under_each_loader(tmp_path, strategy):
    env, loader = STRATEGIES[strategy]
    library = tmp_path / "library"
    library.mkdir()
    (library / "loader_probe.py").write_text(PROBE)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    program, report = tmp_path / "lib" / "roce.py", tmp_path / "report.json"
    program.parent.mkdir()
    extra = {"ansible_python_interpreter": sys.executable, "program": str(program), "report": str(report)}
    done = ansible_run(
        "ansible-playbook",
        "--inventory=localhost,",
        "--connection=local",
        f"--extra-vars={json.dumps(extra)}",
        tmp_path / "play.yml",
        env={**env, "ANSIBLE_LIBRARY": f"{library}:{ROOT / 'library'}"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(report.read_text())
    assert result["loader"] == loader  # the loader this case is about, not another
    assert (result["checked"], result["first"], result["second"]) == (True, True, False)
    assert program.read_bytes() == SOURCE
    assert stat.S_IMODE(program.stat().st_mode) == 0o755
    assert sorted(p.name for p in program.parent.iterdir()) == ["roce.py"]
