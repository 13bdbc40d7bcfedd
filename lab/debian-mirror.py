#!/usr/bin/env python3
"""Print the Debian mirror this machine's apt already uses, for the lab image and set-up.

    debian-mirror.py [SOURCES_ROOT]

Prints two lines: the archive URI and the security archive URI. LAB_DEBIAN_MIRROR and
LAB_DEBIAN_SECURITY_MIRROR override them. A site with its own mirror then builds the lab
unchanged, and no address is written in the project's code. Reads both formats of apt's sources:
one-line `deb URI SUITE ...` (sources.list, *.list) and deb822 stanzas (*.sources). Fails, naming
the files it read, when it finds no Debian archive: a guess would send the build elsewhere.
"""

import os
import sys
from pathlib import Path


def source_entries(root: Path):
    """(uri, suites) for every enabled `deb` source under root's /etc/apt."""
    apt = root / "etc/apt"
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            yield from deb822_entries(text)
        elif path.suffix == ".list" or path.name == "sources.list":
            yield from one_line_entries(text)


def one_line_entries(text: str):
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words and words[0] == "deb":
            words = words[1:]
            if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
                while words and not words[0].endswith("]"):
                    words = words[1:]
                words = words[1:]
            if len(words) >= 2:
                yield words[0], [words[1]]


def deb822_entries(text: str):
    for stanza in text.split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.split()
        if "deb" not in fields.get("types", []) or fields.get("enabled", ["yes"]) == ["no"]:
            continue
        for uri in fields.get("uris", []):
            yield uri, fields.get("suites", [])


def mirrors(entries):
    """(archive, security) URIs: the first source of a plain suite and of a -security suite."""
    archive = security = None
    for raw_uri, suites in entries:
        uri = raw_uri.rstrip("/")
        for suite in suites:
            if suite.endswith(("-security", "/updates")):
                security = security or uri
            elif "-" not in suite.rstrip("/"):
                archive = archive or uri
    return archive, security


def main(argv):
    root = Path(argv[1]) if len(argv) > 1 else Path("/")
    archive, security = mirrors(source_entries(root))
    archive = os.environ.get("LAB_DEBIAN_MIRROR") or archive
    security = os.environ.get("LAB_DEBIAN_SECURITY_MIRROR") or security
    if not archive:
        sys.exit(
            f"debian-mirror: no Debian archive in {root / 'etc/apt'}/sources.list{{,.d/*}}; "
            "set LAB_DEBIAN_MIRROR to the mirror's URI"
        )
    # A machine without a security source still builds: the archive's own -security suite path.
    print(archive)
    print(security or f"{archive}-security")


if __name__ == "__main__":
    main(sys.argv)
