"""Helpers that build a fake sysfs tree: attribute files and the kernel's relative symlinks."""

import os
from pathlib import Path


def write(path: Path, text: str) -> None:
    """A sysfs attribute: its value and the newline the kernel prints after it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)
