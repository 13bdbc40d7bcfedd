#!/usr/bin/env python3
"""Print the Debian mirror this machine's apt already uses, for the lab image and set-up.

    debian-mirror.py [SOURCES_ROOT]

Prints two lines: the archive URI that serves bookworm and the one that serves bookworm-security.
LAB_DEBIAN_MIRROR and LAB_DEBIAN_SECURITY_MIRROR override them. A site with its own mirror then
builds the lab unchanged, and no address is written in the project's code. Reads both formats of
apt's sources: one-line `deb URI SUITE ...` (sources.list, *.list) and deb822 stanzas (*.sources),
and follows `mirror+file:` lists. Only an entry for the exact suite counts, over http, https, ftp
or file, so that a third-party repository, a CD-ROM or another distribution is never taken for
Debian's archive. Fails, naming the files it read, when it finds none: a guess would send the
build elsewhere.
"""

import os
import sys
from pathlib import Path

SUITE = "bookworm"
SCHEMES = ("http://", "https://", "ftp://", "file:/")
FALSE = {"no", "false", "off", "without", "disable", "0"}  # apt's spellings of a false boolean


def source_entries(root: Path):
    """(uri, suites) for every enabled `deb` source under root's /etc/apt."""
    apt = root / "etc/apt"
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace").replace("\r\n", "\n")
        if path.suffix == ".sources":
            yield from deb822_entries(text)
        elif path.suffix == ".list" or path.name == "sources.list":
            yield from one_line_entries(text)


def one_line_entries(text: str):
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            yield words[0], [words[1]]


def deb822_entries(text: str):
    stanza = {}
    key = None
    for line in [*text.splitlines(), ""]:
        if not line.strip():  # a blank line ends the stanza
            if "deb" in stanza.get("types", []) and stanza.get("enabled", ["yes"])[0].lower() not in FALSE:
                for uri in stanza.get("uris", []):
                    yield uri, stanza.get("suites", [])
            stanza, key = {}, None
        elif line.startswith("#"):
            continue
        elif line[0].isspace() and key:  # a folded value goes on
            stanza[key] += line.split()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            stanza[key] = value.split()


def usable(uri: str, root: Path):
    """The URI itself, or the first usable one of a mirror+file: list; None when neither is."""
    if uri.startswith("mirror+file:"):
        listed = root / uri.removeprefix("mirror+file:").lstrip("/")
        lines = listed.read_text(errors="replace").splitlines() if listed.is_file() else []
        return next((line.split()[0] for line in lines if line.strip().startswith(SCHEMES)), None)
    return uri if uri.startswith(SCHEMES) else None


def mirrors(entries, root: Path, suite: str = SUITE):
    """(archive, security) URIs: the first usable source of the suite and of its -security suite."""
    archive = security = None
    for raw_uri, suites in entries:
        uri = usable(raw_uri, root)
        if uri is None:
            continue
        uri = uri.rstrip("/")
        if suite in suites:
            archive = archive or uri
        if f"{suite}-security" in suites or f"{suite}/updates" in suites:
            security = security or uri
    return archive, security


def main(argv):
    root = Path(argv[1]) if len(argv) > 1 else Path("/")
    archive, security = mirrors(source_entries(root), root)
    archive = os.environ.get("LAB_DEBIAN_MIRROR") or archive
    security = os.environ.get("LAB_DEBIAN_SECURITY_MIRROR") or security
    if not archive:
        sys.exit(
            f"debian-mirror: no source of Debian {SUITE} in {root / 'etc/apt'}/sources.list{{,.d/*}}; "
            "set LAB_DEBIAN_MIRROR to the mirror's URI"
        )
    # A machine without a security source still builds: the archive's own -security suite path.
    print(archive)
    print(security or f"{archive}-security")


if __name__ == "__main__":
    main(sys.argv)
