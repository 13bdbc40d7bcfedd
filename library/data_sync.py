#!/usr/bin/python
# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""NAS-to-NAS data sync with fpsync: check the jobs, run them (or their dry run), report."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: data_sync
short_description: Check, run and report NAS-to-NAS sync jobs (fpsync, parallel rsync), deleting only what was confirmed
description:
  - C(state=check) changes nothing. It checks every job on the node - the name (1 to 32 of C(A-Z a-z 0-9 _ -),
    it names units and files), source and target (absolute, plain, made of C(A-Z a-z 0-9 . _ + @ = -), real
    directories reached without symbolic links, outside the system's directories, on a mounted file system
    unless O(settings.require_mount) is false, not the same, not inside each other, no job's target overlapping
    another job's source or target), the bandwidth, workers, files per partition, and the schedule, with
    C(systemd-analyze calendar) on the node. It returns the jobs with every field filled in and the problems as
    sentences that start with the variable they are about; it does not fail on them.
  - C(state=run) runs the present jobs (or those named in O(only)) one after the other with C(fpsync), one rsync
    per partition of the source tree, O(jobs[].workers) at a time, each file verified by rsync's whole-file
    checksum as it is written (and compared by content before, with C(checksum)), under a total bandwidth limit
    shared equally by the workers. It reads every partition's log and stops (fails) on output it cannot read
    exactly. Nothing on the target is deleted unless the job has C(delete) and O(delete_confirm) gives the digest
    of exactly the listing the run makes after its copy; otherwise the listing is reported, with its digest.
  - C(state=run) with O(dry_run) (and any run in check mode) is rsync's dry run; it lists what would be copied and
    what the target holds that the source lacks, for every job.
  - Each run writes C(<report_dir>/<name>.json) (C(<name>.dry-run.json) for a dry run), a listing of every change
    beside it (C(.changes.txt)) and of the deletions (C(.deletions.txt)); check mode writes nothing.
  - The same code (module_utils C(hpc_datapath.datasync)) is the program of each job's timer service;
    C(state=install) writes it to O(program).
options:
  state:
    description: What to do.
    type: str
    choices: [check, run, install]
    default: check
  jobs:
    description:
      - The jobs, each C(name), C(source), C(target) and optional C(schedule), C(delete), C(checksum), C(bwlimit)
        (such as C(200M), bytes per second in binary units, for all workers together), C(workers),
        C(files_per_job), C(state) (present, absent). A field left out takes its value from O(defaults).
    type: list
    elements: dict
    default: []
  defaults:
    description: >-
      Values for the fields a job leaves out (C(schedule), C(delete), C(checksum), C(bwlimit), C(workers),
      C(files_per_job)).
    type: dict
    default: {}
  settings:
    description: >-
      Settings of every job, C(require_mount) (bool), C(report_dir), C(state_dir) (fpsync's run state and the jobs'
      locks) and C(list_limit) (how many lines of each listing a report carries).
    type: dict
    default: {}
  variable:
    description: The variable the jobs come from, as problems name it.
    type: str
    default: data_sync_jobs
  prefix:
    description: The prefix of the role's variables, as problems about settings name them.
    type: str
    default: data_sync_
  unit_dir:
    description: Where the jobs' timer units live; C(state=check) says which jobs have one there (C(timers_present)).
    type: path
    default: /etc/systemd/system
  dry_run:
    description: With C(state=run), rsync's dry run; nothing on the target changes.
    type: bool
    default: false
  delete_confirm:
    description: >-
      With C(state=run), per job name the digest of the deletion listing the operator has read; a job with
      C(delete) deletes exactly that listing's entries, and only when the run's own listing has the same digest.
    type: dict
    default: {}
  only:
    description: With C(state=run), the names of the jobs to run; empty runs every present job.
    type: list
    elements: str
    default: []
  program:
    description: With C(state=install), where the program of the timer services is written (mode 0755).
    type: path
author:
  - hpc-datapath contributors
"""

EXAMPLES = r"""
- name: Check the jobs
  data_sync:
    jobs:
      - {name: datasets, source: /shared/nas1/datasets, target: /shared/nas2/datasets, schedule: "*-*-* 02:00:00"}
    defaults: {delete: false, checksum: false, bwlimit: 200M, workers: 8, files_per_job: 2000}
    settings:
      {require_mount: true, report_dir: /var/log/hpc-data-sync, state_dir: /var/lib/hpc-data-sync, list_limit: 50}
  register: checked

- name: Delete exactly what the dry run listed
  data_sync:
    state: run
    jobs: "{{ checked.jobs }}"
    only: [datasets]
    delete_confirm: {datasets: 3f0c2a9e41b7d655}
"""

RETURN = r"""
problems:
  description: Why the jobs cannot run on this node (state=check); when not empty, nothing was run.
  returned: always
  type: list
  elements: str
jobs:
  description: Every job with every field filled in, as its job file holds it (state=check).
  returned: always
  type: list
  elements: dict
missing:
  description: >-
    The tools present jobs need and the node lacks (C(fpsync), C(rsync)), for the role to install their packages
    first (state=check).
  returned: always
  type: list
  elements: str
timers_present:
  description: Names of the jobs whose timer unit is in O(unit_dir) (state=check).
  returned: always
  type: list
  elements: str
reports:
  description: >-
    Per job run its report - files checked and transferred, bytes, seconds, bytes per second, partitions,
    failures, vanished files, the first changes, deletions (state, count, digest, listed, deleted, kept), the
    fpsync command, error, and summary (the lines of RV(summary) for this job).
  returned: always
  type: list
  elements: dict
stats:
  description: >-
    Per job run the figures AWX keeps (set_stats) - name, dry_run, files checked and transferred, bytes, seconds,
    bytes per second, partitions, the number of failures, the deletions' state, count, digest and deleted, the
    report file and the error.
  returned: always
  type: list
  elements: dict
failed_jobs:
  description: Names of the jobs whose run failed or was refused.
  returned: always
  type: list
  elements: str
summary:
  description: A few lines per job run, for the job's output.
  returned: always
  type: list
  elements: str
"""

import copy
import os
import shutil
import signal
import sys
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.hpc_datapath import datasync
from ansible.module_utils.hpc_datapath.boot_program import install as install_program


def check(module):
    """(jobs, problems, timers_present) of the module's jobs, schedules checked by systemd-analyze."""
    params = module.params
    jobs, problems = datasync.check_jobs(
        params["jobs"], params["defaults"], params["settings"], variable=params["variable"], prefix=params["prefix"]
    )
    scheduled = [job for job in jobs if job["state"] == "present" and job["schedule"]]
    analyze = module.get_bin_path("systemd-analyze") if scheduled else None
    for job in scheduled:
        if not analyze:
            problems.append(
                f"{params['variable']} ({job['name']}): schedule needs systemd on the node, and systemd-analyze is "
                "missing"
            )
            continue
        rc, _, err = module.run_command([analyze, "calendar", job["schedule"]])
        if rc != 0:
            problems.append(
                f"{params['variable']} ({job['name']}): schedule {job['schedule']!r} is refused by systemd-analyze "
                f"calendar: {err.strip()}"
            )
    names = {job["name"] for job in jobs}
    for variable, given in (("only", params["only"]), ("delete_confirm", params["delete_confirm"])):
        unknown = sorted(set(given) - names)
        if unknown:
            problems.append(f"{params['prefix']}{variable} names {', '.join(unknown)}, which no job is called")
    timers = [
        job["name"]
        for job in jobs
        if isinstance(job["name"], str)
        and datasync.NAME.match(job["name"])
        and os.path.exists(f"{params['unit_dir']}/hpc-data-sync-{job['name']}.timer")
    ]
    return jobs, problems, timers


def missing_tools(module, jobs):
    if not any(job["state"] == "present" for job in jobs):
        return []
    return [tool for tool in ("fpsync", "rsync") if not module.get_bin_path(tool)]


def run(module, jobs):
    """Run the selected jobs one after the other; (reports, failed)."""
    params = module.params
    dry_run = params["dry_run"] or module.check_mode
    selected = [
        job for job in jobs if job["state"] == "present" and (not params["only"] or job["name"] in params["only"])
    ]
    reports = []
    scratch = tempfile.mkdtemp(prefix="hpc-data-sync-check.") if module.check_mode else None
    try:
        for wanted in selected:
            # check mode: fpsync's state and the lock in a directory of its own, removed after
            job = dict(wanted, state_dir=scratch) if scratch else wanted
            try:
                report = datasync.run(
                    job,
                    dry_run=dry_run,
                    delete_confirm=params["delete_confirm"].get(job["name"]),
                    write=not module.check_mode,
                )
                if module.check_mode:
                    report = datasync.finish(job, report)
            except (datasync.Refused, datasync.ParseError, OSError) as error:
                report = {"name": job["name"], "error": str(error), "summary": [f"{job['name']}: refused: {error}"]}
            reports.append(report)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    failed = [report for report in reports if report.get("error") or report.get("failures")]
    return reports, failed


STAT_KEYS = (
    "name",
    "dry_run",
    "files_checked",
    "files_transferred",
    "bytes_transferred",
    "seconds",
    "bytes_per_second",
    "partitions",
    "report_file",
    "error",
)


def compact(report):
    """The figures of a report that AWX keeps for the job (set_stats): no listings."""
    figures = {key: report.get(key) for key in STAT_KEYS}
    figures["failures"] = len(report.get("failures", []))
    deletions = report.get("deletions")
    figures["deletions"] = (
        {key: deletions[key] for key in ("state", "count", "digest", "deleted")} if deletions else None
    )
    return figures


def _changed(report, check_mode):
    """What a run changed on the target; in check mode, what it would change (a dry run changes nothing)."""
    if "changes_count" not in report or (report["dry_run"] and not check_mode):
        return False
    return report["changes_count"] > 0 or report["deletions"]["deleted"] > 0


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["check", "run", "install"], "default": "check"},
            "jobs": {"type": "list", "elements": "dict", "default": []},
            "defaults": {"type": "dict", "default": {}},
            "settings": {"type": "dict", "default": {}},
            "variable": {"type": "str", "default": "data_sync_jobs"},
            "prefix": {"type": "str", "default": "data_sync_"},
            "unit_dir": {"type": "path", "default": "/etc/systemd/system"},
            "dry_run": {"type": "bool", "default": False},
            "delete_confirm": {"type": "dict", "default": {}},
            "only": {"type": "list", "elements": "str", "default": []},
            "program": {"type": "path"},
        },
        required_if=[("state", "install", ["program"])],
        supports_check_mode=True,
    )
    if module.params["state"] == "install":
        install_program(module, datasync, "data_sync", module.params["program"])  # exits
    # A stopped Ansible run (SIGTERM, a lost connection) stops the copy too: fpsync and its rsync
    # processes are stopped by datasync.run's cleanup, which an exit runs and a signal's default would skip.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, _frame: sys.exit(128 + number))
    jobs, problems, timers = check(module)
    result = {
        "changed": False,
        "problems": problems,
        "jobs": jobs,
        "timers_present": timers,
        "missing": missing_tools(module, jobs),
        "reports": [],
        "summary": [],
        "stats": [],
        "failed_jobs": [],
    }
    if module.params["state"] == "check" or problems:
        if module.params["state"] == "run" and problems:
            module.fail_json(msg="; ".join(problems), **result)
        module.exit_json(**result)
    reports, failed = run(module, copy.deepcopy(jobs))
    result.update(
        reports=reports,
        summary=[line for report in reports for line in report["summary"]],
        stats=[compact(report) for report in reports],
        failed_jobs=[report["name"] for report in failed],
        changed=any(_changed(report, module.check_mode) for report in reports),
    )
    if failed:
        module.fail_json(msg=" ".join(line for report in failed for line in report["summary"]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
