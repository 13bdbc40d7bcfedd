"""execution-environment.yml renders, with ansible-builder create, the controller's pinned toolchain.

No container is built (CI has no container runtime): the rendered build context is read instead,
for the pins the image would install (issue 13).
"""

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)$")


def pins(path):
    """{lower-case name: version} of the name==version lines of a requirements or constraints file."""
    found = {}
    for line in path.read_text().splitlines():
        if match := PIN.match(line.split("#")[0].strip()):
            found[match[1].lower()] = match[2]
    return found


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    out = tmp_path_factory.mktemp("ee") / "context"
    builder = Path(sys.executable).parent / "ansible-builder"
    arguments = ["--file", "execution-environment.yml", "--context", out, "--output-filename", "Containerfile"]
    run = subprocess.run(
        [builder, "create", *arguments],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def test_the_image_installs_python_3_11_and_the_pinned_ansible_core_and_runner(context):
    containerfile = (context / "Containerfile").read_text()
    required = pins(ROOT / "requirements.txt")
    assert 'ARG PYCMD="/usr/bin/python3.11"' in containerfile
    refs = re.search(r'^ARG ANSIBLE_INSTALL_REFS="([^"]*)"$', containerfile, re.MULTILINE)
    assert refs, containerfile
    assert sorted(refs[1].split()) == [
        f"ansible-core=={required['ansible-core']}",
        f"ansible-runner=={required['ansible-runner']}",
    ]


def test_the_image_installs_requirements_txt_under_every_pin_of_constraints_txt(context):
    assert (context / "_build" / "requirements.txt").read_text() == (ROOT / "requirements.txt").read_text()
    assert (context / "_build" / "configs" / "constraints.txt").read_text() == (ROOT / "constraints.txt").read_text()
    lines = (context / "Containerfile").read_text().splitlines()
    constraint = lines.index("ENV PIP_CONSTRAINT=/etc/hpc-datapath/constraints.txt")
    assert lines.index("COPY _build/configs/constraints.txt /etc/hpc-datapath/constraints.txt") < constraint
    # In the base stage, before its first pip: the builder and final stages start from it.
    first_pip = next(i for i, line in enumerate(lines) if "pip install" in line or "pip_install" in line)
    assert constraint < first_pip
    assert lines.index("FROM $EE_BASE_IMAGE AS base") < constraint


def test_requirements_and_constraints_agree_on_every_pin():
    constrained = pins(ROOT / "constraints.txt")
    for path in ("requirements.txt", "requirements-dev.txt"):
        for name, version in pins(ROOT / path).items():
            assert constrained.get(name) == version, (path, name)


def test_the_collections_of_requirements_yml_come_with_the_pinned_ansible_package():
    """The image has no galaxy section: the `ansible` package of requirements.txt ships them."""
    assert metadata.version("ansible") == pins(ROOT / "requirements.txt")["ansible"]
    import ansible_collections  # noqa: PLC0415 - the pinned package's collection tree, checked above

    shipped = Path(ansible_collections.__path__[0])
    for collection in yaml.safe_load((ROOT / "requirements.yml").read_text())["collections"]:
        namespace, name = collection["name"].split(".")
        manifest = shipped / namespace / name / "MANIFEST.json"
        version = yaml.safe_load(manifest.read_text())["collection_info"]["version"]
        assert version in SpecifierSet(collection["version"]), (collection["name"], version)


def test_the_image_has_an_ssh_client(context):
    bindep = (context / "_build" / "bindep.txt").read_text()
    assert re.search(r"^openssh-clients \[platform:rpm\]$", bindep, re.MULTILINE)
