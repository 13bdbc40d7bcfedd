"""The rdma_stack role, and preflight's part in it, run on this machine without changing it.

The role runs in check mode, with its files (its internal path variables, given as extra vars) in a
temporary directory, so that even check mode's reads stay there. The node's distribution is the one
a test sets: set_fact with cacheable is what ansible_facts reads. rdma_stack_check, which reads the
node's apt state, is a stand-in (the directory in ANSIBLE_LIBRARY): it stops the run (STOP) or
reports a clean node (RDMA_STACK_CHECK_STANDIN=clean). What the tests look at happens before it, or
right after it.

Cases that differ only in their variables run as hosts of one run (each host its own variables,
all on this machine through the local connection), so that the role and Ansible start once for
them: each test still reads the results of its own host, and the output of the whole run.
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
  hosts: all
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


def ansible_playbook(tmp_path, variables, hosts=None, *, role="rdma_stack", callback="json", standin="stop", args=()):
    """Run PLAYBOOK in check mode, its files under tmp_path; returns (rc, the json report or None, all
    the output). variables: extra vars; hosts: {inventory host: its variables}, or None for localhost."""
    library = tmp_path / "library"
    library.mkdir(exist_ok=True)
    (library / "rdma_stack_check.py").write_text(STANDIN)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    paths = {
        "__rdma_stack_sources": str(tmp_path / "hpc-rdma-stack.sources"),
        "__rdma_stack_pin": str(tmp_path / "hpc-rdma-stack.pref"),
        "__rdma_stack_auth": str(tmp_path / "hpc-rdma-stack.conf"),
        "__rdma_stack_reboot_marker": str(tmp_path / "reboot-required"),
    }
    extra = {"ansible_python_interpreter": sys.executable, "test_role": role, **paths, **variables}
    (tmp_path / "vars.json").write_text(json.dumps(extra))
    inventory = "localhost,"
    if hosts is not None:  # JSON is YAML: every value reaches Ansible as it is here
        inventory = tmp_path / "hosts.yml"
        inventory.write_text(json.dumps({"all": {"hosts": hosts}}))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_LIBRARY": str(library),
        "ANSIBLE_STDOUT_CALLBACK": callback,
        "ANSIBLE_NOCOLOR": "1",
        "RDMA_STACK_CHECK_STANDIN": standin,
    }
    command = ["ansible-playbook", f"--inventory={inventory}", "--connection=local", "--check"]
    command += [f"--extra-vars=@{tmp_path / 'vars.json'}", *args, str(tmp_path / "play.yml")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    output = done.stdout + done.stderr
    # -v and more print the configuration before the report
    report = json.loads(done.stdout[done.stdout.find("\n{\n") + 1 :]) if callback == "json" else None
    return done.returncode, report, output


def with_facts(variables, facts):
    """The variables of a run, and the distribution it stands in for (None: none, the role gathers it)."""
    return variables if facts is None else {**variables, "test_facts": facts}


@pytest.fixture
def play(tmp_path):
    """Run PLAYBOOK on localhost with these vars; returns (rc, the json report or None, all the output)."""

    def run(variables, *, facts=DEBIAN, **options):
        return ansible_playbook(tmp_path, with_facts(variables, facts), **options)

    return run


def play_cases(tmp_path, cases, variables=None, **options):
    """One run of several cases, {host: (its variables, its facts)}: each an inventory host of its own."""
    hosts = {host: with_facts(case, facts) for host, (case, facts) in cases.items()}
    return ansible_playbook(tmp_path, variables or {}, hosts, **options)


def results(report, host="localhost"):
    """Each task's result on the host, by name without the role's prefix, in the order they ran."""
    return {
        task["task"]["name"].split(" : ", 1)[-1]: task["hosts"][host]
        for play in report["plays"]
        for task in play["tasks"]
        if host in task["hosts"]
    }


def ran(report, host="localhost"):
    return [name for name, result in results(report, host).items() if not result.get("skipped")]


def failure(report, host="localhost"):
    return next((name, result["msg"]) for name, result in results(report, host).items() if result.get("failed"))


def passed(report, host):
    """What rc 0 says of a run of that host alone: no task failed on it, and it was reached."""
    stats = report["stats"][host]
    return stats["failures"] == 0 and stats["unreachable"] == 0


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


OUTSIDE_DEBIAN = {
    "rocky": {"os_family": "RedHat", "distribution": "Rocky", "distribution_version": "9.4"},
    "openeuler": {"os_family": "RedHat", "distribution": "openEuler", "distribution_version": "22.03"},
    "kylin": {"os_family": "RedHat", "distribution": "Kylin Linux Advanced Server", "distribution_version": "V10"},
}


@pytest.fixture(scope="module")
def distributions(tmp_path_factory):
    """One run, a host each: every node outside the Debian family, one whose distribution nobody
    gathered ("gathered") and a Debian one whose facts were gathered before ("debian")."""
    cases = {host: (DOCA, facts) for host, facts in OUTSIDE_DEBIAN.items()}
    cases |= {"gathered": (DOCA, None), "debian": (DOCA, DEBIAN)}
    return play_cases(tmp_path_factory.mktemp("distributions"), cases)


@pytest.mark.parametrize("host", OUTSIDE_DEBIAN)
def test_a_node_outside_the_debian_family_is_refused_before_anything(distributions, host):
    rc, report, output = distributions
    facts = OUTSIDE_DEBIAN[host]
    assert rc == 2, output
    assert failure(report, host) == (
        DISTRIBUTION_REFUSAL,
        f"{host}: {facts['distribution']} {facts['distribution_version']} is of the RedHat family, "
        "and the rdma_stack role supports only the Debian family (apt: Debian, Ubuntu) so far",
    )
    role_tasks = ran(report, host)[ran(report, host).index("Run the role") + 1 :]
    assert role_tasks[-1] == DISTRIBUTION_REFUSAL
    assert all(name.startswith("Validating arguments") for name in role_tasks[:-1]), role_tasks


def test_the_role_gathers_the_distribution_when_nobody_did(distributions):
    rc, report, output = distributions
    gathered = results(report, "gathered")["Gather the distribution facts"]
    assert not gathered.get("skipped"), output
    assert set(gathered["ansible_facts"]) >= {"ansible_os_family", "ansible_distribution"}
    assert "ansible_kernel" not in gathered["ansible_facts"]  # the distribution subset only
    os_family = gathered["ansible_facts"]["ansible_os_family"]
    assert rc == 2, output
    if os_family == "Debian":
        assert failure(report, "gathered")[1] == STOP
    else:
        assert failure(report, "gathered")[0] == DISTRIBUTION_REFUSAL


def test_facts_gathered_before_are_used(distributions):
    rc, report, output = distributions
    assert rc == 2, output
    assert results(report, "debian")["Gather the distribution facts"].get("skipped")
    assert failure(report, "debian")[1] == STOP


# Preflight: the same refusal up front, where site.yml is to install the stack (roce_rails set).
ROCKY = {"os_family": "RedHat", "distribution": "Rocky", "distribution_version": "9.4"}
RAILS = {"roce_rails": [{"device": "mlx5_0", "netdev": "ens1f0np0", "pool": "rail0"}]}


LETS_THROUGH = {
    "rocky-without-rails": ({}, ROCKY),
    "debian-with-rails": (RAILS, DEBIAN),
    "rocky-stack-off": ({**RAILS, "preflight_rdma_stack": False}, ROCKY),
}


@pytest.fixture(scope="module")
def preflight(tmp_path_factory):
    """One run of preflight's checks, a host each: the node it refuses ("refused"), and those it lets through."""
    cases = {"refused": (RAILS, ROCKY), **LETS_THROUGH}
    return play_cases(tmp_path_factory.mktemp("preflight"), cases, {"test_tasks_from": "checks"}, role="preflight")


def test_preflight_refuses_a_node_outside_the_debian_family_that_is_to_get_the_stack(preflight):
    rc, report, output = preflight
    assert rc == 2, output
    assert failure(report, "refused") == (
        "Refuse the RDMA stack outside the Debian family",
        "refused: preflight_rdma_stack: this node is to get the RDMA stack (site.yml installs it where "
        "roce_rails is set), and Rocky 9.4 is of the RedHat family; the rdma_stack role supports only the "
        "Debian family (apt: Debian, Ubuntu) so far",
    )


@pytest.mark.parametrize("host", LETS_THROUGH)
def test_preflight_lets_through_what_the_stack_does_not_concern(preflight, host):
    rc, report, output = preflight
    assert rc == 2, output  # the refused host's
    assert passed(report, host), output


# The mirror's login: refused where apt could not use it or it would show, written where only root
# reads it, never in the output.
SECRET = "S3cret-of-the-mirror"  # noqa: S105 - a test value, the one string no output may hold
LOGIN = {"rdma_stack_repo_username": "rdma-reader", "rdma_stack_repo_password": SECRET}
WRITES = ("Add the repository", "Pin the meta package to its version", "Give apt the mirror's login")


LOGIN_IN_URI = {
    "user-password": f"https://rdma-reader:{SECRET}@mirror.dc1.example.com/doca/",
    "with-a-newline": f"https://rdma-reader:{SECRET}@mirror.dc1.example.com/doca/\nTrusted: yes",
    "slash-in-password": f"http://rdma-reader:pa/{SECRET}@mirror.dc1.example.com/doca/",
}
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


@pytest.fixture(scope="module")
def refused_logins(tmp_path_factory):
    """One run with --diff -vvv, a host each: every login in the URI (uri-<case>), every login apt
    cannot use (login-<case>). No output of the run may hold the secret."""
    cases = {f"uri-{case}": ({**DOCA, "rdma_stack_repo_uri": uri}, DEBIAN) for case, uri in LOGIN_IN_URI.items()}
    cases |= {f"login-{case}": ({**DOCA, **login}, DEBIAN) for case, (login, _) in LOGIN_PROBLEMS.items()}
    return play_cases(tmp_path_factory.mktemp("refused-logins"), cases, args=["--diff", "-vvv"])


@pytest.mark.parametrize("case", LOGIN_IN_URI)
def test_a_login_in_the_uri_is_refused_naming_the_mirror_not_the_login(refused_logins, case):
    rc, report, output = refused_logins
    host = f"uri-{case}"
    assert rc == 2, output
    assert failure(report, host) == (
        "Refuse a login in the mirror URI",
        f"{host}: rdma_stack_repo_uri: the URI of mirror.dc1.example.com holds a login (user:password@), "
        "which would land in a world-readable file and in --diff output; set rdma_stack_repo_username and "
        "rdma_stack_repo_password (from Ansible Vault) instead",
    )
    assert SECRET not in output
    assert not set(WRITES) & set(ran(report, host))


@pytest.mark.parametrize("case", LOGIN_PROBLEMS)
def test_a_login_apt_cannot_use_is_refused_before_any_file_is_written(refused_logins, case):
    rc, report, output = refused_logins
    host, problem = f"login-{case}", LOGIN_PROBLEMS[case][1]
    assert rc == 2, output
    assert failure(report, host) == ("Refuse a login apt cannot use", f"{host}: {problem}")
    assert results(report, host)["Check the mirror's login"].get("censored"), "the check must run with no_log"
    assert SECRET not in output
    assert not set(WRITES) & set(ran(report, host))


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


def test_a_login_no_longer_set_is_removed_after_the_check(tmp_path):
    (tmp_path / "hpc-rdma-stack.conf").write_text("machine https://old.example.com login a password b\n")
    (tmp_path / "reboot-required").write_text("")  # keeps modprobe (not on every test machine) out
    # One run, two nodes that both have the login file: one without a login set, one with it.
    cases = {"unset": (DOCA, DEBIAN), "set": ({**DOCA, **LOGIN}, DEBIAN)}
    rc, report, output = play_cases(tmp_path, cases, standin="clean")
    assert rc == 0, output
    names = ran(report, "unset")
    removal = "Remove the login of an earlier run when none is set"
    check = next(name for name in names if name.startswith("Check kernel, versions"))
    assert results(report, "unset")[removal]["changed"]  # check mode: would remove it
    assert names.index(removal) > names.index(check)
    assert (tmp_path / "hpc-rdma-stack.conf").exists()  # check mode

    assert results(report, "set")[removal].get("skipped")
