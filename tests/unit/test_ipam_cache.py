"""roce_ipam_allocate's cache of the ledger it checked: a run that only adds keys takes the short
path (roce_ipam_assign_added + ipam_ledger.spliced) and writes the very bytes the full path would;
anything else, and any trouble with the cache, is the full path, and never fails a run."""

import ipaddress
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleActionFail
from conftest import ROOT, _load
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

ipam = _load("roce_ipam", ROOT / "filter_plugins" / "roce_ipam.py")
ledger_module = _load("ipam_ledger", ROOT / "library" / "ipam_ledger.py")
action = _load("roce_ipam_allocate", ROOT / "action_plugins" / "roce_ipam_allocate.py")

POOLS = [
    {"name": "rail0", "subnet": "10.10.0.0/24", "gateway": "10.10.0.254"},
    {"name": "rail1", "subnet": "10.11.0.0/24", "exclude": ["10.11.0.1"]},
]
NOW = "2026-01-01T00:00:00Z"


def options(**changes):
    return {"release": [], "aligned": False, "hold_days": 7, "now": NOW, **changes}


def requests(hosts, pools=POOLS):
    return [
        {"host": host, "device": f"mlx5_{n}", "pool": pool["name"]} for host in hosts for n, pool in enumerate(pools)
    ]


def hosts(count, start=1):
    return [f"node{n}" for n in range(start, start + count)]


def run(path, wanted, cache, pools=POOLS, **mode):
    """allocate_file as the action calls it: (what the filter answered, what the writer did, short path taken)."""
    opts = mode.pop("opts", None) or options()
    allocated, written = action.allocate_file(
        str(path), pools, wanted, opts, ipam=ipam, ledger_module=ledger_module, cache=cache, **mode
    )
    return allocated, written, "entries" in allocated


@pytest.fixture
def ledger(tmp_path):
    """A ledger of 10 hosts written by a first run, and the cache that run left."""
    path, cache = tmp_path / "ipam" / "roce-ledger.yml", str(tmp_path / "cache")
    *_, short = run(path, requests(hosts(10)), cache, init=True)
    assert not short
    return path, cache


def cache_of(path, cache):
    return Path(action.cache_file(str(path), cache))


def test_a_first_run_leaves_the_cache_and_the_next_adding_hosts_takes_the_short_path(ledger, tmp_path):
    path, cache = ledger
    assert cache_of(path, cache).is_file()
    before = path.read_bytes()
    allocated, written, short = run(path, requests(hosts(12)), cache)
    assert short
    assert (
        written["added"]
        == allocated["taken"]
        == [
            "rail0 node11 mlx5_0 10.10.0.11",
            "rail0 node12 mlx5_0 10.10.0.12",
            "rail1 node11 mlx5_1 10.11.0.12",
            "rail1 node12 mlx5_1 10.11.0.13",
        ]
    )
    # The full path from the same file: the same bytes, the same answer.
    other = tmp_path / "full" / "roce-ledger.yml"
    other.parent.mkdir()
    other.write_bytes(before)
    full, full_written, full_short = run(other, requests(hosts(12)), None)
    assert not full_short
    assert path.read_bytes() == other.read_bytes()
    assert allocated["allocations"] == full["allocations"]
    assert (written["changed"], written["added"], written["removed"]) == (True, full["taken"], full["freed"])
    assert written["allocations"] == full_written["allocations"] == 24
    # ...and the cache it left serves the next run, a no-op.
    allocated, written, short = run(path, requests(hosts(12)), cache)
    assert short
    assert (allocated["changed"], written["changed"], written["added"]) == (False, False, [])


def test_the_short_path_keeps_the_mode_and_shows_the_diff(ledger):
    path, cache = ledger
    path.chmod(0o640)
    before = path.read_text()
    _, written, short = run(path, requests(hosts(11)), cache, diff=True)
    assert short
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert written["diff"]["before"] == before
    assert written["diff"]["after"] == path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["roce-ledger.yml"]  # no temporary file left


def test_a_ledger_behind_a_symbolic_link_is_written_through_it(tmp_path):
    real = tmp_path / "store" / "roce-ledger.yml"
    real.parent.mkdir()
    link = tmp_path / "roce-ledger.yml"
    link.symlink_to(real)
    cache = str(tmp_path / "cache")
    run(link, requests(hosts(3)), cache, init=True)
    *_, short = run(link, requests(hosts(4)), cache)
    assert short
    assert link.is_symlink()
    assert "node4" in real.read_text()


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda file: file.unlink(), id="absent"),
        pytest.param(lambda file: file.write_bytes(b""), id="empty"),
        pytest.param(lambda file: file.write_bytes(file.read_bytes()[:-40]), id="cut-short"),
        pytest.param(lambda file: file.write_bytes(file.read_bytes().replace(b"node3", b"node9")), id="body-edited"),
        pytest.param(lambda file: file.write_bytes(b"\xff" * 100 + file.read_bytes()), id="garbage-head"),
        pytest.param(
            lambda file: file.write_bytes(file.read_bytes().replace(b"cache 1 ", b"cache 2 ", 1)), id="other-format"
        ),
        pytest.param(lambda file: (file.unlink(), file.mkdir()), id="a-directory"),
    ],
)
def test_a_spoilt_cache_is_the_full_path_and_is_written_again(ledger, spoil):
    path, cache = ledger
    spoil(cache_of(path, cache))
    allocated, written, short = run(path, requests(hosts(11)), cache)
    assert not short
    assert (
        written["added"] == allocated["taken"] == ["rail0 node11 mlx5_0 10.10.0.11", "rail1 node11 mlx5_1 10.11.0.12"]
    )
    if cache_of(path, cache).is_file():  # written again (a directory in its place stays: no cache)
        assert run(path, requests(hosts(12)), cache)[2]


def test_a_forged_body_under_the_right_key_is_refused_by_its_digest(ledger):
    path, cache = ledger
    file = cache_of(path, cache)
    head, _, body = file.read_bytes().partition(b"\n")
    state = json.loads(body)
    state["pools"][0]["ips"] = state["pools"][0]["ips"].replace("10.10.0.1\n", "10.10.0.99\n")
    file.write_bytes(head + b"\n" + json.dumps(state).encode())
    allocated, _, short = run(path, requests(hosts(11)), cache)
    assert not short
    assert allocated["allocations"]["node1"]["mlx5_0"]["address"] == "10.10.0.1"


def test_another_key_is_the_full_path(ledger, tmp_path):
    path, cache = ledger
    # Other settings: a pool changed, the hold, aligned.
    changed = [{**POOLS[0], "exclude": ["10.10.0.200"]}, POOLS[1]]
    assert not run(path, requests(hosts(10)), cache, pools=changed)[2]
    assert run(path, requests(hosts(10)), cache, pools=changed)[2]  # the cache now holds the new key
    assert not run(path, requests(hosts(10)), cache, opts=options(hold_days=3))[2]
    assert not run(path, requests(hosts(10)), cache, opts=options(aligned=True))[2]
    # Another ledger's cache copied over this one's.
    other = tmp_path / "other" / "roce-ledger.yml"
    run(other, requests(hosts(5)), cache, init=True)
    shutil.copyfile(cache_of(other, cache), cache_of(path, cache))
    assert not run(path, requests(hosts(10)), cache)[2]
    # Other code: the key covers the sources of the action, the filter and the writer.
    key = action.cache_key(path.read_bytes(), POOLS, options(), [action.__file__])
    assert key != action.cache_key(path.read_bytes(), POOLS, options(), [action.__file__, ledger_module.__file__])


def test_a_cache_that_cannot_be_written_never_fails_the_run(tmp_path):
    path = tmp_path / "ipam" / "roce-ledger.yml"
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    cache = str(blocker / "cache")  # under a file: nothing can be made there
    run(path, requests(hosts(3)), cache, init=True)
    allocated, written, short = run(path, requests(hosts(4)), cache)
    assert not short
    assert written["added"] == allocated["taken"]
    assert "node4" in path.read_text()
    assert action.save_state(str(blocker / "cache" / "x.json"), "0" * 64, {"version": 1}) is False


def test_a_settings_value_json_cannot_write_means_no_cache(tmp_path):
    assert action.cache_key(b"", [{"name": "p", "subnet": object()}], options(), []) is None
    assert action.load_state(str(tmp_path / "absent.json"), None) is None


def test_a_tampered_ledger_with_its_old_cache_is_checked_in_full_and_refused(ledger):
    path, cache = ledger
    text = path.read_text()
    tampered = text.replace(
        "host: node2, device: mlx5_0, ip: 10.10.0.2}", "host: node2, device: mlx5_0, ip: 10.10.0.1}"
    )
    assert tampered != text
    path.write_text(tampered)
    with pytest.raises(AnsibleActionFail, match=r"ledger hands 10\.10\.0\.1 to both node1/mlx5_0 and node2/mlx5_0"):
        run(path, requests(hosts(11)), cache)
    assert path.read_text() == tampered
    # A line added by hand, the end line counting it: still the full check, still refused.
    line = "  - {pool: rail0, host: node99, device: mlx5_0, ip: 10.10.0.254}\n"
    path.write_text(
        text.replace("# end of ledger: 20 ", "# end of ledger: 21 ").replace("allocations:\n", "allocations:\n" + line)
    )
    with pytest.raises(AnsibleActionFail, match="now the gateway"):
        run(path, requests(hosts(11)), cache)


def test_verify_and_check_mode_never_take_the_short_path_nor_write_the_cache(ledger):
    path, cache = ledger
    file = cache_of(path, cache)
    kept, before = file.read_bytes(), path.read_bytes()
    allocated, written, short = run(path, requests(hosts(10)), cache, verify=True)
    assert (short, written) == (False, None)
    assert not allocated["taken"]
    allocated, written, short = run(path, requests(hosts(11)), cache, verify=True)
    assert not short and allocated["taken"]
    allocated, written, short = run(path, requests(hosts(11)), cache, check_mode=True)
    assert not short and written["changed"] and written["added"]
    assert (file.read_bytes(), path.read_bytes()) == (kept, before)
    # The ledger_init flag (a first run) is the full path too.
    assert not run(path, requests(hosts(11)), cache, init=True)[2]


def test_a_release_is_the_full_path_and_the_cache_follows_the_ledger_written(ledger):
    path, cache = ledger
    # Without a hold the ledger written has no released section: it is pictured again.
    _, written, short = run(path, requests(hosts(9)), cache, opts=options(release="node10", hold_days=0))
    assert not short and written["removed"] == ["rail0 node10 mlx5_0 10.10.0.10", "rail1 node10 mlx5_1 10.11.0.11"]
    assert run(path, requests(hosts(9)), cache, opts=options(hold_days=0))[2]
    # With a hold, the ledger lists released entries (which expire by the clock): never pictured.
    _, written, short = run(path, requests(hosts(8)), cache, opts=options(release="node9"))
    assert not short and "released:" in path.read_text()
    assert not run(path, requests(hosts(8)), cache)[2]
    assert run(path, requests(hosts(8)), cache)[1]["changed"] is False


def test_what_the_short_path_leaves_to_roce_ipam_assign(ledger):
    path, cache = ledger
    # A key requested from another pool than the one holding it: refused by the full path.
    moved = [{**request, "pool": "rail1"} if request["host"] == "node3" else request for request in requests(hosts(10))]
    with pytest.raises(AnsibleActionFail, match="node3 device mlx5_0 holds an address in pool rail0"):
        run(path, moved, cache)
    # An unknown pool.
    with pytest.raises(AnsibleActionFail, match="unknown pool nowhere requested by node11"):
        run(path, [*requests(hosts(10)), {"host": "node11", "device": "mlx5_0", "pool": "nowhere"}], cache)
    # A pool exhausted: the full path's message.
    with pytest.raises(AnsibleActionFail, match=r"pool rail0 \(10\.10\.0\.0/24\) is exhausted: 300 new address"):
        run(path, requests(hosts(310)), cache)
    # A reservation anywhere: the full path, which gives the reserved address.
    reserved = [{**POOLS[0], "reserved": [{"host": "node11", "device": "mlx5_0", "ip": "10.10.0.100"}]}, POOLS[1]]
    run(path, requests(hosts(10)), cache, pools=reserved)
    allocated, _, short = run(path, requests(hosts(11)), cache, pools=reserved)
    assert not short and allocated["allocations"]["node11"]["mlx5_0"]["address"] == "10.10.0.100"
    assert path.read_bytes().count(b"node") == 22
    assert os.listdir(cache)


def test_a_pod_range_changes_the_key_and_the_short_path_goes_around_it(ledger):
    path, cache = ledger  # node1..10: 10.10.0.1..10 and 10.11.0.2..11
    pods = [{**POOLS[0], "pod_range": "10.10.0.16/28"}, POOLS[1]]
    key = action.cache_key(path.read_bytes(), POOLS, options(), [action.__file__])
    assert key != action.cache_key(path.read_bytes(), pods, options(), [action.__file__])
    # Declared: the next run is the full path (the whole ledger checked against the range).
    allocated, _, short = run(path, requests(hosts(10)), cache, pools=pods)
    assert not short and not allocated["changed"]
    # Then hosts added take the short path, and go around the pods' range there too.
    allocated, written, short = run(path, requests(hosts(17)), cache, pools=pods)
    assert short
    assert [allocated["allocations"][f"node{n}"]["mlx5_0"]["address"] for n in range(11, 18)] == [
        "10.10.0.11",
        "10.10.0.12",
        "10.10.0.13",
        "10.10.0.14",
        "10.10.0.15",
        "10.10.0.32",
        "10.10.0.33",
    ]
    assert written["added"][5] == "rail0 node16 mlx5_0 10.10.0.32"
    # The same with aligned offsets (new hosts only): offsets 16..31 are rail0's pods'.
    aligned = options(aligned=True)
    run(path, requests(hosts(17)), cache, pools=pods, opts=aligned)
    allocated, _, short = run(path, requests(hosts(18)), cache, pools=pods, opts=aligned)
    assert short
    assert {d["address"] for d in allocated["allocations"]["node18"].values()} == {"10.10.0.34", "10.11.0.34"}


def test_a_pod_range_over_held_addresses_stops_the_run_and_writes_nothing(ledger):
    path, cache = ledger
    before = path.read_bytes()
    pods = [POOLS[0], {**POOLS[1], "pod_range": "10.11.0.8/30"}]  # node7..node10's 10.11.0.8..11
    with pytest.raises(
        AnsibleActionFail,
        match=r"pool rail1: the ledger holds addresses that are now inside pod_range 10\.11\.0\.8/30, which "
        r"whereabouts hands to pods: node7/mlx5_1 10\.11\.0\.8, node8/mlx5_1 10\.11\.0\.9, node9/mlx5_1 "
        r"10\.11\.0\.10, node10/mlx5_1 10\.11\.0\.11 \(an address held never moves",
    ):
        run(path, requests(hosts(12)), cache, pools=pods)
    assert path.read_bytes() == before
    assert run(path, requests(hosts(11)), cache)[2]  # the cache of the pools it was made with still serves


# --- the property: the short path writes the full path's bytes and answers the same -----------------

HOST_NAMES = ["n1", "n2", "n10", "n11", "a", "B", "0123", "yes", "x-9", "node_7", "z.z"]
LATER_NAMES = ["n3", "n12", "n100", "b", "0124", "off", "x-10", "node_8", "z.y"]
DEVICES = ["mlx5_0", "mlx5_1", "mlx5_10", "no", "007"]


@st.composite
def scenarios(draw):
    """Pools (IPv4 or IPv6, small, with gateways, exclusions and ranges), a first inventory and a
    later one that adds hosts or devices, and whether addresses are aligned."""
    count = draw(st.integers(1, 3))
    names = draw(
        st.lists(
            st.sampled_from(["rail0", "rail-1", "r2", "0x", "on", "pool.3"]),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    pools = []
    for index, name in enumerate(names):
        # The pods' range (whereabouts), when there is one: .8/30 or .24/29 of the 32 addresses,
        # with the gateway outside it.
        pods = draw(st.sampled_from([None, (8, 30), (24, 29)]))
        gateways = [n for n in range(1, 31) if pods is None or not pods[0] <= n < pods[0] + 2 ** (32 - pods[1])]
        if draw(st.booleans()):
            pool = {"name": name, "subnet": f"10.{index}.0.0/27"}
            if draw(st.booleans()):
                pool["gateway"] = f"10.{index}.0.{draw(st.sampled_from(gateways))}"
            if draw(st.booleans()):
                pool["exclude"] = [f"10.{index}.0.{draw(st.integers(1, 30))}", f"10.{index}.0.16/30"]
            if draw(st.booleans()):
                pool["range_start"] = f"10.{index}.0.{draw(st.integers(1, 8))}"
            if pods:
                pool["pod_range"] = f"10.{index}.0.{pods[0]}/{pods[1]}"
        else:
            pool = {"name": name, "subnet": f"fd00:{index}::/123"}
            if draw(st.booleans()):
                pool["gateway"] = f"fd00:{index}::{draw(st.sampled_from(gateways)):x}"
            if pods:
                pool["pod_range"] = f"fd00:{index}::{pods[0]:x}/{pods[1] + 96}"
        pools.append(pool)
    rails = [
        (device, draw(st.sampled_from(names)))
        for device in draw(st.lists(st.sampled_from(DEVICES), min_size=1, max_size=3, unique=True))
    ]
    first = draw(st.lists(st.sampled_from(HOST_NAMES), min_size=1, max_size=8, unique=True))
    later = draw(st.lists(st.sampled_from(HOST_NAMES + LATER_NAMES), max_size=6, unique=True))
    extra_rail = draw(st.sampled_from([None, *DEVICES]))
    return pools, rails, first, later, (extra_rail, draw(st.sampled_from(names))), draw(st.booleans())


def rail_requests(host_list, rails):
    return [{"host": host, "device": device, "pool": pool} for host in host_list for device, pool in rails]


def outcome(path, wanted, cache, pools, opts):
    try:
        allocated, written, short = run(path, wanted, cache, pools=pools, opts=opts)
    except AnsibleActionFail as error:
        return ("failed", str(error)), None, False
    answer = (allocated["allocations"], allocated["taken"], allocated["freed"], allocated["changed"])
    return (answer, {k: v for k, v in written.items() if k != "path"}, path.read_bytes()), written, short


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenarios())
def test_the_short_path_writes_the_bytes_of_the_full_path(tmp_path_factory, scenario):
    pools, rails, first, later, extra_rail, aligned = scenario
    opts = options(aligned=aligned)
    work = tmp_path_factory.mktemp("cache")
    path, cache = work / "short" / "roce-ledger.yml", str(work / "cache")
    try:
        run(path, rail_requests(first, rails), cache, pools=pools, opts=opts, init=True)
    except AnsibleActionFail:
        event("the first inventory does not fit its pools")
        return
    assert cache_of(path, cache).is_file()
    grown_rails = [*rails, extra_rail] if extra_rail[0] and extra_rail[0] not in dict(rails) else rails
    # Two later runs, each against the ledger and cache the one before left.
    for wanted in (
        rail_requests(first, rails) + rail_requests([h for h in later if h not in first], rails),
        rail_requests(list(dict.fromkeys(first + later)), grown_rails),
    ):
        full_path = work / "full" / "roce-ledger.yml"
        full_path.parent.mkdir(exist_ok=True)
        full_path.write_bytes(path.read_bytes())
        expected, _, full_short = outcome(full_path, wanted, None, pools, opts)
        assert not full_short
        held_hosts = {entry["host"] for entry in yaml.safe_load(path.read_text())["allocations"]}
        got, written, short = outcome(path, wanted, cache, pools, opts)
        assert got == expected
        if expected[0] == "failed":
            event("refused by both")
            return
        pods = [ipaddress.ip_network(pool["pod_range"]) for pool in pools if "pod_range" in pool]
        for devices in expected[0][0].values():
            assert not any(ipaddress.ip_address(d["address"]) in pod for d in devices.values() for pod in pods)
        # The short path is taken whenever nothing but new keys is asked for (aligned: of hosts
        # that hold nothing yet), and it leaves the cache the next run takes.
        added_hosts = {line.split()[1] for line in written["added"]}
        if not aligned or not added_hosts & held_hosts:
            assert short, (written["added"], held_hosts)
        event(f"{'short' if short else 'full'} path, {'some' if written['added'] else 'no'} keys added")


def test_aligned_new_hosts_take_the_short_path_and_a_new_device_of_a_held_host_does_not(tmp_path):
    path, cache = tmp_path / "roce-ledger.yml", str(tmp_path / "cache")
    opts = options(aligned=True)
    run(path, requests(hosts(3)), cache, opts=opts, init=True)
    allocated, _, short = run(path, requests(hosts(4)), cache, opts=opts)
    assert short
    node4 = allocated["allocations"]["node4"]
    assert (node4["mlx5_0"]["address"], node4["mlx5_1"]["address"]) == (
        "10.10.0.5",
        "10.11.0.5",
    )  # .1 excluded in rail1
    third = [*POOLS, {"name": "rail2", "subnet": "10.12.0.0/24"}]
    run(path, requests(hosts(4)), cache, pools=third, opts=opts)
    allocated, _, short = run(path, requests(hosts(4), third), cache, pools=third, opts=opts)
    assert not short  # node1..4 hold offsets already: roce_ipam_assign reads them
    assert allocated["allocations"]["node4"]["mlx5_2"]["address"] == "10.12.0.5"


def test_the_cache_lives_under_xdg_cache_home_or_the_home(monkeypatch, tmp_path):
    assert action.cache_directory({"XDG_CACHE_HOME": str(tmp_path)}) == str(tmp_path / "hpc-datapath" / "ipam")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = str(tmp_path / "home" / ".cache" / "hpc-datapath" / "ipam")
    assert action.cache_directory({"XDG_CACHE_HOME": "relative/is/ignored"}) == expected
    assert action.cache_directory({}) == expected
    # Named by the ledger's real path: two links to one ledger share one cache file.
    real = tmp_path / "roce-ledger.yml"
    (tmp_path / "link.yml").symlink_to(real)
    assert action.cache_file(str(tmp_path / "link.yml"), "/c") == action.cache_file(str(real), "/c")
