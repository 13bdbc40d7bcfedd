"""Append the seconds of each phase of the lab suite to the file named by LAB_PHASE_TIMES."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: lab_phase_times
type: aggregate
short_description: Seconds per phase of the lab test suite, for the time table CI prints
description:
  - Appends one tab-separated line, seconds then phase, to the file named by the environment
    variable C(LAB_PHASE_TIMES), and does nothing when it is unset.
  - A run of converge.yml is one phase, C(converge) the first time and C(idempotence) after it.
    In every other playbook each play is a phase, named by the play.
author:
  - hpc-datapath contributors
"""

import os
import time
from pathlib import Path

from ansible import context
from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "lab_phase_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._file = os.environ.get("LAB_PHASE_TIMES")
        self._playbook = ""
        self._started = {}  # phase -> monotonic start
        self._play = None

    def _write(self, phase, started):
        if self._file:
            Path(self._file).parent.mkdir(parents=True, exist_ok=True)
            with open(self._file, "a") as out:
                out.write(f"{time.monotonic() - started:.0f}\t{phase}\n")

    def _close_play(self):
        if self._play is not None:
            play, self._play = self._play, None
            self._write(play, self._started.pop(play))

    def v2_playbook_on_start(self, playbook):
        if context.CLIARGS.get("syntax"):
            self._file = None  # molecule's syntax step runs no phase
        self._playbook = Path(playbook._file_name).stem
        if self._playbook == "converge":
            done = Path(self._file).read_text() if self._file and Path(self._file).exists() else ""
            self._playbook = "idempotence" if "\tconverge\n" in done else "converge"
            self._started[self._playbook] = time.monotonic()

    def v2_playbook_on_play_start(self, play):
        if self._playbook in ("converge", "idempotence"):
            return
        self._close_play()
        self._play = play.get_name().strip()
        self._started[self._play] = time.monotonic()

    def v2_playbook_on_stats(self, stats):
        self._close_play()
        if self._playbook in self._started:
            self._write(self._playbook, self._started.pop(self._playbook))
