#!/usr/bin/python3
"""Build a flat apt repository of DOCA-OFED packages with the real names and an empty payload.

TEST FIXTURE: stands for the cluster's mirror of NVIDIA's DOCA repository, which the lab cannot
reach. Two releases, so that the pin (not "the newest") decides what installs. The only file any
package carries is mlnx-ofed-kernel-utils' ofed_info, a LAB STUB that prints the release the way
`ofed_info -s` does, so the role's detection reads the installed release after the install.
Runs on a lab node: python3 and dpkg-deb. Usage: make-test-repo.py DIR
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


def main(out):
    os.makedirs(out, exist_ok=True)
    stanzas = [package(out, "mlnx-tools", "24.10.0-1")]
    for version, ofed in RELEASES.items():
        utils = f"{version.split('-')[0]}.OFED.{ofed.replace('-', '.')}.1-1"
        ofed_info = f"#!/bin/sh\n# LAB STUB of ofed_info (test fixture package)\necho 'OFED-internal-{ofed}:'\n"
        stanzas.append(package(out, "mlnx-ofed-kernel-utils", utils, files={"/usr/bin/ofed_info": (ofed_info, 0o755)}))
        stanzas.append(
            package(out, "doca-ofed", version, depends=[f"mlnx-ofed-kernel-utils (= {utils})", "mlnx-tools"])
        )
    index = "\n".join(stanzas).encode()
    with open(f"{out}/Packages", "wb") as handle:
        handle.write(index)
    # Unsigned: the role's test repository is marked Trusted; apt still wants the Release file.
    date = email.utils.formatdate(usegmt=True)
    with open(f"{out}/Release", "w") as handle:
        handle.write(
            f"Origin: hpc-datapath lab\nLabel: DOCA-OFED test fixture\nDate: {date}\n"
            f"SHA256:\n {hashlib.sha256(index).hexdigest()} {len(index)} Packages\n"
        )


if __name__ == "__main__":
    main(sys.argv[1])
