"""lab/debian-mirror.py: the lab image and set-up take the Debian mirror from the machine's apt."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "lab" / "debian-mirror.py"
spec = importlib.util.spec_from_file_location("debian_mirror", SCRIPT)
debian_mirror = importlib.util.module_from_spec(spec)
spec.loader.exec_module(debian_mirror)


def apt_root(tmp_path, files):
    for name, text in files.items():
        path = tmp_path / "etc/apt" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def run(monkeypatch, capsys, root):
    monkeypatch.delenv("LAB_DEBIAN_MIRROR", raising=False)
    monkeypatch.delenv("LAB_DEBIAN_SECURITY_MIRROR", raising=False)
    debian_mirror.main(["debian-mirror.py", str(root)])
    return capsys.readouterr().out.splitlines()


def test_deb822_sources_as_debian_12_ships_them(tmp_path, monkeypatch, capsys):
    root = apt_root(
        tmp_path,
        {
            "sources.list.d/debian.sources": (
                "Types: deb\n# a comment\nURIs: http://mirror.example.org/debian/\n"
                "Suites: bookworm bookworm-updates\nComponents: main\n\n"
                "Types: deb\nURIs: http://mirror.example.org/debian-security\n"
                "Suites: bookworm-security\nComponents: main\n"
            )
        },
    )
    assert run(monkeypatch, capsys, root) == [
        "http://mirror.example.org/debian",
        "http://mirror.example.org/debian-security",
    ]


def test_one_line_sources_with_options_and_disabled_entries(tmp_path, monkeypatch, capsys):
    root = apt_root(
        tmp_path,
        {
            "sources.list": (
                "# deb http://commented.example.org/debian bookworm main\n"
                "deb-src http://src.example.org/debian bookworm main\n"
                "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://site.example.org/debian bookworm main\n"
            ),
            "sources.list.d/other.sources": "Types: deb\nEnabled: no\nURIs: http://off.example.org/x\nSuites: x\n",
        },
    )
    # No security source: the archive's own -security path, as Debian lays it out.
    assert run(monkeypatch, capsys, root) == [
        "http://site.example.org/debian",
        "http://site.example.org/debian-security",
    ]


def test_the_environment_overrides_the_machine(tmp_path, monkeypatch, capsys):
    root = apt_root(tmp_path, {"sources.list": "deb http://site.example.org/debian bookworm main\n"})
    monkeypatch.setenv("LAB_DEBIAN_MIRROR", "http://override.example.org/debian")
    debian_mirror.main(["debian-mirror.py", str(root)])
    assert capsys.readouterr().out.splitlines()[0] == "http://override.example.org/debian"


def test_no_debian_archive_fails_naming_the_variable(tmp_path, monkeypatch, capsys):
    root = apt_root(
        tmp_path, {"sources.list.d/backports.list": "deb http://x.example.org/debian bookworm-backports main\n"}
    )
    with pytest.raises(SystemExit, match="set LAB_DEBIAN_MIRROR"):
        run(monkeypatch, capsys, root)


def test_never_a_cdrom_a_third_party_repository_or_a_disabled_stanza(tmp_path, monkeypatch, capsys):
    root = apt_root(
        tmp_path,
        {
            "sources.list": "deb cdrom:[Debian GNU/Linux 12.5.0 _Bookworm_ - DVD]/ bookworm contrib main\n",
            # Sorts before debian.sources; a vendor repository with its own suite name.
            "sources.list.d/1password.list": "deb [arch=amd64] https://dl.example.com/linux/debian stable main\n",
            "sources.list.d/debian.sources": (
                "Types: deb\nEnabled: False\nURIs: http://off.example.org/debian\nSuites: bookworm\n\n"
                "Types: deb\nURIs:\n http://mirror.example.org/debian\nSuites: bookworm\n bookworm-updates\n\n"
                "Types: deb\nURIs: http://mirror.example.org/debian-security\nSuites:\n bookworm-security\n"
            ),
        },
    )
    assert run(monkeypatch, capsys, root) == [
        "http://mirror.example.org/debian",
        "http://mirror.example.org/debian-security",
    ]


def test_a_mirror_list_is_followed(tmp_path, monkeypatch, capsys):
    root = apt_root(
        tmp_path,
        {
            "mirrors/debian.list": "# the site's mirrors\nhttps://site.example.org/debian priority:1\n",
            "sources.list.d/debian.sources": (
                "Types: deb\nURIs: mirror+file:///etc/apt/mirrors/debian.list\nSuites: bookworm bookworm-updates\n"
            ),
        },
    )
    assert run(monkeypatch, capsys, root)[0] == "https://site.example.org/debian"


def test_another_distribution_is_not_debian_12(tmp_path, monkeypatch, capsys):
    root = apt_root(tmp_path, {"sources.list": "deb http://archive.ubuntu.com/ubuntu jammy main\n"})
    with pytest.raises(SystemExit, match="no source of Debian bookworm"):
        run(monkeypatch, capsys, root)
