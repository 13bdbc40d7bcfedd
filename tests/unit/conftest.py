"""Make the project's module_utils and library importable the way Ansible ships them."""

import importlib.util
import sys
import types
from pathlib import Path

import ansible.module_utils

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ansible.module_utils.hpc_datapath.* -> module_utils/hpc_datapath/*, as on a target.
_package = types.ModuleType("ansible.module_utils.hpc_datapath")
_package.__path__ = [str(ROOT / "module_utils" / "hpc_datapath")]
sys.modules[_package.__name__] = _package
ansible.module_utils.hpc_datapath = _package
for _file in sorted((ROOT / "module_utils" / "hpc_datapath").glob("[!_]*.py")):
    # One copy of each: a module an earlier one imported (juicefs imports mounts) is not loaded again, or
    # its exception classes would be two, and `except mounts.ApplyError` would miss the other copy's.
    if f"ansible.module_utils.hpc_datapath.{_file.stem}" not in sys.modules:
        _load(f"ansible.module_utils.hpc_datapath.{_file.stem}", _file)

sys.path.insert(0, str(ROOT / "lab"))
