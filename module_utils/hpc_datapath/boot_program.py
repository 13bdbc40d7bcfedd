# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install a module_utils file as a node's boot program (state=install of roce_fabric, sriov_vfs).

The boot program is the text of the module_utils file as this run of the module carries it (in
AnsiballZ's zip, or as mitogen shipped it), so that no role copies it from the project by path and
what a boot unit re-applies is the code that applied the plan.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile

BOOT_PROGRAM_MODE = 0o755
MITOGEN_ORIGIN = "master:"


def source_of(module):
    """The source text of an imported module, from whatever loaded it on this node.

    AnsiballZ imports module_utils from its zip (zipimporter), a test or an exploded payload from
    files; both loaders answer get_source. mitogen's ModuleUtilsImporter (ansible_mitogen.runner)
    fetches each module_utils file from the controller by its path, named in the module's origin
    after 'master:', and keeps no source: the same file service gives it once more, from the
    target's cache of what the controller pushed. Anything else is an error, never a guess.
    """
    spec = module.__spec__
    loader = spec.loader
    get_source = getattr(loader, "get_source", None)
    if get_source is not None:
        text = get_source(spec.name)
        if text is not None:
            return text
    origin = spec.origin or ""
    context = getattr(loader, "_context", None)
    if origin.startswith(MITOGEN_ORIGIN) and context is not None:
        from ansible_mitogen.target import get_small_file  # noqa: PLC0415 (only exists under mitogen)

        data = get_small_file(context, origin[len(MITOGEN_ORIGIN) :])
        return data.decode("utf-8") if isinstance(data, bytes) else data
    raise RuntimeError(f"cannot read the source of {spec.name} from its loader {type(loader).__name__} ({origin})")


def _write_boot_program(path, data):
    """Replace path with data in one rename, mode 0755, root's where the module runs as root."""
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), BOOT_PROGRAM_MODE)
            if os.geteuid() == 0:
                os.fchown(out.fileno(), 0, 0)
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def install(module, program, name, path):
    """Write program's source to path where the node's file differs in content, mode or owner; exits."""
    try:
        wanted = source_of(program).encode("utf-8")
    except Exception as error:  # any loader failure is a message, not a traceback
        module.fail_json(msg=f"{name}: cannot read the boot program from this run's module_utils: {error}")
    try:
        with open(path, "rb") as handle:
            current = handle.read()
            info = os.fstat(handle.fileno())
    except FileNotFoundError:
        current, info = None, None
    except OSError as error:
        module.fail_json(msg=f"reading {path} failed: {error.strerror}")
    content = current != wanted
    mode = info is not None and stat.S_IMODE(info.st_mode) != BOOT_PROGRAM_MODE
    owner = info is not None and os.geteuid() == 0 and (info.st_uid, info.st_gid) != (0, 0)
    directory = os.path.dirname(path)
    if current is None and not os.path.isdir(directory) and not module.check_mode:
        module.fail_json(msg=f"{directory} does not exist: it holds the boot program {path}")
    if not module.check_mode:
        try:
            if content:
                _write_boot_program(path, wanted)
            else:
                if mode:
                    os.chmod(path, BOOT_PROGRAM_MODE)
                if owner:
                    os.chown(path, 0, 0)
        except OSError as error:
            module.fail_json(msg=f"installing the boot program {path} failed: {error.strerror}")
    result = {
        "changed": content or mode or owner,
        "boot_program": path,
        "sha256": hashlib.sha256(wanted).hexdigest(),
    }
    if module._diff and content:
        result["diff"] = {
            "before_header": path,
            "after_header": f"module_utils/hpc_datapath/{program.__name__.rsplit('.', 1)[-1]}.py",
            "before": (current or b"").decode("utf-8", "replace"),
            "after": wanted.decode("utf-8"),
        }
    module.exit_json(**result)
