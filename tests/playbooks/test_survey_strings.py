"""A batch size typed in an AWX survey reaches the play as a string, and works as one (docs/awx.md).

AWX passes survey answers as JSON extra vars of type string: "2" here, not 2. bond.yml runs on the
example inventory, whose hosts have no bond members, so the role is skipped on every host and no
node is contacted; what is left is how the play splits the hosts into batches.
"""

import json
import math

from ansible_cli import ansible_run


def test_a_batch_size_typed_as_text_splits_the_rollout():
    run = ansible_run(
        "ansible-playbook",
        "-i",
        "inventories/example",
        "playbooks/bond.yml",
        "-e",
        json.dumps({"bond_batch_size": "2"}),
        env={"ANSIBLE_STDOUT_CALLBACK": "json"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    hosts = set(report["stats"])
    batches = [set().union(*(task["hosts"] for task in play["tasks"])) for play in report["plays"]]
    assert len(hosts) > 2
    assert len(batches) == math.ceil(len(hosts) / 2)
    assert all(len(batch) <= 2 for batch in batches)
    assert set().union(*batches) == hosts
    assert all(stats["unreachable"] == 0 and stats["changed"] == 0 for stats in report["stats"].values())
