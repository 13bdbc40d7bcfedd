"""awx/configure.yml keeps what docs/awx.md promises (issue 13); ansible-lint checks it as Ansible.

Read as data, without an AWX: the workflow's order and approvals, the templates' tags against
site.yml's, verify mode wherever the IPAM play runs, no slicing, and surveys of plain strings.
"""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PLAY = yaml.safe_load((ROOT / "awx" / "configure.yml").read_text())[0]
TEMPLATES = {template["capability"]: template for template in PLAY["vars"]["awx_templates"]}


def task(module):
    return next(task[module] for task in PLAY["tasks"] if module in task)


def chain():
    """The workflow's nodes in the order they run, from the one no other node leads to."""
    nodes = {node["identifier"]: node for node in task("awx.awx.workflow_job_template")["workflow_nodes"]}
    following = {
        node["identifier"]: [step["identifier"] for step in node.get("related", {}).get("success_nodes", [])]
        for node in nodes.values()
    }
    assert all(len(after) <= 1 for after in following.values()), "the workflow is a chain"
    (first,) = set(nodes) - {after for afters in following.values() for after in afters}
    order = [first]
    while following[order[-1]]:
        order.append(following[order[-1]][0])
    assert sorted(order) == sorted(nodes), "every node is on the chain"
    return [nodes[identifier] for identifier in order]


def test_the_workflow_checks_the_ledger_first_and_asks_before_the_bond_and_the_rdma_stack():
    kinds = [(node["identifier"], node["unified_job_template"]["type"]) for node in chain()]
    assert kinds == [
        ("ipam", "job_template"),
        ("preflight", "job_template"),
        ("nvme", "job_template"),
        ("approve bond", "workflow_approval"),
        ("bond", "job_template"),
        ("approve rdma", "workflow_approval"),
        ("rdma", "job_template"),
        ("roce", "job_template"),
    ]


def test_every_job_node_runs_the_template_of_its_capability():
    for node in chain():
        if node["unified_job_template"]["type"] == "job_template":
            assert node["unified_job_template"]["name"] == "{{ awx_name }} " + node["identifier"]
            assert node["identifier"] in TEMPLATES


@pytest.mark.parametrize("capability", ["preflight", "nvme", "bond", "rdma", "roce"])
def test_a_capability_template_runs_site_yml_with_its_tag_on_the_nodes(capability):
    template = TEMPLATES[capability]
    assert (template["playbook"], template["tags"], template["nodes"]) == ("playbooks/site.yml", capability, True)


def test_ipam_is_its_own_template_that_reaches_no_node():
    assert (TEMPLATES["ipam"]["playbook"], TEMPLATES["ipam"]["nodes"]) == ("playbooks/ipam.yml", False)


@pytest.mark.parametrize("capability", ["ipam", "roce"])
def test_templates_that_run_the_ipam_play_only_verify(capability):
    assert TEMPLATES[capability]["extra_vars"] == "{{ awx_ipam_vars }}"
    assert PLAY["vars"]["awx_ipam_vars"]["roce_ipam_mode"] == "verify"


def test_no_job_is_sliced_nor_asks_to_be():
    template = task("awx.awx.job_template")
    assert (template["job_slice_count"], template["ask_job_slice_count_on_launch"]) == (1, False)


def test_every_survey_question_is_a_plain_string():
    questions = [PLAY["vars"]["awx_batch_question"]]
    questions += [
        question
        for template in TEMPLATES.values()
        if isinstance(template["survey"], list)
        for question in template["survey"]
    ]
    assert len(questions) >= 2
    assert {question["type"] for question in questions} <= {"text", "textarea"}
