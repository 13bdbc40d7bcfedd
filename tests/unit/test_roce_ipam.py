"""roce_ipam_assign: every rule of the contract, and its invariants as properties."""

import copy
import ipaddress
import itertools
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from conftest import ROOT, _load
from hypothesis import event, given, settings
from hypothesis import strategies as st

ipam = _load("roce_ipam", ROOT / "filter_plugins" / "roce_ipam.py")
assign = ipam.roce_ipam_assign

RAILS = [{"name": "rail0", "subnet": "10.10.0.0/24"}, {"name": "rail1", "subnet": "10.10.1.0/24"}]


def req(host, device="mlx5_0", pool="rail0"):
    return {"host": host, "device": device, "pool": pool}


def addresses(result, pool=None):
    return {
        (entry["host"], entry["device"]): entry["ip"]
        for entry in result["ledger"]["allocations"]
        if pool is None or entry["pool"] == pool
    }


def fails(match, *args, **kwargs):
    with pytest.raises(AnsibleFilterError, match=match):
        assign(*args, **kwargs)


# --- allocation order and stability -------------------------------------------------------------


def test_lowest_free_address_in_natural_host_order():
    result = assign(None, RAILS, [req("node10"), req("node2"), req("node1")])
    assert addresses(result) == {
        ("node1", "mlx5_0"): "10.10.0.1",
        ("node2", "mlx5_0"): "10.10.0.2",
        ("node10", "mlx5_0"): "10.10.0.3",
    }
    assert result["changed"] is True


def test_devices_in_natural_order_within_a_host():
    pools = [{"name": "npu", "subnet": "192.168.1.0/24"}]
    result = assign(None, pools, [req("a", f"eth{i}", "npu") for i in (10, 2, 1)])
    assert addresses(result) == {
        ("a", "eth1"): "192.168.1.1",
        ("a", "eth2"): "192.168.1.2",
        ("a", "eth10"): "192.168.1.3",
    }


def test_allocations_report_address_prefix_pool_gateway():
    pools = [{"name": "rail0", "subnet": "10.10.0.0/24", "gateway": "10.10.0.254"}]
    result = assign(None, pools, [req("node1")])
    assert result["allocations"] == {
        "node1": {"mlx5_0": {"address": "10.10.0.1", "prefix": 24, "pool": "rail0", "gateway": "10.10.0.254"}}
    }


def test_inserted_host_does_not_renumber_others():
    first = assign(None, RAILS, [req("node1"), req("node3")])
    second = assign(first["ledger"], RAILS, [req("node1"), req("node2"), req("node3")])
    assert addresses(second)[("node1", "mlx5_0")] == "10.10.0.1"
    assert addresses(second)[("node3", "mlx5_0")] == "10.10.0.2"
    assert addresses(second)[("node2", "mlx5_0")] == "10.10.0.3"


def test_absence_from_requests_is_not_a_release():
    first = assign(None, RAILS, [req("node1"), req("node2")])
    limited = assign(first["ledger"], RAILS, [req("node2")])  # as under --limit node2
    assert limited["ledger"] == first["ledger"]
    assert limited["changed"] is False
    assert list(limited["allocations"]) == ["node2"]


def test_second_call_is_idempotent():
    first = assign(None, RAILS, [req("node1"), req("node1", "mlx5_1", "rail1")])
    again = assign(first["ledger"], RAILS, [req("node1"), req("node1", "mlx5_1", "rail1")])
    assert again == {**first, "changed": False, "taken": [], "freed": []}


def test_ledger_order_is_deterministic():
    first = assign(None, RAILS, [req(f"node{i}") for i in range(5)])
    shuffled = {"version": 1, "allocations": list(reversed(first["ledger"]["allocations"]))}
    again = assign(shuffled, RAILS, [])
    assert again["ledger"] == first["ledger"]
    assert again["changed"] is False


# --- release ------------------------------------------------------------------------------------


def test_release_a_host_frees_all_its_addresses_for_reuse():
    requests = [req("node1"), req("node1", "mlx5_1", "rail1"), req("node2")]
    first = assign(None, RAILS, requests)
    released = assign(first["ledger"], RAILS, [req("node2")], release=[{"host": "node1"}])
    assert set(addresses(released)) == {("node2", "mlx5_0")}
    assert released["changed"] is True
    reused = assign(released["ledger"], RAILS, [req("node7")])
    assert addresses(reused)[("node7", "mlx5_0")] == "10.10.0.1"


def test_release_one_device():
    requests = [req("node1"), req("node1", "mlx5_1", "rail1")]
    first = assign(None, RAILS, requests)
    released = assign(first["ledger"], RAILS, [], release=[{"host": "node1", "device": "mlx5_1"}])
    assert set(addresses(released)) == {("node1", "mlx5_0")}


def test_release_and_request_in_one_call_gives_the_lowest_free_address():
    first = assign(None, RAILS, [req("node1"), req("node2")])
    moved = assign(first["ledger"], RAILS, [req("node2", pool="rail1")], release=[{"host": "node2"}])
    assert addresses(moved)[("node2", "mlx5_0")] == "10.10.1.1"


# --- never handed out ---------------------------------------------------------------------------


def test_network_broadcast_and_gateway_are_never_handed_out():
    pools = [{"name": "p", "subnet": "10.0.0.0/29", "gateway": "10.0.0.1"}]
    result = assign(None, pools, [req(f"n{i}", pool="p") for i in range(5)])
    assert sorted(addresses(result).values()) == [f"10.0.0.{i}" for i in range(2, 7)]
    fails(
        r"pool p \(10.0.0.0/29\) is exhausted: 6 new address\(es\) needed, 5 free",
        None,
        pools,
        [req(f"n{i}", pool="p") for i in range(6)],
    )


@pytest.mark.parametrize(
    ("subnet", "expected"),
    [
        ("10.0.0.0/31", ["10.0.0.0", "10.0.0.1"]),
        ("10.0.0.7/32", ["10.0.0.7"]),
        ("fd00::/127", ["fd00::", "fd00::1"]),
        ("fd00::/126", ["fd00::1", "fd00::2", "fd00::3"]),
    ],
)
def test_point_to_point_and_small_subnets(subnet, expected):
    pools = [{"name": "p", "subnet": subnet}]
    result = assign(None, pools, [req(f"n{i}", pool="p") for i in range(len(expected))])
    assert sorted(addresses(result).values(), key=ipaddress.ip_address) == expected
    fails("exhausted", None, pools, [req(f"n{i}", pool="p") for i in range(len(expected) + 1)])


def test_excluded_addresses_and_cidrs_and_range():
    pools = [
        {
            "name": "p",
            "subnet": "10.0.0.0/24",
            "range_start": "10.0.0.10",
            "range_end": "10.0.0.20",
            "exclude": ["10.0.0.10", "10.0.0.12/31", "10.0.0.0/30"],
        }
    ]
    result = assign(None, pools, [req(f"n{i}", pool="p") for i in range(3)])
    assert sorted(addresses(result).values()) == ["10.0.0.11", "10.0.0.14", "10.0.0.15"]
    fails(r"12 new address\(es\) needed, 8 free", None, pools, [req(f"n{i}", pool="p") for i in range(12)])


def test_huge_ipv6_pool_with_half_excluded_is_not_walked():
    # Walking address by address would take 2^63 steps: finishing at all is the assertion.
    pools = [{"name": "v6", "subnet": "fd00:1::/64", "exclude": ["fd00:1::/65"], "gateway": "fd00:1::8000:0:0:0"}]
    result = assign(None, pools, [req(f"n{i}", pool="v6") for i in range(3)])
    assert sorted(addresses(result).values()) == ["fd00:1::8000:0:0:1", "fd00:1::8000:0:0:2", "fd00:1::8000:0:0:3"]
    assert result["allocations"]["n0"]["mlx5_0"]["prefix"] == 64


def test_exhaustion_counts_are_exact_for_huge_pools():
    pools = [{"name": "v6", "subnet": "fd00:1::/64", "range_start": "fd00:1::ffff:ffff:ffff:fffe"}]
    fails(r"exhausted: 3 new address\(es\) needed, 2 free", None, pools, [req(f"n{i}", pool="v6") for i in range(3)])


# --- aligned ------------------------------------------------------------------------------------


EIGHT_RAILS = [{"name": f"rail{i}", "subnet": f"10.{i}.0.0/24"} for i in range(8)]


def test_aligned_gives_one_offset_on_every_rail():
    requests = [req(f"node{n:02d}", f"mlx5_{i}", f"rail{i}") for n in (7, 1) for i in range(8)]
    result = assign(None, EIGHT_RAILS, requests, aligned=True)
    for host, offset in (("node01", 1), ("node07", 2)):
        assert {dev["address"] for dev in result["allocations"][host].values()} == {
            f"10.{i}.0.{offset}" for i in range(8)
        }


def test_aligned_offset_must_be_free_on_all_pools():
    pools = copy.deepcopy(EIGHT_RAILS[:2])
    pools[1]["exclude"] = ["10.1.0.1", "10.1.0.2"]
    ledger = {"version": 1, "allocations": [{"pool": "rail0", "host": "old", "device": "x", "ip": "10.0.0.3"}]}
    requests = [req("node1", "mlx5_0", "rail0"), req("node1", "mlx5_1", "rail1")]
    result = assign(ledger, pools, requests, aligned=True)
    assert {d["address"] for d in result["allocations"]["node1"].values()} == {"10.0.0.4", "10.1.0.4"}


def test_aligned_new_rail_keeps_the_host_offset():
    first = assign(
        None, EIGHT_RAILS[:2], [req("a", "m0", "rail0"), req("b", "m0", "rail0"), req("b", "m1", "rail1")], aligned=True
    )
    assert addresses(first)[("b", "m1")] == "10.1.0.2"
    second = assign(first["ledger"], EIGHT_RAILS[:2], [req("a", "m1", "rail1")], aligned=True)
    assert addresses(second)[("a", "m1")] == "10.1.0.1"


def test_aligned_refuses_a_taken_offset_for_an_existing_host():
    ledger = {
        "version": 1,
        "allocations": [
            {"pool": "rail0", "host": "a", "device": "m0", "ip": "10.0.0.1"},
            {"pool": "rail1", "host": "b", "device": "m1", "ip": "10.1.0.1"},
        ],
    }
    fails(
        r"aligned: pool rail1: offset 1 of host a is not free",
        ledger,
        EIGHT_RAILS[:2],
        [req("a", "m1", "rail1")],
        aligned=True,
    )


def test_aligned_refuses_two_devices_in_one_pool():
    fails(r"aligned: host a has two devices in one pool", None, RAILS, [req("a", "m0"), req("a", "m1")], aligned=True)


def test_aligned_refuses_a_host_with_mixed_offsets():
    ledger = ledger_of(("rail0", "a", "m0", "10.0.0.1"), ("rail1", "a", "m1", "10.1.0.2"))  # from before alignment
    fails(
        r"aligned: host a holds different offsets in its pools \(\[1, 2\]\)",
        ledger,
        EIGHT_RAILS[:3],
        [req("a", "m2", "rail2")],
        aligned=True,
    )


def test_aligned_exhaustion_names_the_pool():
    pools = [{"name": "small", "subnet": "10.0.0.0/30"}, {"name": "big", "subnet": "10.1.0.0/24"}]
    requests = [req(f"n{i}", f"d{p}", p) for i in range(3) for p in ("small", "big")]
    fails(r"pool small \(10.0.0.0/30\) is exhausted", None, pools, requests, aligned=True)


# --- reservations -------------------------------------------------------------------------------


def test_reservations_are_honoured_whatever_the_order():
    pools = [
        {"name": "p", "subnet": "10.0.0.0/24", "reserved": [{"host": "node9", "device": "mlx5_0", "ip": "10.0.0.1"}]}
    ]
    result = assign(None, pools, [req("node1", pool="p"), req("node9", pool="p"), req("node2", pool="p")])
    assert addresses(result) == {
        ("node1", "mlx5_0"): "10.0.0.2",
        ("node2", "mlx5_0"): "10.0.0.3",
        ("node9", "mlx5_0"): "10.0.0.1",
    }


def test_reserved_address_is_kept_free_while_its_owner_is_absent():
    pools = [
        {"name": "p", "subnet": "10.0.0.0/24", "reserved": [{"host": "late", "device": "mlx5_0", "ip": "10.0.0.1"}]}
    ]
    result = assign(None, pools, [req("node1", pool="p")])
    assert addresses(result) == {("node1", "mlx5_0"): "10.0.0.2"}


def test_reservation_held_by_another_key_is_an_error():
    ledger = assign(None, RAILS, [req("node1")])["ledger"]
    pools = copy.deepcopy(RAILS)
    pools[0]["reserved"] = [{"host": "node2", "device": "mlx5_0", "ip": "10.10.0.1"}]
    fails(
        r"pool rail0: 10.10.0.1 is reserved for host node2 device mlx5_0 but the ledger gives it to node1/mlx5_0",
        ledger,
        pools,
        [req("node2")],
    )


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("10.10.1.5", "outside subnet 10.10.0.0/24"),
        ("10.10.0.9", "excluded"),
        ("10.10.0.254", "the gateway"),
        ("10.10.0.255", "the broadcast address"),
    ],
)
def test_reservation_on_an_unusable_address_is_an_error(ip, reason):
    pools = [
        {
            "name": "rail0",
            "subnet": "10.10.0.0/24",
            "gateway": "10.10.0.254",
            "exclude": ["10.10.0.8/30"],
            "reserved": [{"host": "node1", "device": "mlx5_0", "ip": ip}],
        }
    ]
    fails(f"pool rail0: reservation {ip} for host node1 device mlx5_0 is {reason}", None, pools, [req("node1")])


def test_two_reservations_of_one_address_is_an_error():
    pools = [
        {
            "name": "rail0",
            "subnet": "10.10.0.0/24",
            "reserved": [
                {"host": "a", "device": "d", "ip": "10.10.0.5"},
                {"host": "b", "device": "d", "ip": "10.10.0.5"},
            ],
        }
    ]
    fails("10.10.0.5 is reserved for both a/d and b/d", None, pools, [])


def test_reservation_compares_addresses_not_strings():
    pools = [{"name": "v6", "subnet": "fd00::/64", "reserved": [{"host": "a", "device": "d", "ip": "fd00:0::0005"}]}]
    ledger = {"version": 1, "allocations": [{"pool": "v6", "host": "a", "device": "d", "ip": "fd00::5"}]}
    result = assign(ledger, pools, [req("a", "d", "v6")])
    assert result["changed"] is False
    assert result["allocations"]["a"]["d"]["address"] == "fd00::5"


# --- bad ledgers --------------------------------------------------------------------------------


def ledger_of(*entries):
    return {"version": 1, "allocations": [dict(zip(("pool", "host", "device", "ip"), e, strict=True)) for e in entries]}


def test_duplicate_ledger_address_is_an_error():
    ledger = ledger_of(("rail0", "a", "d", "10.10.0.1"), ("rail0", "b", "d", "10.10.0.1"))
    fails(r"pool rail0: ledger hands 10.10.0.1 to both a/d and b/d", ledger, RAILS, [])


def test_one_key_twice_in_a_pool_is_an_error_whatever_objects_spell_it():
    # Two entries of one (pool, host, device): once kept silently, the second address winning.
    for pool_twice in ("rail0", "".join(["rail", "0"])):  # the same string object, or an equal one
        ledger = ledger_of(("rail0", "a", "d", "10.10.0.1"), (pool_twice, "a", "d", "10.10.0.2"))
        fails(r"the ledger holds two addresses for host a device d", ledger, RAILS, [req("a", "d")])
        assert ipam._load_columns(ledger["allocations"], ipam._load_pools(RAILS)) is None


POOLS_CHECKED = [
    {"name": "rail0", "subnet": "10.10.0.0/24", "gateway": "10.10.0.254", "exclude": ["10.10.0.100/30"]},
    {"name": "rail1", "subnet": "10.10.1.0/31"},
    {
        "name": "v6",
        "subnet": "fd00::/120",
        "gateway": "fd00::fe",
        "reserved": [{"host": "r", "device": "d", "ip": "fd00::9"}],
    },
]
ledger_entries = st.tuples(
    st.sampled_from(["rail0", "rail1", "v6", "gone"]),
    st.sampled_from(["a", "b", "c", "r"]),
    st.sampled_from(["d", "e"]),
    st.sampled_from(
        ["10.10.0.1", "10.10.0.2", "10.10.0.0", "10.10.0.255", "10.10.0.254", "10.10.0.101", "10.10.0.010",
         "10.10.1.0", "10.10.1.1", "fd00::1", "fd00::9", "fd00::", "fd00::ff", "fd00::fe", "fd00:0::2", "x"]
    ),
)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(st.lists(ledger_entries, max_size=6), st.booleans())
def test_property_the_column_checks_accept_only_what_the_entry_checks_accept(entries, grouped):
    # Whatever the ledger, checking it a column at a time either gives way to the entry by entry
    # checks (None) or gives exactly what they give; it never accepts what they refuse.
    if grouped:
        entries = sorted(entries, key=lambda entry: entry[0])
    allocations = ledger_of(*entries)["allocations"]
    columns = ipam._load_columns(allocations, ipam._load_pools(POOLS_CHECKED))
    try:
        by_entry = ipam._load_entries(allocations, ipam._load_pools(POOLS_CHECKED))
    except AnsibleFilterError:
        assert columns is None
    else:
        assert columns in (None, by_entry)


def test_a_ledger_as_written_is_checked_a_column_at_a_time():
    requests = [req(f"node{n}", f"mlx5_{r}", f"rail{r}") for n in range(1, 60) for r in (0, 1)]
    ledger = assign(None, RAILS, requests[:100])["ledger"]
    pools = ipam._load_pools(RAILS)
    assert ipam._load_columns(ledger["allocations"], pools) == ipam._load_entries(ledger["allocations"], pools)
    assert ipam._load_columns(ledger["allocations"], pools) is not None
    shuffled = ledger["allocations"][1::2] + ledger["allocations"][::2]  # pools no longer in runs
    assert ipam._load_columns(shuffled, pools) is None
    assert assign({"version": 1, "allocations": shuffled}, RAILS, requests[:100])["ledger"] == ledger


def test_non_canonical_ledger_address_is_an_error():
    pools = [{"name": "v6", "subnet": "fd00::/64"}]
    fails(
        r"ledger address fd00:0::1 of host a is not canonical \(write fd00::1\)",
        ledger_of(("v6", "a", "d", "fd00:0::1")),
        pools,
        [],
    )


def test_changed_subnet_lists_every_host_affected():
    ledger = ledger_of(
        ("rail0", "node10", "d", "10.10.0.200"),
        ("rail0", "node2", "d", "10.10.0.130"),
        ("rail0", "node1", "d", "10.10.0.5"),
    )
    pools = [{"name": "rail0", "subnet": "10.10.0.0/25"}]
    fails(
        r"pool rail0: the ledger holds addresses that are now outside subnet 10.10.0.0/25: "
        r"node2/d 10.10.0.130, node10/d 10.10.0.200",
        ledger,
        pools,
        [],
    )


def test_removed_pool_is_an_error():
    ledger = ledger_of(("gone", "node1", "d", "10.99.0.1"), ("gone", "node2", "d", "10.99.0.2"))
    fails(r"pool gone: the ledger names a pool that no longer exists: node1/d, node2/d", ledger, RAILS, [])


def test_ledger_address_now_excluded_is_an_error():
    pools = [{"name": "rail0", "subnet": "10.10.0.0/24", "exclude": ["10.10.0.1"]}]
    fails(
        r"holds addresses that are now excluded: a/d 10.10.0.1", ledger_of(("rail0", "a", "d", "10.10.0.1")), pools, []
    )


def test_ledger_with_one_key_in_two_pools_is_an_error():
    ledger = ledger_of(("rail0", "a", "d", "10.10.0.1"), ("rail1", "a", "d", "10.10.1.1"))
    fails(r"the ledger holds two addresses for host a device d \(pools rail0 and rail1\)", ledger, RAILS, [])


@pytest.mark.parametrize(
    ("ledger", "reason"),
    [
        ({"allocations": []}, "has no 'version'"),
        ({"version": 2, "allocations": []}, "has version 2; this IPAM reads version 1"),
        ({"version": True, "allocations": []}, "has version True"),
        ({"version": 1}, "has no 'allocations'"),
        ({"version": 1, "allocations": None}, r"has 'allocations' null \(empty is 'allocations: \[\]'\)"),
        ({"version": 1, "allocation": []}, "has the unknown top-level key"),
        ({"version": 1, "allocations": {}}, "has 'allocations' as a dict, not a list"),
        (["not", "a", "dict"], "is a list, not a mapping of version and allocations"),
        (
            {"version": 1, "allocations": [{"pool": "rail0", "host": "a", "ip": "10.10.0.1"}]},
            r"entry allocations\[0\] has the keys",
        ),
        (
            {"version": 1, "allocations": [{"pool": "rail0", "host": 83, "device": "d", "ip": "10.10.0.1"}]},
            r"entry allocations\[0\] has host 83, not a non-empty string",
        ),
        (
            {
                "version": 1,
                "allocations": [],
                "released": [
                    {"pool": "rail0", "host": "a", "device": "d", "ip": "10.10.0.1", "released_at": "yesterday"}
                ],
            },
            r"entry released\[0\] has released_at 'yesterday', not YYYY-MM-DDTHH:MM:SSZ",
        ),
    ],
)
def test_ledger_of_unknown_shape_is_an_error(ledger, reason):
    fails(f"roce_ipam_ledger: the ledger {reason}", ledger, RAILS, [])


# --- bad pools and requests ---------------------------------------------------------------------


def test_unknown_pool_names_the_hosts():
    fails(
        r"unknown pool rail9 requested by node2, node10",
        None,
        RAILS,
        [req("node10", pool="rail9"), req("node2", pool="rail9")],
    )


def test_same_key_in_two_pools_is_an_error():
    fails(
        r"host a device d is requested from two pools, rail0 and rail1",
        None,
        RAILS,
        [req("a", "d", "rail0"), req("a", "d", "rail1")],
    )


def test_moving_a_key_to_another_pool_needs_a_release():
    ledger = assign(None, RAILS, [req("a")])["ledger"]
    fails(
        r"host a device mlx5_0 holds an address in pool rail0 but is requested from rail1; release it first",
        ledger,
        RAILS,
        [req("a", pool="rail1")],
    )


def test_overlapping_pools_are_an_error():
    pools = [{"name": "wide", "subnet": "10.10.0.0/16"}, {"name": "rail0", "subnet": "10.10.4.0/24"}]
    fails(r"pools wide \(10.10.0.0/16\) and rail0 \(10.10.4.0/24\) overlap", None, pools, [])


@pytest.mark.parametrize("field", ["gateway", "range_start", "range_end"])
def test_fields_outside_the_subnet_are_errors(field):
    pools = [{"name": "rail0", "subnet": "10.10.0.0/24", field: "10.10.1.1"}]
    fails(f"pool rail0: {field} 10.10.1.1 is outside subnet 10.10.0.0/24", None, pools, [])


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ({"name": "p", "subnet": "10.0.0.1/24"}, "has host bits set"),
        ({"name": "p", "subnet": "banana"}, "is not a CIDR"),
        ({"subnet": "10.0.0.0/24"}, r"pools\[0\] needs a non-empty string 'name'"),
        (
            {"name": "p", "subnet": "10.0.0.0/24", "range_start": "10.0.0.9", "range_end": "10.0.0.8"},
            "is above range_end",
        ),
        ({"name": "p", "subnet": "10.0.0.0/24", "exclude": ["fd00::1"]}, "is not IPv4"),
        ({"name": "p", "subnet": "10.0.0.0/24", "gateway": "fd00::1"}, "is not an IPv4 address"),
    ],
)
def test_malformed_pools(pool, message):
    fails(message, None, [pool], [])


def test_duplicate_pool_names():
    fails("pool rail0 is defined twice", None, [RAILS[0], {"name": "rail0", "subnet": "10.20.0.0/24"}], [])


# --- purity -------------------------------------------------------------------------------------


def test_inputs_are_not_mutated_and_answers_repeat():
    pools = copy.deepcopy(RAILS)
    pools[0]["reserved"] = [{"host": "n3", "device": "mlx5_0", "ip": "10.10.0.9"}]
    ledger = assign(None, pools, [req("n1")])["ledger"]
    requests = [req("n2"), req("n3"), req("n1", "mlx5_1", "rail1")]
    release = [{"host": "n1", "device": "mlx5_0"}]
    snapshot = copy.deepcopy((ledger, pools, requests, release))
    first = assign(ledger, pools, requests, release=release)
    assert (ledger, pools, requests, release) == snapshot
    assert assign(ledger, pools, requests, release=release) == first


def test_ascend_910b_layouts_are_expressible():
    """A2: eight NPU ports in one subnet; or four subnets pairing NPU i with NPU i+4."""
    a2 = assign(
        None, [{"name": "npu", "subnet": "192.168.100.0/24"}], [req("ascend-001", f"npu{i}", "npu") for i in range(8)]
    )
    assert sorted(a2["allocations"]["ascend-001"][f"npu{i}"]["address"] for i in range(8)) == sorted(
        f"192.168.100.{i}" for i in range(1, 9)
    )
    paired_pools = [{"name": f"npu-pair{i}", "subnet": f"192.168.{10 + i}.0/24"} for i in range(4)]
    paired = [req(h, f"npu{i}", f"npu-pair{i % 4}") for h in ("ascend-001", "ascend-002") for i in range(8)]
    result = assign(None, paired_pools, paired)
    npus = result["allocations"]["ascend-002"]
    assert npus["npu1"]["pool"] == npus["npu5"]["pool"] == "npu-pair1"
    assert npus["npu1"]["address"] != npus["npu5"]["address"]


# --- properties ---------------------------------------------------------------------------------

hosts = st.lists(st.from_regex(r"node[0-9]{1,3}", fullmatch=True), min_size=1, max_size=25, unique=True)
devices = st.lists(st.sampled_from(["mlx5_0", "mlx5_1", "mlx5_2"]), min_size=1, max_size=3, unique=True)
PROPERTY_POOLS = [
    {"name": "mlx5_0", "subnet": "10.0.0.0/26", "gateway": "10.0.0.62", "exclude": ["10.0.0.8/29"]},
    {"name": "mlx5_1", "subnet": "10.0.1.0/26", "range_start": "10.0.1.5"},
    {
        "name": "mlx5_2",
        "subnet": "fd00:2::/120",
        "reserved": [{"host": "node7", "device": "mlx5_2", "ip": "fd00:2::7"}],
    },
]


def requests_for(host_names, device_names):
    return [req(h, d, d) for h in host_names for d in device_names]


def assert_well_formed(result):
    pools = {p["name"]: p for p in PROPERTY_POOLS}
    seen = set()
    for entry in result["ledger"]["allocations"]:
        pool = pools[entry["pool"]]
        network = ipaddress.ip_network(pool["subnet"])
        address = ipaddress.ip_address(entry["ip"])
        assert address in network
        assert address not in (network.network_address, network.broadcast_address)
        assert entry["ip"] != pool.get("gateway")
        assert not any(address in ipaddress.ip_network(x) for x in pool.get("exclude", []))
        assert (entry["pool"], address) not in seen
        seen.add((entry["pool"], address))


@settings(max_examples=60, deadline=None)
@given(hosts, devices, st.randoms(use_true_random=False))
def test_property_unique_and_independent_of_request_order(host_names, device_names, rnd):
    requests = requests_for(host_names, device_names)
    shuffled = list(requests)
    rnd.shuffle(shuffled)
    result = assign(None, PROPERTY_POOLS, requests)
    assert_well_formed(result)
    assert assign(None, PROPERTY_POOLS, shuffled) == result
    for pool in ("mlx5_0", "mlx5_1"):
        ips = list(addresses(result, pool).values())
        assert len(ips) == len(set(ips))
    if "node7" in host_names and "mlx5_2" in device_names:
        assert result["allocations"]["node7"]["mlx5_2"]["address"] == "fd00:2::7"


@settings(max_examples=60, deadline=None)
@given(hosts, hosts, devices, st.booleans())
def test_property_stable_and_idempotent(first_hosts, later_hosts, device_names, aligned):
    first = assign(None, PROPERTY_POOLS, requests_for(first_hosts, device_names), aligned=aligned)
    later = assign(first["ledger"], PROPERTY_POOLS, requests_for(later_hosts, device_names), aligned=aligned)
    assert_well_formed(later)
    # Nothing that was handed out moves; nothing is dropped without a release.
    assert addresses(first).items() <= addresses(later).items()
    again = assign(later["ledger"], PROPERTY_POOLS, requests_for(later_hosts, device_names), aligned=aligned)
    assert again == {**later, "changed": False, "taken": [], "freed": []}


@settings(max_examples=60, deadline=None)
@given(hosts, st.data())
def test_property_release_frees_exactly_what_is_asked(host_names, data):
    requests = requests_for(host_names, ["mlx5_0", "mlx5_1"])
    first = assign(None, PROPERTY_POOLS, requests)
    released_hosts = data.draw(st.lists(st.sampled_from(host_names), unique=True))
    result = assign(first["ledger"], PROPERTY_POOLS, [], release=[{"host": h} for h in released_hosts])
    expected = {key: ip for key, ip in addresses(first).items() if key[0] not in released_hosts}
    assert addresses(result) == expected
    assert result["changed"] is bool(released_hosts)


@settings(max_examples=40, deadline=None)
@given(hosts)
def test_property_aligned_offsets_match_across_pools(host_names):
    pools = [{"name": f"rail{i}", "subnet": f"10.{i}.0.0/24"} for i in range(3)]
    pools[1]["exclude"] = ["10.1.0.3", "10.1.0.9"]
    result = assign(None, pools, [req(h, f"mlx5_{i}", f"rail{i}") for h in host_names for i in range(3)], aligned=True)
    for host in host_names:
        offsets = {int(ipaddress.ip_address(d["address"])) & 0xFF for d in result["allocations"][host].values()}
        assert len(offsets) == 1
        assert offsets.isdisjoint({3, 9})


# --- roce_ipam_ledger: the ledger file read exactly as YAML reads it -----------------------------

read_ledger = ipam.roce_ipam_ledger
ledger_module = _load("ipam_ledger", ROOT / "library" / "ipam_ledger.py")

# Values YAML misreads unquoted (numbers, booleans, nulls, times), quotes, or cannot write bare.
TRICKY_VALUES = [
    "yes", "No", "null", "~", "0123", "1e3", "1.0", ".5", "10:20", "0x1f", "1_000", "2001-12-14", "+1", "-a",
    ".a", "...x", "fd00::1", "a b", "a'b", "x,y", "x#y", "x #y", "#x", "{x}", "[x]", "é", "", " x", "x ",
]  # fmt: skip
ledger_values = st.one_of(
    st.sampled_from(TRICKY_VALUES),
    st.from_regex(r"[A-Za-z0-9_./:-]{1,12}", fullmatch=True),
    st.text(alphabet="ab1.:-_ '#,{}é\\\"", min_size=0, max_size=6),
)
ledgers = st.builds(
    lambda entries: {"version": 1, "allocations": entries},
    st.lists(st.fixed_dictionaries({key: ledger_values for key in ("pool", "host", "device", "ip")}), max_size=6),
)


def test_the_written_form_is_read_line_by_line():
    ledger = assign(None, RAILS, [req(f"node{n}", f"mlx5_{r}", f"rail{r}") for n in range(1, 40) for r in (0, 1)])[
        "ledger"
    ]
    text = ledger_module.render(ledger)
    assert ipam._read_written_form(text) == ledger  # not by YAML
    assert read_ledger(text) == ledger


def test_an_empty_ledger_and_an_empty_file():
    assert read_ledger(ledger_module.render({"version": 1, "allocations": []})) == {"version": 1, "allocations": []}
    for text in ("", "\n", "---\n# just a comment\n", ledger_module.HEADER + ledger_module.end_line(0, 0)):
        with pytest.raises(AnsibleFilterError, match="the ledger is empty: it holds no version and no allocations"):
            read_ledger(text)
    with pytest.raises(AnsibleFilterError, match=r"the ledger has no end line .* the file was cut short"):
        read_ledger(ledger_module.HEADER)  # the header promises an end line


def test_a_hand_edited_ledger_is_read_by_yaml():
    text = (
        "version: 1\n"
        "allocations:\n"
        "  # node1 came back from repair\n"
        "  - pool: rail0\n    host: node1\n    device: mlx5_0\n    ip: 10.10.0.1\n"
        "  - {pool: rail0, host: node2, device: mlx5_0, ip: 10.10.0.2}  # spare\n"
    )
    assert ipam._read_written_form(text) is None
    assert read_ledger(text) == {
        "version": 1,
        "allocations": [
            {"pool": "rail0", "host": "node1", "device": "mlx5_0", "ip": "10.10.0.1"},
            {"pool": "rail0", "host": "node2", "device": "mlx5_0", "ip": "10.10.0.2"},
        ],
    }


def test_a_value_yaml_reads_as_a_number_is_left_to_yaml():
    text = "version: 1\nallocations:\n  - {pool: rail0, host: 0123, device: mlx5_0, ip: 10.10.0.1}\n"
    assert ipam._read_written_form(text) is None
    assert yaml.safe_load(text)["allocations"][0]["host"] == 83  # octal, as YAML 1.1 reads it
    with pytest.raises(AnsibleFilterError, match=r"entry allocations\[0\] has host 83, not a non-empty string"):
        read_ledger(text)


def test_text_that_is_not_yaml_fails_naming_the_reason():
    with pytest.raises(AnsibleFilterError, match="roce_ipam_ledger: the ledger is not valid YAML"):
        read_ledger("version: 1\nallocations:\n  - {pool: rail0, host: [node1\n")
    with pytest.raises(AnsibleFilterError, match="must be given as text"):
        read_ledger({"version": 1})


@settings(max_examples=300, deadline=None)
@given(ledgers)
def test_property_any_written_ledger_reads_back_as_itself_or_is_refused_for_an_empty_value(ledger):
    text = ledger_module.render(ledger)
    if all(entry[key] for entry in ledger["allocations"] for key in entry):
        assert read_ledger(text) == ledger
    else:
        with pytest.raises(AnsibleFilterError, match=r"entry allocations\[\d+\] has \w+ '', not a non-empty string"):
            read_ledger(text)


@settings(max_examples=400, deadline=None)
@given(ledgers, st.data())
def test_property_a_text_read_line_by_line_is_what_yaml_reads(ledger, data):
    # Edit the written form at random: whenever the line reader still accepts the text, YAML reads
    # the very same data from it (and never fails on it).
    text = ledger_module.render(ledger)
    if data.draw(st.booleans()):  # unquote every value: '0123' becomes 0123, 'yes' yes
        text = text.replace("'", "")
    for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
        at = data.draw(st.integers(min_value=0, max_value=len(text)))
        cut = data.draw(st.integers(min_value=0, max_value=3))
        insert = data.draw(st.text(alphabet="ab1.:-_ '#,{}[]\n\t\"é\r", max_size=3))
        text = text[:at] + insert + text[at + cut :]
    read = ipam._read_written_form(text)
    if read is not None:
        assert yaml.safe_load(text) == read


bare_values = st.from_regex(r"[0-9a-fA-Fx_.:/+~-]{1,5}", fullmatch=True)
bare_entries = st.fixed_dictionaries({key: bare_values for key in ("pool", "host", "device", "ip")})


@settings(max_examples=300, deadline=None)
@given(st.lists(bare_entries, min_size=1, max_size=4))
def test_property_bare_values_are_read_as_yaml_reads_them(entries):
    # Numbers, times, nulls and the like, written bare: the line reader takes a value as a string
    # only where YAML does, and leaves the rest to YAML.
    text = ledger_module.render({"version": 1, "allocations": entries}).replace("'", "")
    read = ipam._read_written_form(text)
    if read is not None:
        assert yaml.safe_load(text) == read


plain_values = st.one_of(
    st.from_regex(r"[A-Za-z_/][A-Za-z0-9_./-]{0,6}|[0-9]{1,3}(\.[0-9]{1,3}){1,3}", fullmatch=True),
    st.sampled_from(["yes", "No", "null", "0123", "1.5", "1.2.3", "é", "a b", "-a"]),
)
plain_entries = st.fixed_dictionaries({key: plain_values for key in ("pool", "host", "device", "ip")})


@settings(max_examples=400, deadline=None)
@given(st.lists(plain_entries, min_size=1, max_size=6), st.booleans())
def test_property_a_ledger_of_plain_values_is_read_as_yaml_reads_it(entries, unquote):
    # The one findall of _PLAIN_ENTRIES takes the tokens as the values only where each is a string
    # to YAML; a YAML word or number, unquoted, sends the block to the token-by-token reader.
    text = ledger_module.render({"version": 1, "allocations": entries})
    if unquote:
        text = text.replace("'", "")
    read = ipam._read_written_form(text)
    if read is not None:
        assert yaml.safe_load(text) == read
    plain = all(
        ipam._PLAIN_STRING.match(value) and value not in ipam._YAML_WORDS
        for entry in entries
        for value in entry.values()
    )
    if plain:
        assert read == {"version": 1, "allocations": entries}
        assert len(ipam._PLAIN_ENTRIES.findall(text)) == len(entries)


# --- released addresses held back ---------------------------------------------------------------

DAY0 = "2026-01-10T12:00:00Z"


def day(offset_days, hour=12):
    return f"2026-01-{10 + offset_days:02d}T{hour:02d}:00:00Z"


def test_a_released_address_is_held_back_then_free_again():
    first = assign(None, RAILS, [req("node1"), req("node2")])
    released = assign(first["ledger"], RAILS, [req("node2")], release="node1", hold_days=7, now=DAY0)
    assert released["ledger"]["released"] == [
        {"pool": "rail0", "host": "node1", "device": "mlx5_0", "ip": "10.10.0.1", "released_at": DAY0}
    ]
    assert released["changed"] is True
    during = assign(released["ledger"], RAILS, [req("node2"), req("node3")], hold_days=7, now=day(6, 23))
    assert during["allocations"]["node3"]["mlx5_0"]["address"] == "10.10.0.3"  # not the held .1
    assert during["ledger"]["released"] == released["ledger"]["released"]
    after = assign(during["ledger"], RAILS, [req("node2"), req("node3"), req("node4")], hold_days=7, now=day(7))
    assert after["allocations"]["node4"]["mlx5_0"]["address"] == "10.10.0.1"  # the hold has passed
    assert "released" not in after["ledger"]


def test_without_a_clock_every_released_address_stays_held():
    ledger = {
        "version": 1,
        "allocations": [],
        "released": [{"pool": "rail0", "host": "old", "device": "d", "ip": "10.10.0.1", "released_at": DAY0}],
    }
    result = assign(ledger, RAILS, [req("node1")])
    assert result["allocations"]["node1"]["mlx5_0"]["address"] == "10.10.0.2"
    assert result["ledger"]["released"] == ledger["released"]
    fails("releasing with a hold needs the time", result["ledger"], RAILS, [], release="node1", hold_days=1)


def test_releasing_what_was_released_is_a_no_op_and_a_typo_fails():
    first = assign(None, RAILS, [req("node1")])
    released = assign(first["ledger"], RAILS, [], release="node1", hold_days=7, now=DAY0)
    again = assign(released["ledger"], RAILS, [], release="node1", hold_days=7, now=day(1))
    assert again["ledger"] == released["ledger"]
    assert again["changed"] is False
    fails(
        r"names what holds no address in the ledger: node2, node1/mlx5_9 \(a typo",
        first["ledger"],
        RAILS,
        [req("node1")],
        release="node2 node1/mlx5_9",
    )


def test_a_ledger_holding_an_address_both_allocated_and_released_is_refused():
    ledger = {
        "version": 1,
        "allocations": [{"pool": "rail0", "host": "a", "device": "d", "ip": "10.10.0.1"}],
        "released": [{"pool": "rail0", "host": "b", "device": "d", "ip": "10.10.0.1", "released_at": DAY0}],
    }
    fails(
        r"pool rail0: the ledger holds 10.10.0.1 both for a/d and as released by b/d",
        ledger,
        RAILS,
        [],
        now=DAY0,
        hold_days=7,
    )


def test_a_reservation_takes_its_address_even_while_it_is_held():
    first = assign(None, RAILS, [req("node1")])
    released = assign(first["ledger"], RAILS, [], release="node1", hold_days=7, now=DAY0)
    pools = copy.deepcopy(RAILS)
    pools[0]["reserved"] = [{"host": "node5", "device": "mlx5_0", "ip": "10.10.0.1"}]
    result = assign(released["ledger"], pools, [req("node5")], hold_days=7, now=day(1))
    assert result["allocations"]["node5"]["mlx5_0"]["address"] == "10.10.0.1"
    assert "released" not in result["ledger"]


@pytest.mark.parametrize(
    ("typed", "keys"),
    [
        ("", []),
        ("node9", [("node9", None)]),
        ("node9, node10/mlx5_3", [("node9", None), ("node10", "mlx5_3")]),
        ("node9\nnode10/mlx5_3\n\n", [("node9", None), ("node10", "mlx5_3")]),
        ("  node9 ,, node10  ", [("node9", None), ("node10", None)]),
        (
            ["node9", {"host": "node10", "device": "mlx5_3"}, {"host": "node11"}],
            [("node9", None), ("node10", "mlx5_3"), ("node11", None)],
        ),
    ],
)
def test_release_strings_as_a_survey_gives_them(typed, keys):
    assert ipam.parse_release(typed) == keys


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("node9;reboot", "the host name 'node9;reboot' is not one an inventory holds"),
        ("-node9", "the host name '-node9'"),
        ("node9/", "the device name '' is not 1 to 63"),
        ("node9/a/b", "the device name 'a/b'"),
        ("node9/" + "x" * 64, "the device name"),
        ([{"host": "node9", "devices": "x"}], r"roce_ipam_release\[0\]: .* is neither"),
        ([3], r"roce_ipam_release\[0\]: 3 is neither"),
        (42, "a int is neither host names nor a list"),
    ],
)
def test_release_strings_that_are_not_names_fail_naming_them(typed, reason):
    with pytest.raises(AnsibleFilterError, match=reason):
        ipam.parse_release(typed)


@settings(max_examples=80, deadline=None)
@given(hosts, st.data())
def test_property_held_addresses_are_never_handed_out_within_the_hold(host_names, data):
    """Release some hosts, then at any time within the hold add new hosts: none gets a held address,
    no address is held twice, and once the hold has passed the addresses are free again."""
    device_names = ["mlx5_0", "mlx5_1"]
    first = assign(None, PROPERTY_POOLS, requests_for(host_names, device_names))
    gone = data.draw(st.lists(st.sampled_from(host_names), unique=True, min_size=1))
    staying = [h for h in host_names if h not in gone]
    released = assign(
        first["ledger"], PROPERTY_POOLS, requests_for(staying, device_names), release=gone, hold_days=3, now=DAY0
    )
    held = {(e["pool"], e["ip"]) for e in released["ledger"]["released"]}
    assert held == {(e["pool"], e["ip"]) for e in first["ledger"]["allocations"] if e["host"] in gone}
    newcomers = [f"new{n}" for n in range(data.draw(st.integers(min_value=1, max_value=12)))]
    hours = data.draw(st.integers(min_value=0, max_value=3 * 24 - 1))
    now = (datetime(2026, 1, 10, 12, tzinfo=UTC) + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        later = assign(
            released["ledger"], PROPERTY_POOLS, requests_for(staying + newcomers, device_names), hold_days=3, now=now
        )
    except AnsibleFilterError as error:
        assert "is exhausted" in str(error)  # small pools: holding back may exhaust one, never reuse
        return
    assert_well_formed(later)
    taken = {(e["pool"], e["ip"]) for e in later["ledger"]["allocations"]}
    reserved_ip = {("mlx5_2", "fd00:2::7")} if "node7" in staying + newcomers else set()
    assert not (held - reserved_ip) & taken
    assert {(e["pool"], e["ip"]) for e in later["ledger"]["released"]} == held - (reserved_ip & taken)
    expired = assign(
        later["ledger"],
        PROPERTY_POOLS,
        requests_for(staying + newcomers, device_names),
        hold_days=3,
        now="2026-01-13T12:00:00Z",
    )
    assert "released" not in expired["ledger"]
    assert expired["ledger"]["allocations"] == later["ledger"]["allocations"]  # expiry moves nothing


def test_the_change_is_listed_as_lines():
    first = assign(None, RAILS, [req("node1"), req("node2")])
    assert first["taken"] == ["rail0 node1 mlx5_0 10.10.0.1", "rail0 node2 mlx5_0 10.10.0.2"]
    assert first["freed"] == []
    second = assign(first["ledger"], RAILS, [req("node3")], release="node1", hold_days=1, now=DAY0)
    assert second["taken"] == ["rail0 node3 mlx5_0 10.10.0.3"]
    assert second["freed"] == ["rail0 node1 mlx5_0 10.10.0.1"]
    back = assign(first["ledger"], RAILS, [req("node1"), req("node2")], release="node1")  # no hold: .1 again
    assert (back["taken"], back["freed"], back["changed"]) == ([], [], False)


def test_the_collector_is_paused_only_while_a_filter_runs():
    import gc  # noqa: PLC0415

    seen = []
    paused = ipam._collector_paused(lambda fail: seen.append(gc.isenabled()) or (fail and 1 / 0))
    assert gc.isenabled()
    paused(False)
    with pytest.raises(ZeroDivisionError):
        paused(True)
    assert gc.isenabled()  # restored, also after an error
    gc.disable()
    try:
        paused(False)
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()
    assert seen == [False, False, False]


# --- pod_range: the pods' side of a pool (whereabouts), never a host's (issue 16) ---------------

pod_networks = ipam.roce_ipam_pod_networks
PODS = {"name": "pods", "subnet": "10.50.0.0/24", "gateway": "10.50.0.254", "pod_range": "10.50.0.128/26"}


def refused(match, pools, ledger=None):
    """The same refusal from roce_ipam_assign and roce_ipam_pod_networks, each naming itself."""
    with pytest.raises(AnsibleFilterError, match=r"^roce_ipam_assign: .*" + match):
        assign(ledger, pools, [])
    with pytest.raises(AnsibleFilterError, match=r"^roce_ipam_pod_networks: .*" + match):
        pod_networks(pools, ledger)


def test_pod_networks_give_whereabouts_its_range_exclusions_gateway_and_subnet():
    pools = [
        {**PODS, "exclude": ["10.50.0.130", "10.50.0.136/29", "10.50.0.0/28", "10.50.0.188/30"]},
        {"name": "wide", "subnet": "10.60.0.0/16", "pod_range": "10.60.128.0/17", "exclude": ["10.60.0.0/16"]},
        {
            "name": "v6",
            "subnet": "fd00:1::/64",
            "pod_range": "fd00:1:0:0:0:0:1:0/112",  # spelt canonically in the answer
            "exclude": ["fd00:1::1:5"],
        },
        {"name": "hosts-only", "subnet": "10.70.0.0/24", "gateway": "10.70.0.1"},
    ]
    assert pod_networks(pools) == {
        "pods": {
            "range": "10.50.0.128/26",
            "exclude": ["10.50.0.130/32", "10.50.0.136/29", "10.50.0.188/30"],  # 10.50.0.0/28 lies outside
            "gateway": "10.50.0.254",
            "subnet": "10.50.0.0/24",
            "prefix": 24,
        },
        # An exclusion that holds the whole range is the range itself; no gateway, no key.
        "wide": {"range": "10.60.128.0/17", "exclude": ["10.60.128.0/17"], "subnet": "10.60.0.0/16", "prefix": 16},
        "v6": {
            "range": "fd00:1::1:0/112",
            "exclude": ["fd00:1::1:5/128"],
            "subnet": "fd00:1::/64",
            "prefix": 64,
        },
    }
    assert pod_networks([{"name": "p", "subnet": "10.0.0.0/24"}]) == {}
    assert pod_networks([{**PODS, "pod_range": "10.50.0.0/24", "gateway": None}])["pods"]["range"] == "10.50.0.0/24"


def test_hosts_never_take_an_address_in_the_pod_range():
    pools = [{"name": "p", "subnet": "10.0.0.0/28", "pod_range": "10.0.0.0/29", "exclude": ["10.0.0.4/30"]}]
    result = assign(None, pools, [req(f"n{i}", pool="p") for i in range(7)])
    assert sorted(addresses(result).values(), key=ipaddress.ip_address) == [f"10.0.0.{i}" for i in range(8, 15)]
    # The range counts as taken in the exhaustion message: 16 - 8 (pods) - broadcast = 7 free.
    fails(
        r"pool p \(10.0.0.0/28\) is exhausted: 8 new address\(es\) needed, 7 free",
        None,
        pools,
        [req(f"n{i}", pool="p") for i in range(8)],
    )


def test_aligned_offsets_skip_every_pool_s_pod_range():
    pools = [
        {"name": "rail0", "subnet": "10.0.0.0/24", "pod_range": "10.0.0.0/26"},
        {"name": "rail1", "subnet": "10.1.0.0/24", "pod_range": "10.1.0.64/26"},
    ]
    requests = [req(f"n{i:03}", f"mlx5_{r}", f"rail{r}") for i in range(3) for r in range(2)]
    result = assign(None, pools, requests, aligned=True)
    # Offsets 1..63 are rail0's pods', 64..127 rail1's: the first offset free on both is 128.
    assert [result["allocations"][f"n{i:03}"]["mlx5_1"]["address"] for i in range(3)] == [
        "10.1.0.128",
        "10.1.0.129",
        "10.1.0.130",
    ]
    assert {d["address"].rsplit(".", 1)[1] for d in result["allocations"]["n000"].values()} == {"128"}


def test_aligned_refuses_a_held_offset_that_a_new_pool_gives_its_pods():
    ledger = ledger_of(("rail0", "a", "m0", "10.0.0.5"))
    pools = [
        {"name": "rail0", "subnet": "10.0.0.0/24"},
        {"name": "rail1", "subnet": "10.1.0.0/24", "pod_range": "10.1.0.0/28"},
    ]
    fails(
        r"aligned: pool rail1: offset 5 of host a \(10.1.0.5\) is inside pod_range 10.1.0.0/28",
        ledger,
        pools,
        [req("a", "m0", "rail0"), req("a", "m1", "rail1")],
        aligned=True,
    )


@pytest.mark.parametrize(
    ("pod_range", "message"),
    [
        ("10.50.0.128", r"pool pods: pod_range '10.50.0.128' is not a CIDR \(address/prefix\)"),
        ("banana/26", r"pool pods: pod_range 'banana/26' is not a CIDR"),
        ("10.50.0.128/x", r"pool pods: pod_range '10.50.0.128/x' is not a CIDR"),
        (26, r"pool pods: pod_range 26 is not a CIDR"),
        ("10.50.0.130/26", r"pool pods: pod_range 10.50.0.130/26 has host bits set \(the network is 10.50.0.128/26\)"),
        ("10.50.0.0/33", r"pool pods: pod_range 10.50.0.0/33 has a prefix longer than IPv4's 32 bits"),
        ("fd00::/120", r"pool pods: pod_range fd00::/120 is IPv6, its subnet 10.50.0.0/24 IPv4"),
        ("10.50.1.0/26", r"pool pods: pod_range 10.50.1.0/26 is not inside the pool's subnet 10.50.0.0/24"),
        ("10.50.0.0/23", r"pool pods: pod_range 10.50.0.0/23 is not inside the pool's subnet 10.50.0.0/24"),
        ("10.50.0.192/26", r"pool pods: pod_range 10.50.0.192/26 contains the gateway 10.50.0.254"),
    ],
)
def test_a_pod_range_that_is_not_a_cidr_inside_the_subnet_clear_of_the_gateway_is_refused(pod_range, message):
    refused(message, [{**PODS, "pod_range": pod_range}])


def test_an_ipv6_pod_range_is_checked_the_same_way():
    pool = {"name": "v6", "subnet": "fd00:1::/64", "gateway": "fd00:1::1:1"}
    refused(
        r"pool v6: pod_range 10.0.0.0/8 is IPv4, its subnet fd00:1::/64 IPv6", [{**pool, "pod_range": "10.0.0.0/8"}]
    )
    refused(r"pod_range fd00:1::1:0/112 contains the gateway fd00:1::1:1", [{**pool, "pod_range": "fd00:1::1:0/112"}])
    refused(
        r"pod_range fd00:1::1/112 has host bits set \(the network is fd00:1::/112\)",
        [{**pool, "pod_range": "fd00:1::1/112"}],
    )


def test_a_pod_range_holding_reserved_addresses_is_refused_naming_them_all():
    reserved = [
        {"host": "node9", "device": "mlx5_0", "ip": "10.50.0.140"},
        {"host": "node1", "device": "mlx5_0", "ip": "10.50.0.3"},
        {"host": "node2", "device": "mlx5_1", "ip": "10.50.0.129"},
    ]
    refused(
        r"pool pods: pod_range 10.50.0.128/26 contains reserved address\(es\) of hosts: "
        r"10.50.0.129 \(node2/mlx5_1\), 10.50.0.140 \(node9/mlx5_0\); whereabouts would hand them to pods",
        [{**PODS, "reserved": reserved}],
    )


def test_pod_ranges_of_two_pools_never_meet():
    # A pod range lies in its own subnet, and subnets never overlap: the same range twice, or a
    # range in a neighbour's subnet, is refused either way.
    rail = {"name": "rail", "subnet": "10.50.1.0/24", "pod_range": "10.50.1.0/26"}
    refused(
        r"pool pods: pod_range 10.50.1.0/26 is not inside the pool's subnet 10.50.0.0/24",
        [{**PODS, "pod_range": "10.50.1.0/26"}, rail],
    )
    refused(
        r"pools pods \(10.50.0.0/24\) and wide \(10.50.0.0/16\) overlap",
        [PODS, {"name": "wide", "subnet": "10.50.0.0/16", "pod_range": "10.50.0.128/26"}],
    )


def test_a_ledger_address_in_a_newly_declared_pod_range_stops_the_run_and_never_moves():
    before = [{**PODS, "pod_range": None}]  # null: no range
    first = assign(None, before, [req(f"node{i}", pool="pods") for i in range(1, 4)])
    assert addresses(first) == {(f"node{i}", "mlx5_0"): f"10.50.0.{i}" for i in range(1, 4)}
    assert pod_networks(before, first["ledger"]) == {}
    # Declared over node2's and node3's addresses: the run stops, naming pool, range and both.
    message = (
        r"pool pods: the ledger holds addresses that are now inside pod_range 10.50.0.2/31, which whereabouts hands "
        r"to pods: node2/mlx5_0 10.50.0.2, node3/mlx5_0 10.50.0.3 \(an address held never moves: release these "
        r"hosts, or declare a pod_range clear of them\)"
    )
    pools = [{**PODS, "pod_range": "10.50.0.2/31"}]
    snapshot = copy.deepcopy(first["ledger"])
    refused(message, pools, first["ledger"])
    with pytest.raises(AnsibleFilterError, match=message):
        assign(first["ledger"], pools, [req(f"node{i}", pool="pods") for i in range(1, 5)], aligned=True)
    # The ledger's text, as the file holds it, is checked the same way.
    text = ledger_module.render(first["ledger"])
    with pytest.raises(AnsibleFilterError, match=r"^roce_ipam_pod_networks: " + message):
        pod_networks(pools, text)
    assert first["ledger"] == snapshot
    # A range clear of them is accepted, and new hosts go around it.
    clear = [{**PODS, "pod_range": "10.50.0.4/30"}]
    assert pod_networks(clear, text)["pods"]["range"] == "10.50.0.4/30"
    grown = assign(first["ledger"], clear, [req(f"node{i}", pool="pods") for i in range(1, 5)])
    assert addresses(grown)[("node4", "mlx5_0")] == "10.50.0.8"


def test_an_address_held_back_after_its_release_keeps_a_pod_range_off_until_the_hold_passed():
    first = assign(None, [{**PODS, "pod_range": None}], [req("node1", pool="pods"), req("node2", pool="pods")])
    released = assign(first["ledger"], [{**PODS, "pod_range": None}], [], release="node2", hold_days=7, now=day(0))
    pools = [{**PODS, "pod_range": "10.50.0.0/30"}]
    message = (
        r"pool pods: pod_range 10.50.0.0/30 contains address\(es\) the ledger holds back after their release: "
        r"10.50.0.2 \(node2/mlx5_0, released at 2026-01-10T12:00:00Z\), 10.50.0.1 \(node1/mlx5_0, released at "
        r"2026-01-11T12:00:00Z\); declare the pod_range once roce_ipam_release_hold has passed"
    )
    # Both hosts released, their addresses held back for 7 days: no pod may take them before.
    both = assign(released["ledger"], [{**PODS, "pod_range": None}], [], release="node1", hold_days=7, now=day(1))
    with pytest.raises(AnsibleFilterError, match=r"^roce_ipam_assign: .*" + message):
        assign(both["ledger"], pools, [], hold_days=7, now=day(2))
    with pytest.raises(AnsibleFilterError, match=r"^roce_ipam_pod_networks: .*" + message):
        pod_networks(pools, both["ledger"])
    later = assign(both["ledger"], pools, [req("node3", pool="pods")], hold_days=7, now=day(9))
    assert "released" not in later["ledger"]
    assert addresses(later) == {("node3", "mlx5_0"): "10.50.0.4"}
    assert pod_networks(pools, later["ledger"])["pods"]["range"] == "10.50.0.0/30"


def test_exclusions_may_meet_the_pod_range():
    pools = [{**PODS, "exclude": ["10.50.0.128/25"]}]  # also over the gateway: excluded for everyone
    assert pod_networks(pools)["pods"]["exclude"] == ["10.50.0.128/26"]
    assert assign(None, pools, [req("a", pool="pods")])["allocations"]["a"]["mlx5_0"]["address"] == "10.50.0.1"


# The property: for any pools (IPv4 or IPv6 subnets that never overlap, optional gateway,
# reservations, exclusions, a pod range or none) and any hosts, in two rounds, plain or aligned,
# no address the host ledger hands out, reserves or routes through lies in any pool's pod range,
# and roce_ipam_pod_networks's ranges meet neither each other nor any of those.


@st.composite
def pod_pools(draw):
    pools = []
    for index in range(draw(st.integers(1, 3))):
        version = draw(st.sampled_from([4, 6]))
        prefix = draw(st.integers(24, 28) if version == 4 else st.integers(120, 124))
        network = ipaddress.ip_network(f"10.{index}.0.0/{prefix}" if version == 4 else f"fd00:{index}::/{prefix}")
        every = list(network)
        pool = {"name": f"pool{index}", "subnet": str(network)}
        pod = None
        if draw(st.integers(0, 3)):  # mostly a pod range
            # Mostly part of the subnet, now and then all of it (the hosts then get nothing).
            whole = draw(st.integers(0, 9)) == 0
            pod_prefix = network.prefixlen if whole else draw(st.integers(network.prefixlen + 1, network.max_prefixlen))
            pod = draw(st.sampled_from(list(network.subnets(new_prefix=pod_prefix))))
            pool["pod_range"] = str(pod)
        outside = [a for a in every if pod is None or a not in pod]
        if outside and draw(st.booleans()):
            pool["gateway"] = str(draw(st.sampled_from(outside)))
        if draw(st.booleans()):  # an eighth of the subnet or less each, meeting the pods' range or not
            sizes = st.integers(prefix + 3, network.max_prefixlen)
            pool["exclude"] = [
                str(draw(st.sampled_from(list(network.subnets(new_prefix=draw(sizes))))))
                for _ in range(draw(st.integers(1, 2)))
            ]
        excluded = [ipaddress.ip_network(x) for x in pool.get("exclude", [])]
        usable = [
            a
            for a in outside
            if a != network.network_address
            and (version == 6 or a != network.broadcast_address)
            and str(a) != pool.get("gateway")
            and not any(a in x for x in excluded)
        ]
        chosen = draw(st.lists(st.sampled_from(usable), max_size=2, unique=True)) if usable else []
        if chosen:
            pool["reserved"] = [
                {"host": f"r{index}-{n}", "device": "mlx5_0", "ip": str(a)} for n, a in enumerate(chosen)
            ]
        pools.append(pool)
    return pools


def assert_clear_of_pods(pools, result):
    networks = pod_networks(pools, result["ledger"])
    ranges = [ipaddress.ip_network(n["range"]) for n in networks.values()]
    assert {name for name, pool in ((p["name"], p) for p in pools) if "pod_range" in pool} == networks.keys()
    for one, other in itertools.combinations(ranges, 2):
        assert not one.overlaps(other)
    used = [ipaddress.ip_address(entry["ip"]) for entry in result["ledger"]["allocations"]]
    used += [ipaddress.ip_address(entry["ip"]) for entry in result["ledger"].get("released", [])]
    used += [ipaddress.ip_address(d["address"]) for devices in result["allocations"].values() for d in devices.values()]
    for pool in pools:
        used += [ipaddress.ip_address(r["ip"]) for r in pool.get("reserved", [])]
        used += [ipaddress.ip_address(pool["gateway"])] if "gateway" in pool else []
    for address in used:
        assert not any(address in pod for pod in ranges), (address, ranges)


@settings(max_examples=200, deadline=None)
@given(
    pod_pools(),
    st.lists(st.sampled_from([f"node{n}" for n in range(1, 13)]), min_size=1, max_size=8, unique=True),
    st.integers(0, 6),
    st.booleans(),
    st.data(),
)
def test_property_hosts_and_pods_never_share_an_address(pools, host_names, later, aligned, data):
    names = [pool["name"] for pool in pools]
    pool_of = {}  # (host, device) -> pool, drawn once

    def wanted(host_list):
        # Aligned: one device per pool; else two devices, each from any pool.
        if aligned:
            return [req(h, f"mlx5_{n}", name) for h in host_list for n, name in enumerate(names)]
        for key in itertools.product(host_list, ("mlx5_0", "mlx5_1")):
            if key not in pool_of:
                pool_of[key] = data.draw(st.sampled_from(names))
        return [req(h, d, pool_of[(h, d)]) for h in host_list for d in ("mlx5_0", "mlx5_1")]

    reserved_keys = [req(r["host"], r["device"], p["name"]) for p in pools for r in p.get("reserved", [])]
    first_hosts, more = host_names, [f"late{n}" for n in range(later)]
    try:
        first = assign(None, pools, wanted(first_hosts) + ([] if aligned else reserved_keys), aligned=aligned)
    except AnsibleFilterError as error:
        assert "is exhausted" in str(error), str(error)
        event("a pool exhausted by the first hosts")
        return
    assert_clear_of_pods(pools, first)
    try:
        release = data.draw(st.lists(st.sampled_from(first_hosts), unique=True, max_size=3))
        second = assign(
            first["ledger"],
            pools,
            wanted(first_hosts + more),
            release=[{"host": h} for h in release] or None,
            aligned=aligned,
            hold_days=1,
            now=day(0),
        )
    except AnsibleFilterError as error:
        assert "is exhausted" in str(error), str(error)  # small pools: the only refusal a valid plan may meet
        event("a pool exhausted by the later hosts")
        return
    assert_clear_of_pods(pools, second)
    event(f"allocated, {'aligned' if aligned else 'plain'}, {len(pod_networks(pools))} pod range(s)")
