# Copyright: contributors to hpc-datapath
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""roce_ipam_assign: cluster-wide RoCE addresses that never move and are never handed out twice.

A pure function of (ledger, pools, requests, release): the ledger records every address handed
out, keyed by (pool, host, device). Addresses in it never move; new keys take the lowest free
address of their pool in natural order of host, then device. Self-contained on purpose: Ansible skips a
filter file that imports the project's shared module code, and its filters vanish.

Addresses are handled as integers. Free space is searched with sorted blocked intervals (network
and broadcast addresses, gateway, exclusions, the pods' range, outside the range) plus a "next
free" map with path compression for taken addresses, so a /64 with half of it excluded answers at
once and 80,000 allocations stay linear.

A pool's pod_range is the CIDR that Kubernetes' whereabouts hands SR-IOV pods their addresses
from (roce_ipam_pod_networks gives it to the k8s_fabric role): the host ledger never takes an
address in it, and the range holds no gateway, reservation or address the ledger holds.
"""

from __future__ import annotations

import gc
import re
import socket
from bisect import bisect_left, bisect_right
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from functools import lru_cache, wraps
from itertools import accumulate, chain, compress, pairwise, repeat
from operator import add, itemgetter

import netaddr
import yaml
from ansible.errors import AnsibleFilterError
from ansible.vars.plugins import get_vars_from_inventory_sources, get_vars_from_path

LEDGER_VERSION = 1
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # released_at, UTC
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_WIDTH = {4: 4, 6: 16}


def _collector_paused(function):
    """Run the function with Python's cyclic garbage collector paused (as it was, afterwards).

    The ledger's 80,000 entries make hundreds of thousands of containers that live until the
    function returns, and no reference cycle: each full collection would walk them all again
    (80,000 allocations, +1 host: a quarter of the time). Memory is still freed by reference
    counting; a cycle made meanwhile is collected once the collector runs again.
    """

    @wraps(function)
    def paused(*args, **kwargs):
        if not gc.isenabled():
            return function(*args, **kwargs)
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            gc.enable()

    return paused


def _fail(message, plugin="roce_ipam_assign"):
    raise AnsibleFilterError(f"{plugin}: {message}")


@lru_cache(maxsize=1 << 16)
def natural_key(text):
    """'node2' before 'node10': digit runs compare as numbers."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)), text


def format_address(value, version):
    """Canonical text of an address: dotted quad, or RFC 5952 compressed IPv6."""
    return socket.inet_ntop(_FAMILY[version], value.to_bytes(_WIDTH[version], "big"))


def parse_address(text, version):
    """The integer of an IPv<version> address in any valid spelling, or None when it is not one."""
    try:
        return int.from_bytes(socket.inet_pton(_FAMILY[version], text), "big")
    except (OSError, TypeError):
        return None


def _merge(intervals):
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


class Pool:
    """One pool's address space: what may be handed out, and what is already taken."""

    def __init__(self, spec, index):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            _fail(f"pools[{index}] needs a non-empty string 'name'")
        self.name = spec["name"]
        try:
            network = netaddr.IPNetwork(str(spec.get("subnet")))
        except (netaddr.AddrFormatError, ValueError, TypeError):
            _fail(f"pool {self.name}: subnet {spec.get('subnet')!r} is not a CIDR")
        if network.ip != network.network:
            _fail(f"pool {self.name}: subnet {spec['subnet']} has host bits set (network is {network.cidr})")
        self.network = network
        self.version = network.version
        self.prefix = network.prefixlen
        self.first = int(network.first)
        self.last = int(network.last)
        self.gateway = self._address_in_subnet(spec.get("gateway"), "gateway")
        self.gateway_text = format_address(self.gateway, self.version) if self.gateway is not None else None
        start = self._address_in_subnet(spec.get("range_start"), "range_start")
        end = self._address_in_subnet(spec.get("range_end"), "range_end")
        self.low = self.first if start is None else start
        self.high = self.last if end is None else end
        if self.low > self.high:
            _fail(f"pool {self.name}: range_start {spec['range_start']} is above range_end {spec['range_end']}")
        # The pods' range (whereabouts): (first, last) or None. Set only once the reservations are
        # checked against it below, so that unusable_reason names it for ledger entries only.
        self.pod = None
        pod = self._pod_range(spec.get("pod_range"))

        # Addresses that are never handed out by search.
        self._exclude_networks = []  # (first, last, prefix) of each exclude entry, for the pods' exclude list
        self.excluded = _merge(self._exclusions(spec.get("exclude") or []))
        blocked = [list(interval) for interval in self.excluded]
        if pod is not None:
            blocked.append(list(pod))
        span = self.last - self.first
        if self.version == 4 and span > 1:  # /31 and /32 have no network or broadcast address
            blocked += [[self.first, self.first], [self.last, self.last]]
        if self.version == 6 and span > 1:  # subnet-router anycast (RFC 4291); not in /127, /128
            blocked.append([self.first, self.first])
        if self.gateway is not None:
            blocked.append([self.gateway, self.gateway])
        self.reserved = {}  # (host, device) -> address
        self.reserved_by_address = {}  # address -> (host, device)
        for position, reservation in enumerate(spec.get("reserved") or []):
            self._add_reservation(reservation, position)
        self.pod = self._pod_clear_of_reservations(pod)
        blocked += [[address, address] for address in self.reserved_by_address]
        merged = _merge(blocked)
        self._starts = [interval[0] for interval in merged]
        self._ends = [interval[1] for interval in merged]
        self._next = {}  # taken address -> a candidate above it (path-compressed)

    def _address_in_subnet(self, text, field):
        if text is None:
            return None
        parsed = parse_address(text, self.version)
        if parsed is None:
            _fail(f"pool {self.name}: {field} {text!r} is not an IPv{self.version} address")
        if not self.first <= parsed <= self.last:
            _fail(f"pool {self.name}: {field} {text} is outside subnet {self.network.cidr}")
        return parsed

    def _pod_range(self, text):
        """(first, last) of pod_range, a CIDR inside the subnet spelt address/prefix, or None.

        Sets pod_text, its canonical spelling, and pod_prefix."""
        self.pod_text = self.pod_prefix = None
        if text is None:
            return None
        address_text, slash, prefix_text = text.partition("/") if isinstance(text, str) else ("", "", "")
        width = 32 if self.version == 4 else 128
        address = parse_address(address_text, self.version)
        if address is None:
            other = 6 if self.version == 4 else 4
            if slash and parse_address(address_text, other) is not None:
                _fail(
                    f"pool {self.name}: pod_range {text} is IPv{other}, its subnet {self.network.cidr} "
                    f"IPv{self.version}"
                )
        if address is None or not slash or not prefix_text.isascii() or not prefix_text.isdigit():
            _fail(f"pool {self.name}: pod_range {text!r} is not a CIDR (address/prefix)")
        if int(prefix_text) > width:
            _fail(f"pool {self.name}: pod_range {text} has a prefix longer than IPv{self.version}'s {width} bits")
        prefix = int(prefix_text)
        size = 1 << (width - prefix)
        first = address & ~(size - 1)
        canonical = f"{format_address(first, self.version)}/{prefix}"
        if address != first:
            _fail(
                f"pool {self.name}: pod_range {text} has host bits set (the network is {canonical}); "
                "whereabouts takes the range as a CIDR"
            )
        last = first + size - 1
        if not (self.first <= first and last <= self.last):
            _fail(f"pool {self.name}: pod_range {text} is not inside the pool's subnet {self.network.cidr}")
        self.pod_text, self.pod_prefix = canonical, prefix
        if self.gateway is not None and first <= self.gateway <= last:
            _fail(
                f"pool {self.name}: pod_range {canonical} contains the gateway {self.gateway_text}, "
                "which whereabouts would hand to a pod"
            )
        return first, last

    def _pod_clear_of_reservations(self, pod):
        """The pods' range, once no reservation lies in it (else fail naming every one)."""
        if pod is None:
            return None
        inside = sorted(address for address in self.reserved_by_address if pod[0] <= address <= pod[1])
        if inside:
            _fail(
                f"pool {self.name}: pod_range {self.pod_text} contains reserved address(es) of hosts: "
                + ", ".join(
                    f"{format_address(address, self.version)} ({'/'.join(self.reserved_by_address[address])})"
                    for address in inside
                )
                + "; whereabouts would hand them to pods"
            )
        return pod

    def in_pod(self, address):
        return self.pod is not None and self.pod[0] <= address <= self.pod[1]

    def pod_exclusions(self):
        """The exclude entries that meet the pods' range, as CIDRs clipped to it (addresses as /32,
        /128): the exclude list whereabouts takes. Two CIDRs that meet hold one another, so the
        part of an entry inside the range is the smaller of the two."""
        first, last = self.pod
        kept = set()
        for start, end, prefix in self._exclude_networks:
            if start <= last and first <= end:
                kept.add((start, prefix) if first <= start and end <= last else (first, self.pod_prefix))
        return [f"{format_address(start, self.version)}/{prefix}" for start, prefix in sorted(kept)]

    def _exclusions(self, items):
        if not isinstance(items, list):
            _fail(f"pool {self.name}: exclude must be a list of addresses or CIDRs")
        for item in items:
            try:
                excluded = netaddr.IPNetwork(str(item))
            except (netaddr.AddrFormatError, ValueError, TypeError):
                _fail(f"pool {self.name}: exclude entry {item!r} is neither an address nor a CIDR")
            if excluded.version != self.version:
                _fail(f"pool {self.name}: exclude entry {item} is not IPv{self.version}")
            self._exclude_networks.append((int(excluded.first), int(excluded.last), excluded.prefixlen))
            start, end = max(int(excluded.first), self.first), min(int(excluded.last), self.last)
            if start <= end:
                yield (start, end)

    def is_excluded(self, address):
        index = bisect_right(self.excluded, [address, float("inf")]) - 1
        return index >= 0 and self.excluded[index][1] >= address

    def maybe_unusable(self, address):
        """Cheap pre-check for unusable_reason: False for the common, plainly usable address."""
        return not self.first < address < self.last or self._blocked(address)

    def unusable_reason(self, address):
        """Why an address may not be held at all in this pool, or None."""
        reason = None
        if not self.first <= address <= self.last:
            reason = f"outside subnet {self.network.cidr}"
        elif self.is_excluded(address):
            reason = "excluded"
        elif address == self.gateway:
            reason = "the gateway"
        elif self.last - self.first > 1 and address == self.first:
            reason = "the network address"
        elif self.version == 4 and self.last - self.first > 1 and address == self.last:
            reason = "the broadcast address"
        elif self.in_pod(address):
            reason = f"inside pod_range {self.pod_text}, which whereabouts hands to pods"
        return reason

    def _add_reservation(self, reservation, position):
        if not isinstance(reservation, dict) or not {"host", "device", "ip"} <= reservation.keys():
            _fail(f"pool {self.name}: reserved[{position}] needs host, device and ip")
        key = (str(reservation["host"]), str(reservation["device"]))
        address = parse_address(reservation["ip"], self.version)
        if address is None:
            _fail(f"pool {self.name}: reservation {reservation['ip']!r} for {key[0]}/{key[1]} is not an address")
        reason = self.unusable_reason(address)
        if reason:
            _fail(f"pool {self.name}: reservation {reservation['ip']} for host {key[0]} device {key[1]} is {reason}")
        if address in self.reserved_by_address and self.reserved_by_address[address] != key:
            other = self.reserved_by_address[address]
            _fail(
                f"pool {self.name}: {reservation['ip']} is reserved for both "
                f"{other[0]}/{other[1]} and {key[0]}/{key[1]}"
            )
        if key in self.reserved and self.reserved[key] != address:
            _fail(f"pool {self.name}: host {key[0]} device {key[1]} has two reservations")
        self.reserved[key] = address
        self.reserved_by_address[address] = key

    def overlaps(self, other):
        return self.version == other.version and self.first <= other.last and other.first <= self.last

    def take(self, address):
        self._next[address] = address + 1

    def is_free(self, address):
        return address == self.next_free(address)

    def next_free(self, address):
        """The lowest address >= the given one that search may hand out, or None."""
        candidate = max(address, self.low)
        while candidate <= self.high:
            # Skip taken addresses, compressing the path behind us.
            root = candidate
            while root in self._next:
                root = self._next[root]
            while candidate in self._next and self._next[candidate] != root:
                self._next[candidate], candidate = root, self._next[candidate]
            candidate = root
            index = bisect_right(self._starts, candidate) - 1
            if index >= 0 and self._ends[index] >= candidate:
                candidate = self._ends[index] + 1
                continue
            return candidate if candidate <= self.high else None
        return None

    def free_count(self):
        """Addresses search could still hand out (for the exhaustion message)."""
        total = self.high - self.low + 1
        for start, end in zip(self._starts, self._ends, strict=True):
            total -= max(0, min(end, self.high) - max(start, self.low) + 1)
        taken = (address for address in self._next if self.low <= address <= self.high)
        return total - sum(1 for address in taken if not self._blocked(address))

    def _blocked(self, address):
        index = bisect_right(self._starts, address) - 1
        return index >= 0 and self._ends[index] >= address


def _load_pools(pools):
    if not isinstance(pools, list) or not pools:
        _fail("pools must be a non-empty list of {name, subnet, ...}")
    loaded = {}
    for index, spec in enumerate(pools):
        pool = Pool(spec, index)
        if pool.name in loaded:
            _fail(f"pool {pool.name} is defined twice")
        loaded[pool.name] = pool
    ordered = sorted(loaded.values(), key=lambda p: (p.version, p.first))
    for before, after in pairwise(ordered):
        if before.overlaps(after):
            _fail(f"pools {before.name} ({before.network.cidr}) and {after.name} ({after.network.cidr}) overlap")
    return loaded


def _ledger_address(pool, host, device, text):
    """The integer address of a ledger entry, which must be spelt canonically."""
    try:
        packed = socket.inet_pton(_FAMILY[pool.version], text)
    except (OSError, TypeError):
        _fail(f"pool {pool.name}: ledger address {text!r} of host {host} device {device} is not IPv{pool.version}")
    canonical = socket.inet_ntop(_FAMILY[pool.version], packed)
    if canonical != text:
        _fail(f"pool {pool.name}: ledger address {text} of host {host} is not canonical (write {canonical})")
    return int.from_bytes(packed, "big")


def _load_ledger(ledger, pools):
    """({(pool, host, device): address}, {key: its text}) from a ledger, refusing anything inconsistent."""
    if ledger is None:
        return {}, {}
    if type(ledger) is not _CheckedLedger:
        ledger = check_ledger(ledger)
    entries = ledger["allocations"]
    loaded = _load_columns(entries, pools)
    return loaded if loaded is not None else _load_entries(entries, pools)


def _load_columns(entries, pools):
    """What _load_entries returns, checked a column at a time; None when a check fails or the
    entries are not grouped by pool, for _load_entries to check entry by entry and say why.

    The ledger as written (80,000 entries: about half the time). The same checks, each over a
    whole column in C: every pool exists and holds one run of entries; no (host, device) twice,
    in one pool or two; every address is its pool's version, spelt canonically (parsed and spelt
    again, compared as lists), strictly between the network and last address, and neither
    excluded, the gateway nor in the pods' range (bisected among the sorted addresses); no address
    twice in a pool.
    """
    if not entries:
        return {}, {}
    names, hosts, devices, ips = (list(map(itemgetter(field), entries)) for field in ALLOCATION_FIELDS)
    count = len(entries)
    if len(set(zip(hosts, devices, strict=True))) != count:
        return None
    runs = []
    for name in set(names):
        pool = pools.get(name)
        if pool is None:
            return None
        start, size = names.index(name), names.count(name)
        if names[start : start + size].count(name) != size:  # not one run
            return None
        runs.append((start, size, pool))
    runs.sort(key=itemgetter(0))
    addresses = []
    for start, size, pool in runs:
        numbers = _run_addresses(pool, ips[start : start + size])
        if numbers is None:
            return None
        addresses += numbers
    keys = list(zip(names, hosts, devices, strict=True))
    return dict(zip(keys, addresses, strict=True)), dict(zip(keys, ips, strict=True))


def _run_addresses(pool, texts):
    """The integers of one pool's run of ledger addresses, or None when one is not canonical, not
    usable in the pool, or there twice."""
    size, family = len(texts), _FAMILY[pool.version]
    try:
        packed = list(map(socket.inet_pton, repeat(family, size), texts))
    except (OSError, TypeError):
        return None
    if list(map(socket.inet_ntop, repeat(family, size), packed)) != texts:
        return None
    numbers = list(map(int.from_bytes, packed, repeat("big", size)))
    ordered = sorted(numbers)
    if not pool.first < ordered[0] or not ordered[-1] < pool.last or len(set(ordered)) != size:
        return None
    gateway = [[pool.gateway, pool.gateway]] if pool.gateway is not None else []
    pod = [pool.pod] if pool.pod is not None else []
    for low, high in [*pool.excluded, *gateway, *pod]:
        at = bisect_left(ordered, low)
        if at < size and ordered[at] <= high:
            return None
    return numbers


def _load_entries(entries, pools):
    """_load_ledger entry by entry: any ledger, and the message naming what is wrong."""
    held, texts = {}, {}
    holder_of = {}  # (pool, address) -> (host, device)
    pool_of_key = {}  # (host, device) -> pool
    problems = defaultdict(list)  # (pool, what is wrong) -> the entries concerned
    # The checks of _ledger_address and Pool.maybe_unusable inlined.
    pton, ntop, from_bytes = socket.inet_pton, socket.inet_ntop, int.from_bytes
    facts = {name: (pool, _FAMILY[pool.version], pool.first, pool.last, pool._blocked) for name, pool in pools.items()}
    for entry in entries:
        pool_name, host, device, text = entry["pool"], entry["host"], entry["device"], entry["ip"]
        known = facts.get(pool_name)
        if known is None:
            problems[(pool_name, "names a pool that no longer exists")].append(f"{host}/{device}")
            continue
        pool, family, first, last, blocked = known
        try:
            packed = pton(family, text)
        except OSError:
            packed = None
        if packed is None or ntop(family, packed) != text:
            _ledger_address(pool, host, device, text)  # fails naming what is wrong
        address = from_bytes(packed, "big")
        if not first < address < last or blocked(address):
            reason = pool.unusable_reason(address)
            if reason:
                problems[(pool_name, f"holds addresses that are now {reason}")].append(f"{host}/{device} {text}")
                continue
        key = (host, device)
        other = holder_of.setdefault((pool_name, address), key)
        if other is not key:
            _fail(f"pool {pool_name}: ledger hands {text} to both {other[0]}/{other[1]} and {host}/{device}")
        other_pool = pool_of_key.setdefault(key, pool_name)
        if other_pool != pool_name:
            _fail(
                f"the ledger holds two addresses for host {host} device {device} (pools {other_pool} and {pool_name})"
            )
        if (pool_name, host, device) in held:  # the same key twice (pool_of_key took the first)
            _fail(
                f"pool {pool_name}: the ledger holds two addresses for host {host} device {device} "
                f"({texts[(pool_name, host, device)]} and {text})"
            )
        held[(pool_name, host, device)] = address
        texts[(pool_name, host, device)] = text
    if problems:
        advice = "release these hosts or restore the pool"
        if any("pod_range" in kind for _, kind in problems):
            advice = "an address held never moves: release these hosts, or declare a pod_range clear of them"
        _fail(
            "; ".join(
                f"pool {pool_name}: the ledger {kind}: {', '.join(sorted(items, key=natural_key))}"
                for (pool_name, kind), items in sorted(problems.items())
            )
            + f" ({advice})"
        )
    return held, texts


def _check_pods_clear_of_released(pools, entries):
    """Fail when a pool's pod_range holds an address the ledger holds back after its release:
    stale ARP caches and configurations still point at it, so no pod may take it yet."""
    inside = defaultdict(list)
    for entry in entries:
        pool = pools.get(entry["pool"])
        if pool is None or pool.pod is None:
            continue
        if pool.in_pod(_ledger_address(pool, entry["host"], entry["device"], entry["ip"])):
            inside[pool.name].append(
                f"{entry['ip']} ({entry['host']}/{entry['device']}, released at {entry['released_at']})"
            )
    if inside:
        _fail(
            "; ".join(
                f"pool {name}: pod_range {pools[name].pod_text} contains address(es) the ledger holds back "
                f"after their release: {', '.join(items)}"
                for name, items in sorted(inside.items())
            )
            + "; declare the pod_range once roce_ipam_release_hold has passed"
        )


def _load_requests(requests, pools):
    """{(host, device): pool} of the requests, refusing a key asked of two pools or an unknown pool."""
    if not isinstance(requests, list):
        _fail("requests must be a list of {host, device, pool}")
    try:  # a column at a time; any doubt is left to the loop below, which names the request
        hosts, devices, names = (list(map(str, map(itemgetter(key), requests))) for key in ("host", "device", "pool"))
    except (KeyError, TypeError, IndexError):
        pass
    else:
        wanted = dict(zip(zip(hosts, devices, strict=True), names, strict=True))
        if len(wanted) == len(requests) and pools.keys() >= set(names):
            return wanted
    wanted = {}
    unknown = defaultdict(set)
    for position, request in enumerate(requests):
        try:
            host, device, pool_name = str(request["host"]), str(request["device"]), str(request["pool"])
        except (KeyError, TypeError):
            _fail(f"requests[{position}] needs host, device and pool")
        if pool_name not in pools:
            unknown[pool_name].add(host)
            continue
        if wanted.get((host, device), pool_name) != pool_name:
            _fail(f"host {host} device {device} is requested from two pools, {wanted[(host, device)]} and {pool_name}")
        wanted[(host, device)] = pool_name
    if unknown:
        _fail(
            "; ".join(
                f"unknown pool {name} requested by {', '.join(sorted(hosts, key=natural_key))}"
                for name, hosts in sorted(unknown.items())
            )
        )
    return wanted


# A release typed as text (an AWX survey): "node9, node10/mlx5_3" or one a line. Host names as
# Ansible's inventory takes them without ranges; device names as the kernel takes them.
_RELEASE_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*\Z")
_RELEASE_DEVICE = re.compile(r"[A-Za-z0-9_.-]{1,63}\Z")
_RELEASE_SEPARATORS = re.compile(r"[\s,]+")


def parse_release(release):
    """[(host, device or None)] from roce_ipam_release: a list of {host[, device]} or of 'host[/device]'
    strings, or one string of such names separated by commas, spaces or new lines."""
    if release is None or release == "":
        return []
    if isinstance(release, str):
        items = [token for token in _RELEASE_SEPARATORS.split(release) if token]
    elif isinstance(release, list):
        items = release
    else:
        _fail(f"roce_ipam_release: a {type(release).__name__} is neither host names nor a list of {{host, device}}")
    keys = []
    for position, item in enumerate(items):
        if isinstance(item, str):
            host, _, device = item.partition("/")
            device = device if "/" in item else None
        elif isinstance(item, dict) and "host" in item and set(item) <= {"host", "device"}:
            host, device = item["host"], item.get("device")
        else:
            _fail(f"roce_ipam_release[{position}]: {item!r} is neither 'host', 'host/device' nor {{host, device}}")
        if not isinstance(host, str) or not _RELEASE_HOST.match(host):
            _fail(f"roce_ipam_release: {item!r}: the host name {host!r} is not one an inventory holds")
        if device is not None and (not isinstance(device, str) or not _RELEASE_DEVICE.match(device)):
            _fail(f"roce_ipam_release: {item!r}: the device name {device!r} is not 1 to 63 of A-Z a-z 0-9 _ . -")
        keys.append((host, device))
    return keys


def _apply_release(held, release, released_entries):
    """The held keys less those released; a name that holds nothing and was never released fails."""
    keys = parse_release(release)
    if not keys:
        return dict(held)
    hosts = {host for host, device in keys if device is None}
    devices = {(host, device) for host, device in keys if device is not None}
    holding_hosts = {key[1] for key in held}
    holding_keys = {(key[1], key[2]) for key in held}
    gone = {(entry["host"], entry["device"]) for entry in released_entries}
    gone_hosts = {host for host, _ in gone}
    unknown = sorted(host for host in hosts - holding_hosts - gone_hosts)
    unknown += sorted(f"{host}/{device}" for host, device in devices - holding_keys - gone)
    if unknown:
        _fail(
            f"roce_ipam_release names what holds no address in the ledger: {', '.join(unknown)} "
            "(a typo? nothing was released)"
        )
    return {key: address for key, address in held.items() if key[1] not in hosts and (key[1], key[2]) not in devices}


def _load_released(ledger, pools, held, now, hold):
    """The released entries still held back at `now` (all of them without a clock); their
    addresses are taken in their pools, so that search never hands them out."""
    if ledger is None:
        return []
    entries = ledger.get("released", [])
    if not entries:
        return []
    limit = None if now is None else now - hold
    holder_of = {(key[0], address): key for key, address in held.items()}
    kept, seen = [], set()
    for entry in entries:
        if limit is not None and datetime.strptime(entry["released_at"], TIME_FORMAT).replace(tzinfo=UTC) <= limit:
            continue  # held long enough: free again
        pool = pools.get(entry["pool"])
        if pool is not None:
            address = _ledger_address(pool, entry["host"], entry["device"], entry["ip"])
            if (pool.name, address) in holder_of:
                other = holder_of[(pool.name, address)]
                _fail(
                    f"pool {pool.name}: the ledger holds {entry['ip']} both for {other[1]}/{other[2]} and as "
                    f"released by {entry['host']}/{entry['device']} at {entry['released_at']}"
                )
            if (pool.name, address) in seen:
                _fail(f"pool {pool.name}: the ledger lists {entry['ip']} as released twice")
            seen.add((pool.name, address))
            pool.take(address)
        kept.append(dict(entry))
    return kept


def _check_reservations(pools, held, wanted):
    if not any(pool.reserved for pool in pools.values()):
        return
    holder_of = {(pool_name, address): (host, device) for (pool_name, host, device), address in held.items()}
    for pool in pools.values():
        for (host, device), address in pool.reserved.items():
            text = format_address(address, pool.version)
            holder = holder_of.get((pool.name, address), (host, device))
            if holder != (host, device):
                _fail(
                    f"pool {pool.name}: {text} is reserved for host {host} device {device} "
                    f"but the ledger gives it to {holder[0]}/{holder[1]}"
                )
            current = held.get((pool.name, host, device), address)
            if current != address:
                _fail(
                    f"pool {pool.name}: host {host} device {device} holds {format_address(current, pool.version)} "
                    f"but is reserved {text}; release it first"
                )
            if wanted.get((host, device), pool.name) != pool.name:
                _fail(
                    f"host {host} device {device} is reserved in pool {pool.name} "
                    f"but requested from {wanted[(host, device)]}"
                )


def _exhausted(pool, needed, taken_so_far):
    """Fail with the pool's counts as they were before this call allocated anything."""
    _fail(
        f"pool {pool.name} ({pool.network.cidr}) is exhausted: "
        f"{needed} new address(es) needed, {pool.free_count() + taken_so_far} free"
    )


def _allocate(pools, held, new_keys):
    """Each new key takes the lowest free address of its pool."""
    needed, taken = defaultdict(int), defaultdict(int)
    for (host, device), pool_name in new_keys:
        needed[pool_name] += (host, device) not in pools[pool_name].reserved
    for (host, device), pool_name in new_keys:
        pool = pools[pool_name]
        address = pool.reserved.get((host, device))
        if address is None:
            address = pool.next_free(pool.low)
            if address is None:
                _exhausted(pool, needed[pool_name], taken[pool_name])
            pool.take(address)
            taken[pool_name] += 1
        held[(pool_name, host, device)] = address


def _host_offset(pools, held, host, wanted):
    """The offset a host is already bound to by its ledger entries or reservations, or None."""
    offsets = {address - pools[pool_name].first for (pool_name, h, _), address in held.items() if h == host}
    offsets |= {
        pools[pool_name].reserved[(host, device)] - pools[pool_name].first
        for device, pool_name in wanted
        if (host, device) in pools[pool_name].reserved
    }
    if len(offsets) > 1:
        _fail(f"aligned: host {host} holds different offsets in its pools ({sorted(offsets)}); release it to realign")
    return offsets.pop() if offsets else None


def _lowest_common_offset(targets):
    """The lowest offset from the network address free in every one of the pools, or the pool that ran out."""
    offset = 0
    while True:
        candidates = [pool.next_free(pool.first + offset) for pool in targets]
        if None in candidates:
            return None, targets[candidates.index(None)]
        offsets = {candidate - pool.first for candidate, pool in zip(candidates, targets, strict=True)}
        if len(offsets) == 1:
            return offsets.pop(), None
        offset = max(offsets)


def _allocate_aligned(pools, held, new_keys):
    """Each host takes one offset from the network address, the same on every pool it uses."""
    by_host = defaultdict(list)
    for (host, device), pool_name in new_keys:
        by_host[host].append((device, pool_name))
    held_by_host = defaultdict(dict)
    for (pool_name, host, device), address in held.items():
        held_by_host[host][(pool_name, host, device)] = address
    hosts = sorted(by_host, key=natural_key)
    for host in hosts:
        wanted = by_host[host]
        names = [pool_name for _, pool_name in wanted] + [key[0] for key in held_by_host[host]]
        if len(set(names)) != len(names):
            _fail(f"aligned: host {host} has two devices in one pool, so one offset cannot serve them")
        offset = _host_offset(pools, held_by_host[host], host, wanted)
        targets = [pools[pool_name] for _, pool_name in wanted]
        if offset is None:
            offset, exhausted = _lowest_common_offset(targets)
            if exhausted:
                users = [h for h in hosts if exhausted.name in {name for _, name in by_host[h]}]
                _exhausted(exhausted, len(users), users.index(host))
        for device, pool_name in wanted:
            pool, address = pools[pool_name], pools[pool_name].first + offset
            if pool.reserved.get((host, device)) != address:
                if pool.in_pod(address):
                    _fail(
                        f"aligned: pool {pool_name}: offset {offset} of host {host} "
                        f"({format_address(address, pool.version)}) is inside pod_range {pool.pod_text}"
                    )
                if not pool.is_free(address):
                    _fail(f"aligned: pool {pool_name}: offset {offset} of host {host} is not free there")
                pool.take(address)
            held[(pool_name, host, device)] = address


def _in_natural_order(new):
    """The requested keys that hold no address yet, [((host, device), pool)], by host then device in
    natural order."""
    host_rank = {host: rank for rank, host in enumerate(sorted({key[0] for key, _ in new}, key=natural_key))}
    device_rank = {device: rank for rank, device in enumerate(sorted({key[1] for key, _ in new}, key=natural_key))}
    return sorted(new, key=lambda item: (host_rank[item[0][0]], device_rank[item[0][1]]))


def _take_held(pools, held):
    """Pool.take for every held address: a pool's run of the ledger at once (the ledger is written
    by pool), else one by one."""
    names, addresses = list(map(itemgetter(0), held)), list(held.values())
    runs = [(name, names.index(name), names.count(name)) for name in set(names)]
    if all(names[start : start + size].count(name) == size for name, start, size in runs):
        for name, start, size in runs:
            chunk = addresses[start : start + size]
            pools[name]._next.update(zip(chunk, map(add, chunk, repeat(1, size)), strict=True))
        return
    for (pool_name, _, _), address in held.items():
        pools[pool_name].take(address)


@_collector_paused
def roce_ipam_assign(ledger, pools, requests, release=None, aligned=False, *, hold_days=0, now=None):
    """Allocate an address for every request; see the module docstring and roce_ipam_assign.yml."""
    pools_by_name = _load_pools(pools)
    original, texts = _load_ledger(ledger, pools_by_name)
    original_texts = dict(texts) if release else texts
    wanted = _load_requests(requests, pools_by_name)
    clock, hold = _clock(now, hold_days)
    released_before = [] if ledger is None else ledger.get("released", [])
    held = _apply_release(original, release, released_before)
    freed_keys = original.keys() - held.keys()
    placed = dict(zip(map(itemgetter(1, 2), held), map(itemgetter(0), held), strict=True))  # (host, device): pool
    # The requests that no held key answers: new keys, and keys held in another pool (one set
    # difference in C, instead of a lookup a key).
    unanswered = wanted.items() - placed.items() if placed else list(wanted.items())
    moved = [(key, pool_name) for key, pool_name in unanswered if key in placed]
    if moved:
        (host, device), wanted_pool = min(moved)
        _fail(
            f"host {host} device {device} holds an address in pool {placed[(host, device)]} "
            f"but is requested from {wanted_pool}; release it first"
        )
    _take_held(pools_by_name, held)
    released = _load_released(ledger, pools_by_name, held, clock, hold)
    _check_pods_clear_of_released(pools_by_name, released)
    if hold and len(held) != len(original):
        if clock is None:
            _fail("releasing with a hold needs the time: pass now")
        for key in sorted(freed_keys):
            pools_by_name[key[0]].take(original[key])
            released.append({"pool": key[0], "host": key[1], "device": key[2], "ip": texts[key], "released_at": now})
    _check_reservations(pools_by_name, held, wanted)

    new_keys = _in_natural_order(unanswered)
    (_allocate_aligned if aligned else _allocate)(pools_by_name, held, new_keys)
    for (host, device), pool_name in new_keys:
        key = (pool_name, host, device)
        texts[key] = format_address(held[key], pools_by_name[pool_name].version)
    if released and new_keys:  # a reservation takes its address even while it is held back
        reserved_now = {(pool_name, texts[(pool_name, *key)]) for key, pool_name in new_keys}
        released = [entry for entry in released if (entry["pool"], entry["ip"]) not in reserved_now]

    # What changed, as 'pool host device ip' lines (a key released and given its address back: neither).
    taken = {
        f"{pool_name} {host} {device} {texts[(pool_name, host, device)]}" for (host, device), pool_name in new_keys
    }
    freed = {" ".join((*key, original_texts[key])) for key in freed_keys}

    facts = {name: (pool.prefix, pool.gateway_text) for name, pool in pools_by_name.items()}
    # (host, device): its address's text, of the keys held now (texts keeps released keys too)
    address_of = dict(zip(map(itemgetter(1, 2), held), map(texts.__getitem__, held), strict=True))
    allocations = _requested(wanted, facts, address_of)
    # By pool, then address (unique in a pool, so the key itself is never compared).
    entries = sorted(zip(map(itemgetter(0), held), held.values(), held, strict=True))
    new_ledger = {
        "version": LEDGER_VERSION,
        "allocations": [
            {"pool": pool_name, "host": key[1], "device": key[2], "ip": texts[key]} for pool_name, _, key in entries
        ],
    }
    if released:
        new_ledger["released"] = sorted(released, key=_released_order)
    return {
        "ledger": new_ledger,
        "changed": held != original or new_ledger.get("released", []) != released_before,
        "allocations": allocations,
        "taken": sorted(taken - freed),
        "freed": sorted(freed - taken),
    }


# --- the pods' side of a pool: whereabouts' range ---------------------------------------------------


def roce_ipam_pod_networks(pools, ledger=None):
    """{pool: {range, exclude, gateway, subnet, prefix}} of every pool with a pod_range: what
    whereabouts hands SR-IOV pods their addresses from (the k8s_fabric role). gateway is left out
    when the pool has none; exclude lists the pool's exclude entries that meet the range, as CIDRs
    clipped to it. The pools are checked as roce_ipam_assign checks them, and the ledger (its data,
    or its text as the file holds it) too when given: the range holds none of its addresses, held
    or held back after a release."""
    try:
        pools_by_name = _load_pools(pools)
        if ledger is not None:
            if isinstance(ledger, str):
                ledger = roce_ipam_ledger(ledger)
            _load_ledger(ledger, pools_by_name)
            _check_pods_clear_of_released(pools_by_name, ledger.get("released") or [])
    except LedgerUnusable:
        raise
    except AnsibleFilterError as error:
        message = str(error.message)
        raise AnsibleFilterError(
            "roce_ipam_pod_networks: " + message.removeprefix("roce_ipam_assign: ").removeprefix("roce_ipam_ledger: ")
        ) from None
    networks = {}
    for name, pool in pools_by_name.items():
        if pool.pod is None:
            continue
        network = {"range": pool.pod_text, "exclude": pool.pod_exclusions()}
        if pool.gateway_text is not None:
            network["gateway"] = pool.gateway_text
        network["subnet"] = f"{format_address(pool.first, pool.version)}/{pool.prefix}"
        network["prefix"] = pool.prefix
        networks[name] = network
    return networks


# --- new keys against a ledger checked before: roce_ipam_allocate's cache -------------------------
#
# Beside a ledger file it wrote, roce_ipam_allocate keeps a picture of it (ledger_state): per pool,
# in the file's order, its hosts, devices and addresses as columns, and its taken addresses as
# intervals. The action trusts a picture only for the very bytes, pools, options and code it was
# made with. A run whose only change is keys the ledger does not hold yet then needs none of the
# ledger's 80,000 checks again: roce_ipam_assign_added allocates the new keys as roce_ipam_assign
# would, and says where their lines go.

STATE_VERSION = 1


def ledger_state(ledger, pools):
    """The picture of a ledger as roce_ipam_assign returns it (by pool, then address), or None when
    there is none to keep: no allocation, addresses held back after a release, a value holding a
    new line, entries not in that order."""
    if not isinstance(ledger, dict) or ledger.get("released") or not ledger.get("allocations"):
        return None
    pools_by_name = _load_pools(pools)
    entries = ledger["allocations"]
    names, hosts, devices, ips = (list(map(itemgetter(field), entries)) for field in ALLOCATION_FIELDS)
    runs, start = [], 0
    for name in sorted(set(names)):
        pool, size = pools_by_name.get(name), names.count(name)
        if pool is None or names[start : start + size].count(name) != size:
            return None
        columns = [column[start : start + size] for column in (hosts, devices, ips)]
        texts = ["\n".join(column) for column in columns]
        if any(text.count("\n") != size - 1 for text in texts):
            return None
        family = _FAMILY[pool.version]
        try:
            packed = list(map(socket.inet_pton, repeat(family, size), columns[2]))
        except (OSError, TypeError):
            return None
        numbers = list(map(int.from_bytes, packed, repeat("big", size)))
        if any(map(int.__ge__, numbers, numbers[1:])):  # not strictly by address
            return None
        run = dict(zip(("name", "count", "hosts", "devices", "ips"), (name, size, *texts), strict=True))
        runs.append({**run, "taken": _intervals(numbers)})
        start += size
    return {"version": STATE_VERSION, "allocations": len(entries), "pools": runs}


def _intervals(numbers):
    """[[first, last], ...]: the runs of consecutive integers of a strictly increasing list."""
    if not numbers:
        return []
    # Where a run ends: the positions whose next number is not one more.
    ends = list(compress(range(len(numbers) - 1), map(int.__ne__, numbers[1:], map(add, numbers, repeat(1)))))
    firsts = [numbers[0], *(numbers[end + 1] for end in ends)]
    lasts = [*(numbers[end] for end in ends), numbers[-1]]
    return [list(pair) for pair in zip(firsts, lasts, strict=True)]


class _NotPictured(Exception):
    """roce_ipam_assign_added cannot answer: roce_ipam_assign must."""


@_collector_paused
def roce_ipam_assign_added(state, pools, requests, aligned=False):
    """roce_ipam_assign(ledger, pools, requests, aligned=aligned), less its ledger, for the ledger
    `state` pictures (ledger_state), when the run only adds keys; None whenever roce_ipam_assign
    itself must answer (a key requested from another pool, a reservation, an aligned host that
    holds addresses already, a pool exhausted, a request it refuses, a picture it cannot use).

    Adds 'entries': the new allocations as (line, entry), `line` being the position among the
    ledger's allocation lines before which the entry's line goes (in the file's order); and
    'state': the picture of the ledger with them.
    """
    try:
        return _assign_added(state, pools, requests, aligned)
    except (_NotPictured, AnsibleFilterError, LookupError, TypeError, ValueError, AttributeError):
        return None


def _assign_added(state, pools, requests, aligned):
    if state.get("version") != STATE_VERSION:
        raise _NotPictured
    pools_by_name = _load_pools(pools)
    if any(pool.reserved for pool in pools_by_name.values()):
        raise _NotPictured
    wanted = _load_requests(requests, pools_by_name)
    runs, columns, placed = _pictured(state, pools_by_name)
    unheld = _unheld(wanted, placed)
    new_keys = _in_natural_order(unheld)
    if aligned and new_keys and not {host for (host, _), _ in new_keys}.isdisjoint(map(itemgetter(0), placed)):
        raise _NotPictured  # _allocate_aligned would read the offsets such a host holds
    for pool_name in {pool_name for _, pool_name in new_keys} & runs.keys():
        taken = pools_by_name[pool_name]._next
        for first, last in runs[pool_name]["taken"]:
            taken.update(dict.fromkeys(range(first, last + 1), last + 1))
    held = {}
    (_allocate_aligned if aligned else _allocate)(pools_by_name, held, new_keys)

    added = []  # (pool, address, host, device, text), by pool then address
    for (host, device), pool_name in new_keys:
        if "\n" in host or "\n" in device:
            raise _NotPictured
        address = held[(pool_name, host, device)]
        added.append((pool_name, address, host, device, format_address(address, pools_by_name[pool_name].version)))
    added.sort()
    entries, pictured = _placed_lines(runs, columns, added)
    every = len(wanted) - len(unheld) == len(placed)  # every key the ledger holds is requested
    return {
        "changed": bool(added),
        "allocations": _allocations(pools_by_name, wanted, columns, added, every=every),
        "taken": sorted(f"{pool_name} {host} {device} {text}" for pool_name, _, host, device, text in added),
        "freed": [],
        "entries": entries,
        "state": {"version": STATE_VERSION, "allocations": state["allocations"] + len(added), "pools": pictured},
    }


def _allocations(pools, wanted, columns, added, *, every):
    """roce_ipam_assign's allocations, {host: {device: {address, prefix, pool, gateway}}}, of the
    requests: when every key the ledger holds is requested (the usual case), the ledger's columns
    a pool at a time and the keys added; else request by request."""
    facts = {name: (pool.prefix, pool.gateway_text) for name, pool in pools.items()}
    allocations = defaultdict(dict)
    if every:
        for name, (hosts, devices, ips) in columns.items():
            prefix, gateway = facts[name]
            infos = [{"address": ip, "prefix": prefix, "pool": name, "gateway": gateway} for ip in ips]
            for host, device, info in zip(hosts, devices, infos, strict=True):
                allocations[host][device] = info
        for pool_name, _, host, device, text in added:
            prefix, gateway = facts[pool_name]
            allocations[host][device] = {"address": text, "prefix": prefix, "pool": pool_name, "gateway": gateway}
        return dict(allocations)
    address_of = {}
    for hosts, devices, ips in columns.values():
        address_of.update(zip(zip(hosts, devices, strict=True), ips, strict=True))
    address_of.update(((host, device), text) for _, _, host, device, text in added)
    return _requested(wanted, facts, address_of)


def _requested(wanted, facts, address_of):
    """{host: {device: {address, prefix, pool, gateway}}} of the requests, wanted (host, device) ->
    pool name, from facts (pool name -> prefix, gateway) and address_of ((host, device) -> text)."""
    allocations = defaultdict(dict)
    for key, pool_name in wanted.items():
        prefix, gateway = facts[pool_name]
        allocations[key[0]][key[1]] = {
            "address": address_of[key],
            "prefix": prefix,
            "pool": pool_name,
            "gateway": gateway,
        }
    return dict(allocations)


def _pictured(state, pools_by_name):
    """(runs by pool, their columns [hosts, devices, addresses], {(host, device): pool}) of a picture."""
    runs = {run["name"]: run for run in state["pools"]}
    if list(runs) != sorted(runs) or not pools_by_name.keys() >= runs.keys():
        raise _NotPictured
    placed, columns = {}, {}
    for name, run in runs.items():
        hosts, devices, ips = columns[name] = [run[column].split("\n") for column in ("hosts", "devices", "ips")]
        if not len(hosts) == len(devices) == len(ips) == run["count"] == sum(b - a + 1 for a, b in run["taken"]):
            raise _NotPictured
        placed.update(zip(zip(hosts, devices, strict=True), repeat(name)))
    if len(placed) != state["allocations"]:
        raise _NotPictured
    return runs, columns, placed


def _unheld(wanted, placed):
    """[((host, device), pool)] of the requests the ledger holds nothing for; a key it holds in
    another pool is roce_ipam_assign's to refuse."""
    keys, asked = list(wanted), list(wanted.values())
    holders = list(map(placed.get, keys))
    if holders == asked:
        return []
    new = []
    for key, pool_name, holder in zip(keys, asked, holders, strict=True):
        if holder != pool_name:
            if holder is not None:
                raise _NotPictured
            new.append((key, pool_name))
    return new


def _placed_lines(runs, columns, added):
    """([(line, entry)] of the new allocations, the pools' new pictures)."""
    by_pool = defaultdict(list)
    for item in added:
        by_pool[item[0]].append(item)
    entries, pictured, line = [], [], 0
    for name in sorted(runs.keys() | by_pool.keys()):
        run = runs.get(name) or {"name": name, "count": 0, "hosts": "", "devices": "", "ips": "", "taken": []}
        if name not in by_pool:
            pictured.append(run)
            line += run["count"]
            continue
        old = columns.get(name) or ([], [], [])
        taken = run["taken"]
        firsts, before = [first for first, _ in taken], [0, *accumulate(b - a + 1 for a, b in taken)]
        new_columns, previous = ([], [], []), 0
        for pool_name, address, host, device, text in by_pool[name]:
            at = bisect_right(firsts, address)
            if at and taken[at - 1][1] >= address:  # taken already: not what the picture says
                raise _NotPictured
            rank = before[at]
            for column, old_column, value in zip(new_columns, old, (host, device, text), strict=True):
                column.extend(old_column[previous:rank])
                column.append(value)
            previous = rank
            entries.append((line + rank, {"pool": pool_name, "host": host, "device": device, "ip": text}))
        for column, old_column in zip(new_columns, old, strict=True):
            column.extend(old_column[previous:])
        added_intervals = [[address, address] for _, address, *_ in by_pool[name]]
        pictured.append(
            {
                "name": name,
                "count": run["count"] + len(by_pool[name]),
                "hosts": "\n".join(new_columns[0]),
                "devices": "\n".join(new_columns[1]),
                "ips": "\n".join(new_columns[2]),
                "taken": _merge([*taken, *added_intervals]),
            }
        )
        line += run["count"]
    return entries, pictured


def _released_order(entry):
    return entry["pool"], entry["released_at"], natural_key(entry["host"]), natural_key(entry["device"])


def _clock(now, hold_days):
    """(now as an aware datetime or None, the hold as a timedelta), both checked."""
    if isinstance(hold_days, bool) or not isinstance(hold_days, (int, float)) or hold_days < 0:
        _fail(f"roce_ipam_release_hold: {hold_days!r} is not a number of days, 0 or more")
    if now is None:
        return None, timedelta(days=hold_days)
    if not isinstance(now, str) or not _valid_time(now):
        _fail(f"now: {now!r} is not a UTC time YYYY-MM-DDTHH:MM:SSZ")
    return datetime.strptime(now, TIME_FORMAT).replace(tzinfo=UTC), timedelta(days=hold_days)


def roce_ipam_requests(hostvars, hosts, rails_variable="roce_rails"):
    """One request per rail of every host: [{host, device, pool}], from each host's rails variable."""
    requests = []
    for host, value in _every_hosts_value(hostvars, hosts, rails_variable):
        rails = value or []
        if not isinstance(rails, list):
            _fail(f"host {host}: {rails_variable} must be a list of {{device, netdev, pool}}", "roce_ipam_requests")
        for position, rail in enumerate(rails):
            if not isinstance(rail, dict) or not rail.get("device") or not rail.get("pool"):
                _fail(f"host {host}: {rails_variable}[{position}] needs a device and a pool", "roce_ipam_requests")
            requests.append({"host": str(host), "device": str(rail["device"]), "pool": str(rail["pool"])})
    return requests


# --- every host's value of one variable, without building every host's variables ----------------

_UNSET = object()  # the variable is not defined
_PER_HOST = object()  # the value of a set of groups may differ per host: read each host through hostvars


def _every_hosts_value(hostvars, hosts, name):
    """(host, hostvars[host][name] or None) for each host, as hostvars gives it, at fleet scale.

    hostvars[host] merges every variable source of the host (about 1 ms a host, 10 s for 10,000).
    A variable that no host sets for itself has one value per set of groups: read once per set.
    """
    reader = _SharedValueReader.of(hostvars, name)
    for host in hosts:
        yield host, (reader.value(host) if reader else hostvars[host].get(name))


class _SharedValueReader:
    """Reads one variable of many hosts exactly as hostvars[host][name] would, sharing group values.

    Ansible's variables of a host (VariableManager.get_vars, which hostvars calls) come from group
    sources (inventory group vars, group_vars through the vars plugins), then host sources
    (inventory host vars, host_vars through the vars plugins, facts, include_vars, set_fact), then
    extra vars. A host that sets the variable in none of its host sources has the value of its set
    of groups (or the extra var): the same raw value for every host with that set of groups, read
    once from one of them through hostvars.raw_get. Read through hostvars one by one, exactly:
    hosts that set the variable themselves, and every host of a group set whose value holds a
    template (it may name host variables). Raw values without a template are what templating
    returns. tests/playbooks/test_ipam_playbook.py compares the result with hostvars, source by
    source.
    """

    def __init__(self, hostvars, name):
        self._hostvars = hostvars
        self._name = name
        # Private attributes of Ansible's HostVars and VariableManager (ansible-core 2.19): the
        # same objects hostvars reads; of() falls back to hostvars when they are missing.
        self._inventory = hostvars._inventory
        self._loader = hostvars._loader
        manager = hostvars._variable_manager
        self._sources = self._inventory._sources
        self._facts = manager._fact_cache
        self._include_vars = manager._vars_cache
        self._set_facts = manager._nonpersistent_fact_cache
        # hostvars reads playbook-adjacent host_vars from the playbook's directory, as get_vars does.
        self._basedirs = [self._loader.get_basedir()] if manager.safe_basedir else []
        self._by_groups = {}

    @classmethod
    def of(cls, hostvars, name):
        """The reader for Ansible's hostvars, None for any other mapping (read it host by host)."""
        try:
            return cls(hostvars, name)
        except AttributeError:
            return None

    def value(self, host_name):
        host = self._inventory.get_host(host_name)
        if host is None or self._set_by_host(host):
            return self._exact(host_name)
        groups = frozenset(group.name for group in host.get_groups())
        shared = self._by_groups.get(groups)
        if shared is None:
            raw = self._hostvars.raw_get(host_name).get(self._name, _UNSET)
            shared = self._by_groups[groups] = _PER_HOST if _may_be_templated(raw) else raw
        if shared is _PER_HOST:
            return self._exact(host_name)
        return None if shared is _UNSET else shared

    def _exact(self, host_name):
        return self._hostvars[host_name].get(self._name)

    def _set_by_host(self, host):
        """Whether a host source of this host defines the variable (then read it through hostvars)."""
        name, host_name = self._name, host.name
        if (
            name in host.vars
            or name in self._include_vars.get(host_name, ())
            or name in self._set_facts.get(host_name, ())
        ):
            return True
        try:
            facts = self._facts.get(host_name) or {}
        except KeyError:
            facts = {}
        if name in facts:
            return True
        if name in get_vars_from_inventory_sources(self._loader, self._sources, [host], "task"):
            return True
        return any(name in get_vars_from_path(self._loader, path, [host], "task") for path in self._basedirs)


def _may_be_templated(value):
    """Whether templating could change the value: a string with Jinja syntax in it, at any depth."""
    if isinstance(value, str):
        return "{" in value or value.startswith("#jinja2:")
    if isinstance(value, dict):
        return any(_may_be_templated(key) or _may_be_templated(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return any(_may_be_templated(item) for item in value)
    return False


# --- the ledger file, read exactly as YAML reads it, and checked to the letter ---------------------

# The form ipam_ledger writes: a header of comments, version 1, one flow mapping per allocation,
# then, when an address is held back after its release, one per release, and an end line that
# counts both. A scalar is a single-quoted string of printable ASCII, or a plain one of these
# characters that YAML reads as a string (checked with YAML's own resolver below).
_SCALAR = r"([A-Za-z0-9_/][A-Za-z0-9_./-]*|'(?:[ -&(-~]|'')*')"
_ENTRY = re.compile(rf"  - \{{pool: {_SCALAR}, host: {_SCALAR}, device: {_SCALAR}, ip: {_SCALAR}\}}\Z")
_RELEASED_ENTRY = re.compile(
    rf"  - \{{pool: {_SCALAR}, host: {_SCALAR}, device: {_SCALAR}, ip: {_SCALAR}, released_at: '([0-9TZ:-]*)'\}}\Z"
)
# The same, over a block of lines at once.
_ENTRIES = re.compile(_ENTRY.pattern.removesuffix("\\Z").join(("^", "$")), re.MULTILINE)
_RELEASED_ENTRIES = re.compile(_RELEASED_ENTRY.pattern.removesuffix("\\Z").join(("^", "$")), re.MULTILINE)
_COMMENT = re.compile(r"#[ -~]*\Z")
_STRING_TAG = "tag:yaml.org,2002:str"
# Plain scalars YAML 1.1 surely reads as strings, without asking its resolver (80,000 addresses
# cost it 0.2 s): a word starting with a letter, '_' or '/' that is not one of YAML's booleans or
# nulls, or digits with two dots or more (an IPv4 address: no int, float or time has them).
# Property tests compare the result with YAML's.
_PLAIN_STRING = re.compile(r"(?:[A-Za-z_/][A-Za-z0-9_./-]*|[0-9]+(?:\.[0-9]+){2,})\Z")
# An allocation line whose every value is a plain scalar matched by _PLAIN_STRING, over a block.
_PLAIN_ENTRIES = re.compile(
    _ENTRIES.pattern.replace(_SCALAR, "(" + _PLAIN_STRING.pattern.removesuffix("\\Z") + ")"), re.MULTILINE
)
_YAML_WORDS = frozenset(
    [
        "y",
        "Y",
        "yes",
        "Yes",
        "YES",
        "n",
        "N",
        "no",
        "No",
        "NO",
        "true",
        "True",
        "TRUE",
        "false",
        "False",
        "FALSE",
        "on",
        "On",
        "ON",
        "off",
        "Off",
        "OFF",
        "null",
        "Null",
        "NULL",
    ]
)

ALLOCATION_FIELDS = ("pool", "host", "device", "ip")
RELEASED_FIELDS = ("pool", "host", "device", "ip", "released_at")
LEDGER_KEYS = ("version", "allocations", "released")
# The header of every ledger written since the end line exists says so in this line (ipam_ledger's
# HEADER): such a file without its end line was cut short.
END_MARK = "# Its last line counts the entries"
_END = re.compile(r"# end of ledger: (\d+) allocations?, (\d+) released\Z")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\Z")


class LedgerUnusable(AnsibleFilterError):
    """The ledger is not exactly what this IPAM writes; .reason says what is wrong."""

    def __init__(self, reason):
        super().__init__(f"roce_ipam_ledger: the ledger {reason}")
        self.reason = reason


def end_line(allocations, released):
    """The last line of a ledger file: how many entries it holds (a cut file lacks it)."""
    return f"# end of ledger: {allocations} allocations, {released} released"


class _CheckedLedger(dict):
    """A ledger already checked by check_ledger (roce_ipam_assign does not check it again)."""


@_collector_paused
def roce_ipam_ledger(text):
    """The ledger file's data, checked: exactly {version: 1, allocations: [...]} (+ released).

    Anything else fails, naming what is wrong: an empty or comment-only file, a missing, null or
    misspelled key, an entry without its fields or with a value that is not a string, a file cut
    short (its end line missing or counting other entries). The form ipam_ledger writes is read
    line by line, 40 times faster than a YAML parser (80,000 allocations: 0.3 s instead of 13 s);
    any other text, edited by hand say, is read by YAML and checked the same way.
    """
    if not isinstance(text, str):
        _fail(f"the ledger must be given as text, not {type(text).__name__}", "roce_ipam_ledger")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    last = lines[-1] if lines else ""
    end = _END.match(last)
    if end is None and any(line.startswith(END_MARK) for line in lines[:12]):
        raise LedgerUnusable(
            "has no end line ('# end of ledger: N allocations, M released'), which its header promises: "
            "the file was cut short"
        )
    ledger = _read_written_form(text, lines)
    if ledger is None:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise LedgerUnusable(f"is not valid YAML (cut short, or edited by hand?): {error}") from None
        ledger = check_ledger(data)
    else:
        ledger = _CheckedLedger(ledger)
    if end is not None:
        counted = (int(end.group(1)), int(end.group(2)))
        held = (len(ledger["allocations"]), len(ledger.get("released", ())))
        if counted != held:
            raise LedgerUnusable(
                f"ends with a line counting {counted[0]} allocations and {counted[1]} released, but holds "
                f"{held[0]} and {held[1]}: it was cut short or edited"
            )
    return ledger


def check_ledger(data):
    """The ledger data when it is exactly a ledger; LedgerUnusable naming what is wrong otherwise."""
    if data is None:
        raise LedgerUnusable("is empty: it holds no version and no allocations (a new ledger is 'allocations: []')")
    if not isinstance(data, dict):
        raise LedgerUnusable(f"is a {type(data).__name__}, not a mapping of version and allocations")
    unknown = [key for key in data if key not in LEDGER_KEYS]
    if unknown:
        raise LedgerUnusable(
            f"has the unknown top-level key(s) {', '.join(repr(key) for key in unknown)}; a ledger holds only "
            "version, allocations and released"
        )
    for key in ("version", "allocations"):
        if key not in data:
            raise LedgerUnusable(f"has no '{key}'")
    if isinstance(data["version"], bool) or not isinstance(data["version"], int) or data["version"] != LEDGER_VERSION:
        raise LedgerUnusable(f"has version {data['version']!r}; this IPAM reads version {LEDGER_VERSION}")
    for key, fields in (("allocations", ALLOCATION_FIELDS), ("released", RELEASED_FIELDS)):
        if key not in data:
            continue
        entries = data[key]
        if entries is None:
            raise LedgerUnusable(f"has '{key}' null (empty is '{key}: []')")
        if not isinstance(entries, list):
            raise LedgerUnusable(f"has '{key}' as a {type(entries).__name__}, not a list")
        for position, entry in enumerate(entries):
            _check_entry(entry, f"{key}[{position}]", fields)
    return _CheckedLedger(data)


def _check_entry(entry, where, fields):
    if not isinstance(entry, dict):
        raise LedgerUnusable(f"entry {where} is not a mapping of {', '.join(fields)}")
    if tuple(sorted(entry)) != tuple(sorted(fields)):
        raise LedgerUnusable(f"entry {where} has the keys {', '.join(map(str, entry))}, not {', '.join(fields)}")
    for field in fields:
        value = entry[field]
        if not isinstance(value, str) or not value:
            raise LedgerUnusable(
                f"entry {where} has {field} {value!r}, not a non-empty string (quote a value YAML reads otherwise)"
            )
    if "released_at" in entry and not _valid_time(entry["released_at"]):
        raise LedgerUnusable(f"entry {where} has released_at {entry['released_at']!r}, not YYYY-MM-DDTHH:MM:SSZ")


def _valid_time(text):
    if not _TIME.match(text):
        return False
    try:
        datetime.strptime(text, TIME_FORMAT)
    except ValueError:
        return False
    return True


def _written_sections(lines):
    """(allocation lines, released lines or None) of a text in the written form, else None."""
    position = 1 if lines[:1] == ["---"] else 0
    while position < len(lines) and _COMMENT.match(lines[position]):
        position += 1
    if lines[position : position + 1] != ["version: 1"] or position + 1 >= len(lines):
        return None
    heading, body = lines[position + 1], lines[position + 2 :]
    if body and _END.match(body[-1]):
        body = body[:-1]
    released = None
    if "released:" in body:
        split = body.index("released:")
        body, released = body[:split], body[split + 1 :]
        if not released:
            return None
    if (heading == "allocations: []" and body) or (heading not in {"allocations:", "allocations: []"}):
        return None
    if heading == "allocations:" and not body:
        return None
    return body, released


def _read_written_form(text, lines=None):
    """The ledger when the text is in the form ipam_ledger writes, else None (let YAML read it).

    The data is exactly what YAML reads from the text, whose values are then non-empty strings.
    """
    if lines is None:
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
    sections = _written_sections(lines)
    if sections is None:
        return None
    entries, released = sections
    resolver, strings = yaml.resolver.Resolver(), {}

    def scalar(token):
        if token.startswith("'"):
            return token[1:-1].replace("''", "'") or None
        if _PLAIN_STRING.match(token) and token not in _YAML_WORDS:
            return token
        is_string = strings.get(token)
        if is_string is None:
            is_string = strings[token] = resolver.resolve(yaml.ScalarNode, token, (True, False)) == _STRING_TAG
        return token if is_string else None

    def read(lines, pattern, fields):
        # One findall over the block, anchored per line: every line must match (no scalar spans a
        # line), and each distinct token is read once.
        block = "\n".join(lines)
        if len(fields) == len(ALLOCATION_FIELDS):
            # Most often every value is one YAML surely reads as a string: then one findall of
            # _PLAIN_ENTRIES checks them all, and the tokens are the values.
            matches = _PLAIN_ENTRIES.findall(block)
            if len(matches) == len(lines) and _YAML_WORDS.isdisjoint(chain.from_iterable(matches)):
                return [{"pool": p, "host": h, "device": d, "ip": i} for p, h, d, i in matches]
        matches = pattern.findall(block)
        if len(matches) != len(lines):
            return None
        values = {}
        for column in range(len(ALLOCATION_FIELDS)):
            for token in {match[column] for match in matches}:
                if token not in values:
                    value = values[token] = scalar(token)
                    if value is None:
                        return None
        if len(fields) == len(ALLOCATION_FIELDS):
            return [
                {"pool": values[p], "host": values[h], "device": values[d], "ip": values[i]} for p, h, d, i in matches
            ]
        return [
            {"pool": values[p], "host": values[h], "device": values[d], "ip": values[i], "released_at": t}
            for p, h, d, i, t in matches
        ]

    allocations = read(entries, _ENTRIES, ALLOCATION_FIELDS)
    if allocations is None:
        return None
    ledger = {"version": 1, "allocations": allocations}
    if released is not None:
        ledger["released"] = read(released, _RELEASED_ENTRIES, RELEASED_FIELDS)
        if ledger["released"] is None or not all(_valid_time(entry["released_at"]) for entry in ledger["released"]):
            return None
    return ledger


class FilterModule:
    def filters(self):
        return {
            "roce_ipam_assign": roce_ipam_assign,
            "roce_ipam_requests": roce_ipam_requests,
            "roce_ipam_ledger": roce_ipam_ledger,
            "roce_ipam_pod_networks": roce_ipam_pod_networks,
        }
