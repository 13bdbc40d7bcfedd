"""The rdma_stack role, and preflight's part in it, run on this machine without changing it.

The role runs in check mode, with its files (its internal path variables, given as extra vars) in a
temporary directory, so that even check mode's reads stay there. The node's distribution is the one
a test sets: set_fact with cacheable is what ansible_facts reads. rdma_stack_check, which reads the
node's apt state, is a stand-in (the directory in ANSIBLE_LIBRARY): it stops the run (STOP) or
reports a clean node (RDMA_STACK_CHECK_STANDIN=clean). What the tests look at happens before it, or
right after it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STOP = "STAND-IN rdma_stack_check: the run got as far as the check"
DEBIAN = {"os_family": "Debian", "distribution": "Debian", "distribution_version": "12.11"}
DOCA = {
    "rdma_stack_provider": "doca",
    "rdma_stack_version": "24.07-0.6.1.0",
    "rdma_stack_repo_uri": "https://mirror.dc1.example.com/doca/2.8.0/debian12/x86_64/",
    "rdma_stack_repo_trusted": True,
}

STANDIN = '''#!/usr/bin/python
"""Stand-in for rdma_stack_check: stops the run, or reports a node with nothing to do."""
import os

from ansible.module_utils.basic import AnsibleModule

module = AnsibleModule(
    argument_spec={
        "provider": {}, "packages": {"type": "list"}, "version": {},
        "supported_kernels": {"type": "list"}, "nvidia_peermem": {"type": "bool"},
    },
    supports_check_mode=True,
)
if os.environ.get("RDMA_STACK_CHECK_STANDIN") != "clean":
    module.fail_json(msg="STOP_MESSAGE")
module.exit_json(
    changed=False, problems=[], kernel="6.1.0-test", ofed_version="", installed={},
    needs_install=False, install_args=[], pinned_modules={},
)
'''.replace("STOP_MESSAGE", STOP)

PLAYBOOK = """
- name: The rdma_stack role on this machine
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Stand in for the node's distribution
      ansible.builtin.set_fact:
        os_family: "{{ test_facts.os_family }}"
        distribution: "{{ test_facts.distribution }}"
        distribution_version: "{{ test_facts.distribution_version }}"
        distribution_major_version: "{{ test_facts.distribution_version | split('.') | first }}"
        python_version: "3.11.2"
        cacheable: true
      when: test_facts is defined

    - name: Run the role
      ansible.builtin.include_role:
        name: "{{ test_role }}"
        tasks_from: "{{ test_tasks_from | default('main') }}"
"""


@pytest.fixture
def play(tmp_path):
    """Run PLAYBOOK with these vars; returns (rc, the json report or None, all the output)."""
    library = tmp_path / "library"
    library.mkdir()
    (library / "rdma_stack_check.py").write_text(STANDIN)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    paths = {
        "__rdma_stack_sources": str(tmp_path / "hpc-rdma-stack.sources"),
        "__rdma_stack_pin": str(tmp_path / "hpc-rdma-stack.pref"),
        "__rdma_stack_auth": str(tmp_path / "hpc-rdma-stack.conf"),
        "__rdma_stack_reboot_marker": str(tmp_path / "reboot-required"),
    }

    def run(variables, *, facts=DEBIAN, role="rdma_stack", callback="json", standin="stop", args=()):
        extra = {"ansible_python_interpreter": sys.executable, "test_role": role, **paths, **variables}
        if facts is not None:
            extra["test_facts"] = facts
        (tmp_path / "vars.json").write_text(json.dumps(extra))
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_LIBRARY": str(library),
            "ANSIBLE_STDOUT_CALLBACK": callback,
            "ANSIBLE_NOCOLOR": "1",
            "RDMA_STACK_CHECK_STANDIN": standin,
        }
        command = ["ansible-playbook", "--inventory=localhost,", "--connection=local", "--check"]
        command += [f"--extra-vars=@{tmp_path / 'vars.json'}", *args, str(tmp_path / "play.yml")]
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
        output = done.stdout + done.stderr
        # -v and more print the configuration before the report
        report = json.loads(done.stdout[done.stdout.find("\n{\n") + 1 :]) if callback == "json" else None
        return done.returncode, report, output

    return run


def results(report):
    """Each task's result on localhost, by name without the role's prefix, in the order they ran."""
    return {
        task["task"]["name"].split(" : ", 1)[-1]: task["hosts"]["localhost"]
        for play in report["plays"]
        for task in play["tasks"]
        if "localhost" in task["hosts"]
    }


def ran(report):
    return [name for name, result in results(report).items() if not result.get("skipped")]


def failure(report):
    return next((name, result["msg"]) for name, result in results(report).items() if result.get("failed"))


# Check mode on a node the repository is new to.
def test_a_check_run_of_a_new_mirror_goes_through_and_writes_one_module_a_line(play, tmp_path):
    (tmp_path / "reboot-required").write_text("")  # keeps modprobe (not on every test machine) out
    rc, report, output = play({**DOCA, "rdma_stack_extra_modules": ["rdma_rxe"]}, standin="clean", args=["--diff"])
    assert rc == 0, output
    each = results(report)
    assert each["Add the repository"]["changed"]
    written = each["Load the stack's modules at every boot"]["diff"][0]["after"]
    assert written.splitlines()[1:] == ["ib_core", "ib_uverbs", "rdma_cm", "rdma_ucm", "rdma_rxe"]


# The distribution: the role is apt-only, and says so before it touches anything.
DISTRIBUTION_REFUSAL = "Refuse a distribution outside the Debian family"


@pytest.mark.parametrize(
    "facts",
    [
        {"os_family": "RedHat", "distribution": "Rocky", "distribution_version": "9.4"},
        {"os_family": "RedHat", "distribution": "openEuler", "distribution_version": "22.03"},
        {"os_family": "RedHat", "distribution": "Kylin Linux Advanced Server", "distribution_version": "V10"},
    ],
    ids=["rocky", "openeuler", "kylin"],
)
def test_a_node_outside_the_debian_family_is_refused_before_anything(play, facts):
    rc, report, output = play(DOCA, facts=facts)
    assert rc == 2, output
    assert failure(report) == (
        DISTRIBUTION_REFUSAL,
        f"localhost: {facts['distribution']} {facts['distribution_version']} is of the RedHat family, "
        "and the rdma_stack role supports only the Debian family (apt: Debian, Ubuntu) so far",
    )
    role_tasks = ran(report)[ran(report).index("Run the role") + 1 :]
    assert role_tasks[-1] == DISTRIBUTION_REFUSAL
    assert all(name.startswith("Validating arguments") for name in role_tasks[:-1]), role_tasks


def test_the_role_gathers_the_distribution_when_nobody_did(play):
    rc, report, output = play(DOCA, facts=None)
    gathered = results(report)["Gather the distribution facts"]
    assert not gathered.get("skipped"), output
    assert set(gathered["ansible_facts"]) >= {"ansible_os_family", "ansible_distribution"}
    assert "ansible_kernel" not in gathered["ansible_facts"]  # the distribution subset only
    os_family = gathered["ansible_facts"]["ansible_os_family"]
    assert rc == 2, output
    if os_family == "Debian":
        assert failure(report)[1] == STOP
    else:
        assert failure(report)[0] == DISTRIBUTION_REFUSAL


def test_facts_gathered_before_are_used(play):
    rc, report, output = play(DOCA)
    assert rc == 2, output
    assert results(report)["Gather the distribution facts"].get("skipped")
    assert failure(report)[1] == STOP


# Preflight: the same refusal up front, where site.yml is to install the stack (roce_rails set).
ROCKY = {"os_family": "RedHat", "distribution": "Rocky", "distribution_version": "9.4"}
RAILS = {"roce_rails": [{"device": "mlx5_0", "netdev": "ens1f0np0", "pool": "rail0"}]}


def test_preflight_refuses_a_node_outside_the_debian_family_that_is_to_get_the_stack(play):
    rc, report, output = play({**RAILS, "test_tasks_from": "checks"}, facts=ROCKY, role="preflight")
    assert rc == 2, output
    assert failure(report) == (
        "Refuse the RDMA stack outside the Debian family",
        "localhost: preflight_rdma_stack: this node is to get the RDMA stack (site.yml installs it where "
        "roce_rails is set), and Rocky 9.4 is of the RedHat family; the rdma_stack role supports only the "
        "Debian family (apt: Debian, Ubuntu) so far",
    )


@pytest.mark.parametrize(
    "facts, variables",
    [(ROCKY, {}), (DEBIAN, RAILS), (ROCKY, {**RAILS, "preflight_rdma_stack": False})],
    ids=["rocky-without-rails", "debian-with-rails", "rocky-stack-off"],
)
def test_preflight_lets_through_what_the_stack_does_not_concern(play, facts, variables):
    rc, _, output = play({**variables, "test_tasks_from": "checks"}, facts=facts, role="preflight")
    assert rc == 0, output


# The mirror's login: refused where apt could not use it or it would show, written where only root
# reads it, never in the output.
SECRET = "S3cret-of-the-mirror"  # noqa: S105 - a test value, the one string no output may hold
LOGIN = {"rdma_stack_repo_username": "rdma-reader", "rdma_stack_repo_password": SECRET}
WRITES = ("Add the repository", "Pin the meta package to its version", "Give apt the mirror's login")


@pytest.mark.parametrize(
    "uri",
    [
        f"https://rdma-reader:{SECRET}@mirror.dc1.example.com/doca/",
        f"https://rdma-reader:{SECRET}@mirror.dc1.example.com/doca/\nTrusted: yes",
        f"http://rdma-reader:pa/{SECRET}@mirror.dc1.example.com/doca/",
    ],
    ids=["user-password", "with-a-newline", "slash-in-password"],
)
def test_a_login_in_the_uri_is_refused_naming_the_mirror_not_the_login(play, uri):
    rc, report, output = play({**DOCA, "rdma_stack_repo_uri": uri}, args=["--diff", "-vvv"])
    assert rc == 2, output
    assert failure(report) == (
        "Refuse a login in the mirror URI",
        "localhost: rdma_stack_repo_uri: the URI of mirror.dc1.example.com holds a login (user:password@), "
        "which would land in a world-readable file and in --diff output; set rdma_stack_repo_username and "
        "rdma_stack_repo_password (from Ansible Vault) instead",
    )
    assert SECRET not in output
    assert not set(WRITES) & set(ran(report))


LOGIN_PROBLEMS = {
    "username-only": (
        {"rdma_stack_repo_username": "rdma-reader"},
        "rdma_stack_repo_username, rdma_stack_repo_password: set both or neither",
    ),
    "password-only": (
        {"rdma_stack_repo_password": SECRET},
        "rdma_stack_repo_username, rdma_stack_repo_password: set both or neither",
    ),
    "username-with-a-space": (
        {**LOGIN, "rdma_stack_repo_username": "rdma reader"},
        "rdma_stack_repo_username: is not one word of printable ASCII without a colon (a space or newline "
        "would break the auth.conf.d file, a colon the HTTP login)",
    ),
    "username-with-a-colon": (
        {**LOGIN, "rdma_stack_repo_username": "rdma:reader"},
        "rdma_stack_repo_username: is not one word of printable ASCII without a colon (a space or newline "
        "would break the auth.conf.d file, a colon the HTTP login)",
    ),
    "password-with-a-newline": (
        {**LOGIN, "rdma_stack_repo_password": f"{SECRET}\nmachine https://elsewhere login x password y"},
        "rdma_stack_repo_password: is not one word of printable ASCII (a space or newline would break the "
        "auth.conf.d file); its value is not shown",
    ),
    "password-with-a-space": (
        {**LOGIN, "rdma_stack_repo_password": f"{SECRET} 2"},
        "rdma_stack_repo_password: is not one word of printable ASCII (a space or newline would break the "
        "auth.conf.d file); its value is not shown",
    ),
    "password-not-ascii": (
        {**LOGIN, "rdma_stack_repo_password": f"{SECRET}-\u00fc"},
        "rdma_stack_repo_password: is not one word of printable ASCII (a space or newline would break the "
        "auth.conf.d file); its value is not shown",
    ),
    "file-mirror": (
        {**LOGIN, "rdma_stack_repo_uri": "file:/srv/doca-mirror"},
        'rdma_stack_repo_username: apt sends a login to an http or https mirror only, not to "file:/srv/doca-mirror"',
    ),
}


@pytest.mark.parametrize("login, problem", LOGIN_PROBLEMS.values(), ids=LOGIN_PROBLEMS.keys())
def test_a_login_apt_cannot_use_is_refused_before_any_file_is_written(play, login, problem):
    rc, report, output = play({**DOCA, **login}, args=["--diff", "-vvv"])
    assert rc == 2, output
    assert failure(report) == ("Refuse a login apt cannot use", f"localhost: {problem}")
    assert results(report)["Check the mirror's login"].get("censored"), "the check must run with no_log"
    assert SECRET not in output
    assert not set(WRITES) & set(ran(report))


@pytest.mark.parametrize("callback", ["json", "default"])
def test_the_login_is_never_shown_and_stays_out_of_the_sources_file(play, callback):
    rc, report, output = play({**DOCA, **LOGIN}, callback=callback, args=["--diff", "-vvv"])
    assert rc == 2, output
    assert STOP in output  # the run went through every task that handles the login
    assert SECRET not in output
    # --diff is on: the sources file's diff is there, with the mirror and without the login
    assert "URIs: https://mirror.dc1.example.com/doca/2.8.0/debian12/x86_64/" in output
    if report:
        each = results(report)
        sources = each["Add the repository"]["diff"][0]["after"]
        assert "rdma-reader" not in sources
        for name in ("Check the mirror's login", "Give apt the mirror's login"):
            assert each[name].get("censored"), f"{name}: shown without no_log"
        assert each["Give apt the mirror's login"]["changed"]


def test_a_login_no_longer_set_is_removed_after_the_check(play, tmp_path):
    (tmp_path / "hpc-rdma-stack.conf").write_text("machine https://old.example.com login a password b\n")
    (tmp_path / "reboot-required").write_text("")  # keeps modprobe (not on every test machine) out
    rc, report, output = play(DOCA, standin="clean")
    assert rc == 0, output
    names = ran(report)
    removal = "Remove the login of an earlier run when none is set"
    check = next(name for name in names if name.startswith("Check kernel, versions"))
    assert results(report)[removal]["changed"]  # check mode: would remove it
    assert names.index(removal) > names.index(check)
    assert (tmp_path / "hpc-rdma-stack.conf").exists()  # check mode

    rc, report, output = play({**DOCA, **LOGIN}, standin="clean")
    assert rc == 0, output
    assert results(report)[removal].get("skipped")
