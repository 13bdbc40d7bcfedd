#!/usr/bin/env python3
"""Fail when a role's meta/argument_specs.yml and defaults/main.yml drift apart.

Every default must be a documented option with the same default, and every option with a
default must be in defaults/main.yml. Internal variables (__<role>_*) belong in neither.
"""

import sys
from pathlib import Path

import yaml

ROLES = Path(__file__).resolve().parent.parent / "roles"


def check(role: Path) -> list[str]:
    errors = []
    spec_file = role / "meta" / "argument_specs.yml"
    if not spec_file.exists():
        return [f"{role.name}: meta/argument_specs.yml is missing"]
    defaults_file = role / "defaults" / "main.yml"
    defaults = (yaml.safe_load(defaults_file.read_text()) or {}) if defaults_file.exists() else {}
    options = yaml.safe_load(spec_file.read_text())["argument_specs"]["main"].get("options", {})
    for name, value in defaults.items():
        if not name.startswith(f"{role.name}_"):
            errors.append(f"{role.name}: default {name} lacks the role prefix {role.name}_")
        if name not in options:
            errors.append(f"{role.name}: default {name} is not in meta/argument_specs.yml")
        elif options[name].get("default") != value:
            spec_default = options[name].get("default")
            errors.append(f"{role.name}: {name} defaults to {value!r} but the spec says {spec_default!r}")
    for name, option in options.items():
        if "default" in option and name not in defaults:
            errors.append(f"{role.name}: option {name} has a default in the spec but not in defaults/main.yml")
        if not option.get("description"):
            errors.append(f"{role.name}: option {name} has no description")
    return errors


def main() -> int:
    errors = [error for role in sorted(ROLES.iterdir()) if role.is_dir() for error in check(role)]
    for error in errors:
        print(error, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
