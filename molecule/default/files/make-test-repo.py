#!/usr/bin/python3
"""Build a flat apt repository of vendor packages with the real names and an empty payload.

TEST FIXTURE: stands for the cluster's mirror of a vendor repository, which the lab cannot reach.
Two releases each, so that the pin (not "the newest") decides what installs.
- doca (default): NVIDIA's DOCA-OFED. The only file any package carries is mlnx-ofed-kernel-utils'
  ofed_info, a LAB STUB that prints the release the way `ofed_info -s` does, so the role's
  detection reads the installed release after the install.
- cpfs: Alibaba's CPFS POSIX client, `cpfs-client` (the name of Alibaba's CPFS user guide; see the
  shared_mounts README), empty: no kernel module, no mount helper, no service.
Runs on a lab node: python3 and dpkg-deb. Usage: make-test-repo.py DIR [doca|cpfs]
"""

import email.utils
import hashlib
import os
import subprocess
import sys
import tempfile

RELEASES = {"24.07-0.6.1.0": "24.07-0.6.1", "24.10-1.1.4.0": "24.10-1.1.4"}


def package(out, name, version, depends=(), files=None):
    with tempfile.TemporaryDirectory() as root:
        os.makedirs(f"{root}/DEBIAN")
        control = [
            f"Package: {name}",
            f"Version: {version}",
            "Architecture: all",
            "Maintainer: hpc-datapath lab <lab@invalid>",
            f"Description: lab fixture standing for {name} (empty payload)",
        ]
        if depends:
            control.append(f"Depends: {', '.join(depends)}")
        with open(f"{root}/DEBIAN/control", "w") as handle:
            handle.write("\n".join(control) + "\n")
        for path, (content, mode) in (files or {}).items():
            os.makedirs(os.path.dirname(f"{root}{path}"), exist_ok=True)
            with open(f"{root}{path}", "w") as handle:
                handle.write(content)
            os.chmod(f"{root}{path}", mode)
        deb = f"{out}/{name}_{version}_all.deb"
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", root, deb], check=True, capture_output=True
        )
    fields = subprocess.run(["dpkg-deb", "-f", deb], check=True, capture_output=True, text=True).stdout.strip()
    with open(deb, "rb") as handle:
        data = handle.read()
    return (
        f"{fields}\nFilename: ./{os.path.basename(deb)}\nSize: {len(data)}\n"
        f"MD5sum: {hashlib.md5(data, usedforsecurity=False).hexdigest()}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
    )


CPFS_RELEASES = ("1.2.1", "1.2.2")


def doca(out):
    stanzas = [package(out, "mlnx-tools", "24.10.0-1")]
    for version, ofed in RELEASES.items():
        utils = f"{version.split('-')[0]}.OFED.{ofed.replace('-', '.')}.1-1"
        ofed_info = f"#!/bin/sh\n# LAB STUB of ofed_info (test fixture package)\necho 'OFED-internal-{ofed}:'\n"
        stanzas.append(package(out, "mlnx-ofed-kernel-utils", utils, files={"/usr/bin/ofed_info": (ofed_info, 0o755)}))
        stanzas.append(
            package(out, "doca-ofed", version, depends=[f"mlnx-ofed-kernel-utils (= {utils})", "mlnx-tools"])
        )
    return stanzas


def cpfs(out):
    return [package(out, "cpfs-client", version) for version in CPFS_RELEASES]


PROFILES = {"doca": (doca, "DOCA-OFED"), "cpfs": (cpfs, "CPFS client")}


def main(out, profile="doca"):
    os.makedirs(out, exist_ok=True)
    build, label = PROFILES[profile]
    stanzas = build(out)
    index = "\n".join(stanzas).encode()
    with open(f"{out}/Packages", "wb") as handle:
        handle.write(index)
    # Unsigned: the role's test repository is marked Trusted; apt still wants the Release file.
    date = email.utils.formatdate(usegmt=True)
    with open(f"{out}/Release", "w") as handle:
        handle.write(
            f"Origin: hpc-datapath lab\nLabel: {label} test fixture\nDate: {date}\n"
            f"SHA256:\n {hashlib.sha256(index).hexdigest()} {len(index)} Packages\n"
        )


if __name__ == "__main__":
    main(*sys.argv[1:3])
