"""ipam_ledger: atomic, locked, compare-and-swap writes of the ledger file."""

import json
import multiprocessing
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args
from conftest import ROOT, _load
from hypothesis import given, settings
from hypothesis import strategies as st

ledger_module = _load("ipam_ledger", ROOT / "library" / "ipam_ledger.py")
ipam = _load("roce_ipam", ROOT / "filter_plugins" / "roce_ipam.py")
POOLS = [{"name": "rail0", "subnet": "10.10.0.0/16"}]


def ledger_for(*hosts, base=None):
    requests = [{"host": h, "device": "mlx5_0", "pool": "rail0"} for h in hosts]
    return ipam.roce_ipam_assign(base, POOLS, requests)["ledger"]


def run_module(capsys, args):
    with patch_module_args(args), pytest.raises(SystemExit) as exited:
        ledger_module.main()
    return exited.value.code, json.loads(capsys.readouterr().out)


def test_render_reads_back_as_the_same_ledger():
    ledger = ledger_for("node1", "node2")
    text = ledger_module.render(ledger)
    assert yaml.safe_load(text) == ledger
    assert text.count("\n  - {pool: rail0, host: node") == 2  # one allocation per line


def test_render_quotes_what_yaml_would_misread():
    ledger = {"version": 1, "allocations": [{"pool": "p", "host": "0123", "device": "yes", "ip": "fd00::1"}]}
    assert yaml.safe_load(ledger_module.render(ledger)) == ledger


def test_first_write_then_nothing_to_do(tmp_path):
    path = tmp_path / "ipam" / "roce-ledger.yml"
    ledger = ledger_for("node1")
    changed, before, _ = ledger_module.write_ledger(str(path), ledger, None)
    assert (changed, before) == (True, "")
    assert yaml.safe_load(path.read_text()) == ledger
    assert ledger_module.write_ledger(str(path), ledger, ledger)[0] is False
    assert [p.name for p in path.parent.iterdir()] == ["roce-ledger.yml"]  # no temporary file left


def test_stale_base_is_refused_and_the_file_kept(tmp_path):
    path = tmp_path / "roce-ledger.yml"
    first = ledger_for("node1")
    ledger_module.write_ledger(str(path), first, None)
    on_disk = path.read_text()
    with pytest.raises(ledger_module.LedgerConflict):
        ledger_module.write_ledger(str(path), ledger_for("node2"), None)  # computed without node1
    assert path.read_text() == on_disk


def test_check_mode_writes_nothing(tmp_path):
    path = tmp_path / "ipam" / "roce-ledger.yml"
    changed, _, after = ledger_module.write_ledger(str(path), ledger_for("node1"), None, check_mode=True)
    assert changed is True
    assert "10.10.0.1" in after
    assert not path.parent.exists()


def test_module_reports_taken_and_freed_with_a_diff(tmp_path, capsys):
    path = tmp_path / "roce-ledger.yml"
    old = ledger_for("node1", "node2")
    ledger_module.write_ledger(str(path), old, None)
    new = ipam.roce_ipam_assign(
        old, POOLS, [{"host": "node3", "device": "mlx5_0", "pool": "rail0"}], release=[{"host": "node1"}]
    )["ledger"]
    code, result = run_module(capsys, {"path": str(path), "ledger": new, "base": old, "_ansible_diff": True})
    assert code == 0
    assert result["changed"] is True
    assert result["added"] == ["rail0 node3 mlx5_0 10.10.0.1"]
    assert result["removed"] == ["rail0 node1 mlx5_0 10.10.0.1"]
    assert "node3" in result["diff"]["after"] and "node3" not in result["diff"]["before"]


def test_module_conflict_message(tmp_path, capsys):
    path = tmp_path / "roce-ledger.yml"
    ledger_module.write_ledger(str(path), ledger_for("node1"), None)
    code, result = run_module(capsys, {"path": str(path), "ledger": ledger_for("node2"), "base": None})
    assert code == 1
    assert "changed after it was read" in result["msg"]
    assert "Rerun" in result["msg"]


def allocate_until_written(path, host, attempts, conflicts):
    """What a playbook run does: read, allocate, write; on a conflict, read again and retry."""
    for _ in range(attempts):
        base = yaml.safe_load(Path(path).read_text()) if Path(path).exists() else None
        ledger = ipam.roce_ipam_assign(base, POOLS, [{"host": host, "device": "mlx5_0", "pool": "rail0"}])["ledger"]
        try:
            ledger_module.write_ledger(path, ledger, base)
            return
        except ledger_module.LedgerConflict:
            conflicts.value += 1
    raise AssertionError(f"{host} never got its write in")


def test_concurrent_writers_never_lose_an_allocation(tmp_path):
    path = str(tmp_path / "roce-ledger.yml")
    context = multiprocessing.get_context("fork")
    conflicts = context.Value("i", 0, lock=False)
    writers = [
        context.Process(target=allocate_until_written, args=(path, f"node{i}", 200, conflicts)) for i in range(8)
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=60)
        assert writer.exitcode == 0
    final = yaml.safe_load(Path(path).read_text())
    hosts = sorted(entry["host"] for entry in final["allocations"])
    assert hosts == sorted(f"node{i}" for i in range(8))
    assert len({entry["ip"] for entry in final["allocations"]}) == 8


# --- render and holds: linear time, same text as yaml.safe_dump ---------------------------------


def render_with_yaml(ledger):
    """The ledger's text with every entry through yaml.safe_dump, as render wrote it before."""
    head = ledger_module.HEADER + f"version: {ledger['version']}\n"
    head += "allocations:\n" if ledger["allocations"] else "allocations: []\n"

    def entries(key, fields):
        return "".join(
            "  - "
            + yaml.safe_dump({f: entry[f] for f in fields}, default_flow_style=True, sort_keys=False, width=1 << 16)
            for entry in ledger.get(key, ())
        )

    released = ledger.get("released", [])
    text = head + entries("allocations", ledger_module.FIELDS)
    if released:
        text += "released:\n" + entries("released", ledger_module.RELEASED_FIELDS)
    return text + ledger_module.end_line(len(ledger["allocations"]), len(released))


TRICKY_VALUES = [
    "yes", "No", "null", "~", "0123", "1e3", "1.0", ".5", "10:20", "0x1f", "1_000", "2001-12-14", "+1", "-a",
    ".a", "...x", "fd00::1", "a b", "a'b", "x,y", "x#y", "x #y", "#x", "{x}", "é", "", " x", "x/y", "a..b",
]  # fmt: skip
values = st.one_of(
    st.sampled_from(TRICKY_VALUES),
    st.from_regex(r"[A-Za-z0-9_./:+~-]{1,8}", fullmatch=True),
    st.text(max_size=5),
)
entries = st.fixed_dictionaries({key: values for key in ledger_module.FIELDS})


times = st.datetimes(timezones=st.none()).map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ"))
released_entries = st.fixed_dictionaries({**{key: values for key in ledger_module.FIELDS}, "released_at": times})


@settings(max_examples=400, deadline=None)
@given(st.lists(entries, max_size=6), st.lists(released_entries, max_size=3))
def test_property_render_writes_what_yaml_writes(allocations, released):
    ledger = {"version": 1, "allocations": allocations}
    if released:
        ledger["released"] = released
    text = ledger_module.render(ledger)
    assert text == render_with_yaml(ledger)
    assert yaml.safe_load(text) == ledger


# Mostly values written bare, so that whole ledgers take the column-wise path of render.
plain_values = st.one_of(
    st.from_regex(r"[A-Za-z_/][A-Za-z0-9_./-]{0,6}|[0-9]{1,3}(\.[0-9]{1,3}){2,3}", fullmatch=True),
    st.sampled_from(["yes", "0123", "1.5", "a b", "x\ny", "", "é"]),
)
plain_entries = st.fixed_dictionaries({key: plain_values for key in ledger_module.FIELDS})


@settings(max_examples=400, deadline=None)
@given(st.lists(plain_entries, min_size=1, max_size=8))
def test_property_the_column_wise_lines_are_what_each_entry_writes(allocations):
    ledger = {"version": 1, "allocations": allocations}
    lines = ledger_module._plain_lines(allocations)
    all_plain = all(
        ledger_module._PLAIN_STRING.match(value) and value not in ledger_module._YAML_WORDS
        for entry in allocations
        for value in entry.values()
    )
    assert (lines is not None) == all_plain
    assert ledger_module.render(ledger) == render_with_yaml(ledger)
    assert yaml.safe_load(ledger_module.render(ledger)) == ledger


def test_the_column_wise_lines_leave_anything_else_to_each_entry():
    entry = {"pool": "rail0", "host": "node1", "device": "mlx5_0", "ip": "10.0.0.1"}
    assert ledger_module._plain_lines([entry]) == ["  - {pool: rail0, host: node1, device: mlx5_0, ip: 10.0.0.1}\n"]
    for odd in ({**entry, "host": 1}, {**entry, "host": "a\nb"}, {**entry, "ip": ["x"]}, {"pool": "rail0"}):
        assert ledger_module._plain_lines([entry, odd]) is None
    long_entry = {**entry, "host": "h" * ledger_module._LONGEST_BARE_LINE}
    assert ledger_module._plain_lines([long_entry]) is None
    assert ledger_module.render({"version": 1, "allocations": [long_entry]}) == render_with_yaml(
        {"version": 1, "allocations": [long_entry]}
    )


def test_holds_compares_the_written_text_and_reads_any_other_text_as_yaml():
    ledger = ledger_for("node1", "node2")
    written = ledger_module.render(ledger)
    assert ledger_module.holds(written, ledger)
    assert not ledger_module.holds(written, ledger_for("node1"))
    hand_edited = written.replace(
        "  - {pool: rail0, host: node2,", "  # node2 moved racks\n  - {pool: rail0, host: node2,"
    )
    assert hand_edited != written
    assert ledger_module.holds(hand_edited, ledger)
    assert ledger_module.holds(None, None)
    assert not ledger_module.holds(None, ledger)
    assert not ledger_module.holds(written, None)


def test_holds_never_takes_a_ledger_render_cannot_write_for_the_text():
    ledger = ledger_for("node1")
    written = ledger_module.render(ledger)
    with_more = {**ledger, "note": "kept by hand"}  # render would drop it: the text does not hold it
    assert not ledger_module.holds(written, with_more)
    as_numbers = {"version": 1, "allocations": [{**ledger["allocations"][0], "host": 1}]}
    assert not ledger_module.holds(ledger_module.render(as_numbers), as_numbers)  # written as '1', read as '1'


# --- links, modes, the exact text read ------------------------------------------------------------


def test_two_writers_through_two_links_to_one_file_exclude_each_other(tmp_path):
    real = tmp_path / "store" / "ledger.yml"
    real.parent.mkdir()
    first = ledger_for("node1")
    ledger_module.write_ledger(str(real), first, None)
    links = [tmp_path / "a" / "roce-ledger.yml", tmp_path / "b" / "roce-ledger.yml"]
    for link in links:
        link.parent.mkdir()
        link.symlink_to(real)
    text = real.read_text()
    # Both read the same file through their own link; the first write wins, the second is refused.
    ledger_module.write_ledger(str(links[0]), ledger_for("node1", "node2"), first, base_text=text)
    with pytest.raises(ledger_module.LedgerConflict):
        ledger_module.write_ledger(str(links[1]), ledger_for("node1", "node3"), first, base_text=text)
    assert all(link.is_symlink() for link in links)
    assert yaml.safe_load(real.read_text())["allocations"] == ledger_for("node1", "node2")["allocations"]


def test_the_file_keeps_its_mode(tmp_path):
    path = tmp_path / "roce-ledger.yml"
    ledger_module.write_ledger(str(path), ledger_for("node1"), None)
    assert path.stat().st_mode & 0o777 == 0o644
    path.chmod(0o640)
    ledger_module.write_ledger(str(path), ledger_for("node1", "node2"), ledger_for("node1"))
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_file_that_is_no_longer_the_text_read_is_a_conflict_never_a_traceback(tmp_path):
    path = tmp_path / "roce-ledger.yml"
    ledger_module.write_ledger(str(path), ledger_for("node1"), None)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # cut while we computed
    with pytest.raises(ledger_module.LedgerConflict):
        ledger_module.write_ledger(str(path), ledger_for("node1", "node2"), ledger_for("node1"), base_text=text)
    with pytest.raises(ledger_module.LedgerConflict):  # compared as data: not YAML is not the base
        ledger_module.write_ledger(str(path), ledger_for("node1", "node2"), ledger_for("node1"))
    assert path.read_text() == text[: len(text) // 2]


def test_the_end_mark_is_the_filters():
    assert ledger_module.END_MARK == ipam.END_MARK
    assert ledger_module.END_MARK in ledger_module.HEADER
    assert ledger_module.end_line(3, 1) == ipam.end_line(3, 1) + "\n"


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.sampled_from(TRICKY_VALUES), st.from_regex(r"[A-Za-z0-9_./:+~=<-]{1,10}", fullmatch=True)))
def test_property_what_is_written_bare_without_the_resolver_is_a_string_to_yaml(value):
    resolver = yaml.resolver.Resolver()
    for module in (ledger_module, ipam):
        if module._PLAIN_STRING.match(value) and value not in module._YAML_WORDS:
            assert resolver.resolve(yaml.ScalarNode, value, (True, False)) == "tag:yaml.org,2002:str"


# --- spliced: new lines put into a rendered text, the bytes render writes ---------------------------


def test_spliced_puts_new_lines_where_render_would():
    old = ledger_for("node1", "node3")
    new = {
        "version": 1,
        "allocations": [
            {"pool": "rail0", "host": "node0", "device": "yes", "ip": "10.10.0.0"},
            *old["allocations"][:1],
            {"pool": "rail0", "host": "0123", "device": "mlx5_0", "ip": "10.10.0.9"},
            *old["allocations"][1:],
            {"pool": "rail1", "host": "node3", "device": "mlx5_1", "ip": "10.11.0.1"},
        ],
    }
    entries = [(0, new["allocations"][0]), (1, new["allocations"][2]), (2, new["allocations"][4])]
    assert ledger_module.spliced(ledger_module.render(old), entries, 2) == ledger_module.render(new)
    assert ledger_module.spliced(ledger_module.render(old), [], 2) == ledger_module.render(old)


def test_spliced_refuses_a_text_render_did_not_write_for_that_count():
    old = ledger_for("node1", "node2")
    text = ledger_module.render(old)
    entry = {"pool": "rail0", "host": "node3", "device": "mlx5_0", "ip": "10.10.0.3"}
    assert ledger_module.spliced(text, [(2, entry)], 3) is None  # another count
    assert ledger_module.spliced(text.replace("---\n", "", 1), [(2, entry)], 2) is None  # another header
    assert ledger_module.spliced(text, [(3, entry)], 2) is None  # past the end
    released = {**old, "released": [{**entry, "released_at": "2026-01-01T00:00:00Z"}]}
    assert ledger_module.spliced(ledger_module.render(released), [(2, entry)], 2) is None
    empty = ledger_module.render({"version": 1, "allocations": []})
    assert ledger_module.spliced(empty, [(0, entry)], 0) is None
