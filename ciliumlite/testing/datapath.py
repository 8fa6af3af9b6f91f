"""A node's datapath objects under test: loaded with the node's ``.rodata``, run with test_run.

:class:`DatapathObjects` loads the objects a test asks for (``"lxc"``, ``"host"``, ``"overlay"``,
``"sock"``) with the :class:`~ciliumlite.datapath.config.NodeRodata` of a
:class:`~ciliumlite.datapath.config.DatapathConfig`, through the same
:mod:`ciliumlite.datapath.loader` functions a node uses, into one pin directory (so they share the
node's maps, as on a node). It hands back the typed maps (:class:`~ciliumlite.datapath.maps.NodeMaps`,
the LB maps, the event ring), runs programs with ``BPF_PROG_TEST_RUN`` inside the test's namespace
and returns what a run did: the verdict, the output frame and what it added to ``cilium_metrics``.
It needs root (CAP_BPF, CAP_SYS_ADMIN) and needs no pytest:

>>> from collections import Counter
>>> from ciliumlite.bpf import TcAction
>>> from ciliumlite.datapath.reasons import Reason
>>> from ciliumlite.testing.packets import ETH_P_IP, eth, icmp_echo, ipv4
>>> with DatapathObjects(DatapathConfig(pod_cidr="10.244.5.0/24")) as dp:   # doctest: +SKIP
...     dp.add_endpoints(EndpointRow("10.244.5.2", 1, "0a:12:34:56:78:02", "0e:ab:cd:ef:01:02", 1001))
...     run = dp.run(eth("0e:ab:cd:ef:01:02", "0a:12:34:56:78:02", ETH_P_IP)
...                  + ipv4("10.244.5.2", "192.0.2.1", icmp_echo()))
...     assert run.verdict == TcAction.OK and run.reasons == Counter({Reason.TO_STACK: 1})

The pytest fixture ``datapath_objects`` (:mod:`ciliumlite.testing.plugin`) yields a
:class:`DatapathFactory` bound to the test's ``netns`` and ``bpffs_dir``; each call loads one
:class:`DatapathObjects` there, and all of them are closed when the test ends, passed or failed.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, get_args

from ciliumlite.bpf import BpfObject, Map, Program, RunResult, SkbContext, TcAction, fs
from ciliumlite.bpf.errors import CiliumliteError, ValidationError
from ciliumlite.bpf.netns import NetnsRef, entered
from ciliumlite.bpf.program import ProgType, XdpAction, XdpContext
from ciliumlite.bpf.ringbuf import RingBuffer
from ciliumlite.datapath import devices, loader
from ciliumlite.datapath.config import DatapathConfig, NodeRodata
from ciliumlite.datapath.events import DropEvent, PolicyVerdictEvent, TraceEvent, decode
from ciliumlite.datapath.lb import LbMaps
from ciliumlite.datapath.maps import EVENTS_NAME, NodeMaps
from ciliumlite.datapath.reasons import SOURCE_FILES
from ciliumlite.datapath.records import EndpointInfo, EndpointKey, MetricsKey
from ciliumlite.testing.resources import unique_name

__all__ = [
    "OBJECT_NAMES", "DatapathFactory", "DatapathObjects", "EndpointRow", "ObjectName", "Run", "Tally",
    "source_file_id",
]

ObjectName = Literal["lxc", "host", "overlay", "sock", "xdp"]
#: The objects :class:`DatapathObjects` can load, by short name (``"lxc"`` is ``bpf_lxc.o``).
OBJECT_NAMES: tuple[ObjectName, ...] = get_args(ObjectName)

_FILE_IDS = {name: file_id for file_id, name in SOURCE_FILES.items()}


def source_file_id(name: str) -> int:
    """The ``file`` byte of ``cilium_metrics`` keys for a C source (``"l3.h"`` -> 104).

    Raises :class:`ValidationError` for a name :data:`~ciliumlite.datapath.reasons.SOURCE_FILES`
    does not know.
    """
    try:
        return _FILE_IDS[name]
    except KeyError:
        raise ValidationError(f"no datapath source file {name!r} (known: {', '.join(sorted(_FILE_IDS))})") from None


@dataclass(frozen=True)
class EndpointRow:
    """One ``cilium_lxc`` row a test writes: where an endpoint is (``ifindex``, its ``mac`` and the
    host side's ``node_mac``) and who it is (``sec_id``, ``flags`` such as ``ENDPOINT_F_HOST``)."""

    ip: str
    ifindex: int
    mac: str
    node_mac: str
    sec_id: int
    flags: int = 0

    def key(self) -> EndpointKey:
        """The row's key (its IPv4 address)."""
        return EndpointKey(ip4=IPv4Address(self.ip))

    def info(self, lxc_id: int) -> EndpointInfo:
        """The row's value, as endpoint number ``lxc_id``."""
        return EndpointInfo(ifindex=self.ifindex, lxc_id=lxc_id, flags=self.flags, mac=self.mac,
                            node_mac=self.node_mac, sec_id=self.sec_id)


class Tally(NamedTuple):
    """Where and why ``cilium_metrics`` counted packets: reason, direction and C source file id
    (the source line is summed over). Compares equal to the plain tuple."""

    reason: int
    dir: int
    file: int


@dataclass(frozen=True)
class Run:
    """What one ``test_run`` call did: the kernel's :class:`~ciliumlite.bpf.RunResult` and the
    packets it added to ``cilium_metrics`` (by :class:`Tally`)."""

    result: RunResult
    counted: Counter[Tally]

    @property
    def xdp_action(self) -> XdpAction:
        """The return value as an XDP verdict (for ``bpf_xdp``'s program)."""
        return self.result.xdp_action

    @property
    def verdict(self) -> TcAction:
        """The return value as a tc verdict (``TcAction.UNSPEC`` for a value tc does not define)."""
        return self.result.tc_action

    @property
    def data(self) -> bytes:
        """The frame as the program left it."""
        return self.result.data

    @property
    def duration_ns(self) -> int:
        """The kernel's time per run (averaged over ``repeat``)."""
        return self.result.duration_ns

    @property
    def reasons(self) -> Counter[int]:
        """The packets counted, by reason only."""
        out: Counter[int] = Counter()
        for tally, n in self.counted.items():
            out[tally.reason] += n
        return out

    @property
    def by_direction(self) -> Counter[tuple[int, int]]:
        """The packets counted, by (reason, direction)."""
        out: Counter[tuple[int, int]] = Counter()
        for tally, n in self.counted.items():
            out[(tally.reason, tally.dir)] += n
        return out


_LOADERS = {"host": loader.load_host, "overlay": loader.load_overlay, "sock": loader.load_sock}


class DatapathObjects:
    """Datapath objects of one node, loaded with ``config``'s :class:`NodeRodata` into ``pin_dir``.

    ``objects`` names what to load (of :data:`OBJECT_NAMES`), loaded in the order given; they
    share the maps pinned by name in ``pin_dir``. ``tunnel_ifindex``, ``native_ifindex`` and
    ``host_netns_cookie`` go to :meth:`DatapathConfig.node_rodata`; ``arp_responder`` to
    :func:`~ciliumlite.datapath.loader.load_lxc`, ``xdp_nodeport`` and ``native_mac`` to
    :func:`~ciliumlite.datapath.loader.load_xdp`; programs of ``"xdp"`` run with an ``xdp_md``. Without ``pin_dir`` a private one is made on
    bpffs and removed by :meth:`close`; a given ``pin_dir`` is left to its owner. Programs run in
    ``netns`` (None: the caller's namespace), where ``SkbContext.ifindex`` and FIB lookups resolve.

    Raises :class:`ValidationError` for an unknown object name, an ifindex out of range or an
    ``extra_rodata`` name no datapath object declares (:func:`loader.check_overrides`, before
    anything is loaded); :class:`LayoutError` for an object of another build;
    :class:`NotSupportedError` for an object that was not built; :class:`VerifierError` /
    :class:`BpfError` when loading fails. On any failure what was made so far is closed again.
    """

    def __init__(self, config: DatapathConfig | None = None, objects: Iterable[ObjectName] = ("lxc",), *,
                 pin_dir: str | None = None, netns: NetnsRef = None, tunnel_ifindex: int = 0,
                 native_ifindex: int = 0, host_netns_cookie: int = 0, arp_responder: bool = True,
                 xdp_nodeport: bool = True, native_mac: str | None = None) -> None:
        names = tuple(dict.fromkeys(objects))
        unknown = [n for n in names if n not in OBJECT_NAMES]
        if unknown or not names:
            raise ValidationError(f"objects must name some of {', '.join(OBJECT_NAMES)}, not {list(objects)!r}")
        self.config = config if config is not None else DatapathConfig()
        self.netns = netns
        self.rodata: NodeRodata = self.config.node_rodata(
            tunnel_ifindex=tunnel_ifindex, native_ifindex=native_ifindex, host_netns_cookie=host_netns_cookie)
        # As a node does: a misspelt knob fails here, before any object is loaded.
        loader.check_overrides(self.rodata)
        self._own_pin_dir = pin_dir is None
        self.pin_dir = fs.make_pin_dir(unique_name("dp")) if pin_dir is None else pin_dir
        self._objects: dict[str, BpfObject] = {}
        self._lb: LbMaps | None = None
        self._ring: RingBuffer | None = None
        self._ring_map: Map[Any, Any] | None = None
        self.maps = NodeMaps.from_pins(self.pin_dir)
        try:
            with entered(netns):
                for name in names:
                    if name == "lxc":
                        obj = loader.load_lxc(self.rodata, self.pin_dir, arp_responder=arp_responder)
                    elif name == "xdp":
                        obj = loader.load_xdp(self.rodata, self.pin_dir, nodeport=xdp_nodeport, native_mac=native_mac)
                    else:
                        obj = _LOADERS[name](self.rodata, self.pin_dir)
                    self._objects[name] = obj
        except BaseException:
            self.close()
            raise

    # -- objects and programs ------------------------------------------------------------------------
    @property
    def objects(self) -> Mapping[str, BpfObject]:
        """The loaded objects by short name (``dp.objects["lxc"].rodata``), read-only."""
        return MappingProxyType(self._objects)

    def program(self, name: str) -> Program:
        """The program ``name`` of whichever loaded object has it (names are unique across objects).

        Raises :class:`ValidationError` if no loaded object has it.
        """
        for obj in self._objects.values():
            if name in obj.programs:
                return obj.programs[name]
        raise ValidationError(f"no loaded object ({', '.join(self._objects)}) has a program {name!r}")

    def run(self, frame: bytes, prog: str = "cil_from_container", *, ifindex: int = 1, repeat: int = 1) -> Run:
        """Run ``prog`` on ``frame`` arriving on ``ifindex`` (``repeat`` times, in the namespace).

        Redirects are returned, not performed. Raises :class:`ValidationError` for an unknown
        program or ``repeat`` < 1, :class:`BpfError` when the kernel refuses the run (EINVAL for a
        frame shorter than its link and IPv4 headers); nothing is counted then.
        """
        program = self.program(prog)
        before = self.tallies()
        ctx = XdpContext(ingress_ifindex=ifindex) if program.type == ProgType.XDP else SkbContext(ifindex=ifindex)
        with entered(self.netns):
            res = program.run(frame, repeat=repeat, ctx=ctx)
        counted = self.tallies()
        counted.subtract(before)
        return Run(res, +counted)

    # -- endpoints -----------------------------------------------------------------------------------
    def set_endpoint(self, row: EndpointRow, lxc_id: int) -> None:
        """Write ``row`` into ``cilium_lxc`` as endpoint ``lxc_id`` (replacing a row of that IP).

        Raises :class:`BpfError` if the map refuses the update.
        """
        self.maps.endpoints.set(row.key(), row.info(lxc_id))

    def add_endpoints(self, *rows: EndpointRow) -> None:
        """Write ``rows`` as endpoints 1, 2, ... in order. Raises as :meth:`set_endpoint`."""
        for lxc_id, row in enumerate(rows, start=1):
            self.set_endpoint(row, lxc_id)

    # -- metrics -------------------------------------------------------------------------------------
    def metrics_by_key(self) -> dict[MetricsKey, tuple[int, int]]:
        """``cilium_metrics`` as (packets, bytes) per full key (with the source line), summed over CPUs."""
        return {k: (sum(v.count for v in per_cpu), sum(v.bytes for v in per_cpu))
                for k, per_cpu in self.maps.metrics.items()}

    def tallies(self) -> Counter[Tally]:
        """Packets counted so far, by (reason, direction, file), summed over CPUs and lines."""
        out: Counter[Tally] = Counter()
        for k, (packets, _) in self.metrics_by_key().items():
            out[Tally(k.reason, k.dir, k.file)] += packets
        return out

    def counts(self) -> Counter[int]:
        """Packets counted so far by reason, summed over CPUs, lines, files and directions."""
        out: Counter[int] = Counter()
        for tally, n in self.tallies().items():
            out[tally.reason] += n
        return out

    # -- LB maps and events ----------------------------------------------------------------------------
    @property
    def lb(self) -> LbMaps:
        """The node's LB maps (opened from the pins on first use, with the config's Maglev size).

        Raises :class:`BpfError` if the objects pinned no LB maps.
        """
        if self._lb is None:
            self._lb = LbMaps(self.pin_dir, self.config.maglev_table_size)
        return self._lb

    def event_records(self) -> list[bytes]:
        """Every record waiting in the ``cilium_events`` ring buffer, consumed (oldest first).

        The ring is opened from its pin on first use. Raises :class:`BpfError` if it is not pinned.
        """
        if self._ring is None:
            self._ring_map = Map.open_pinned(os.path.join(self.pin_dir, EVENTS_NAME))
            self._ring = RingBuffer(self._ring_map)
        out: list[bytes] = []
        while batch := self._ring.poll(0):
            out += batch
        return out

    def events(self) -> list[DropEvent | TraceEvent | PolicyVerdictEvent]:
        """:meth:`event_records`, decoded. Raises :class:`EventDecodeError` for a record it cannot read."""
        return [decode(r) for r in self.event_records()]

    # -- lifetime --------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the ring, the LB maps, the maps opened from pins and the objects (newest first);
        remove the pin directory if it was made here. Safe to call twice."""
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._ring_map is not None:
            self._ring_map.close()
            self._ring_map = None
        if self._lb is not None:
            self._lb.close()
            self._lb = None
        self.maps.close()
        for obj in reversed(self._objects.values()):
            obj.close()
        self._objects.clear()
        if self._own_pin_dir:
            fs.remove_pin_dir(self.pin_dir)
            self._own_pin_dir = False

    def __enter__(self) -> DatapathObjects:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DatapathObjects {list(self._objects)} pins={self.pin_dir} netns={self.netns}>"


class DatapathFactory:
    """What the ``datapath_objects`` fixture yields: :class:`DatapathObjects` made in one namespace
    and one pin directory, and the devices a test needs there before loading (the node's ifindexes
    are ``.rodata``).

    Calling it loads a :class:`DatapathObjects` (arguments as its constructor's, without
    ``pin_dir``/``netns``) and raises as that does; :meth:`close` closes every one made, newest first.
    """

    def __init__(self, netns: str, pin_dir: str) -> None:
        self.netns = netns
        self.pin_dir = pin_dir
        self._made: list[DatapathObjects] = []

    def __call__(self, config: DatapathConfig | None = None, objects: Iterable[ObjectName] = ("lxc",), *,
                 tunnel_ifindex: int = 0, native_ifindex: int = 0, host_netns_cookie: int = 0,
                 arp_responder: bool = True, xdp_nodeport: bool = True,
                 native_mac: str | None = None) -> DatapathObjects:
        dp = DatapathObjects(config, objects, pin_dir=self.pin_dir, netns=self.netns, tunnel_ifindex=tunnel_ifindex,
                             native_ifindex=native_ifindex, host_netns_cookie=host_netns_cookie,
                             arp_responder=arp_responder, xdp_nodeport=xdp_nodeport, native_mac=native_mac)
        self._made.append(dp)
        return dp

    # -- devices in the namespace ------------------------------------------------------------------------
    def ip(self, *args: str) -> None:
        """Run ``ip -n <netns> ARGS`` (iproute2's syntax for routes and neighbours reads best in tests).

        Raises :class:`CiliumliteError` with ip's message if it fails.
        """
        res = subprocess.run(["ip", "-n", self.netns, *args], capture_output=True, text=True, timeout=10)
        if res.returncode != 0:
            raise CiliumliteError(f"ip -n {self.netns} {' '.join(args)}: {res.stderr.strip()}")

    def veth(self, name: str, *, mac: str | None = None) -> int:
        """A veth pair ``name`` / ``name-peer`` (a test stand-in for any device: it needs no extra
        kernel module), both ends up; returns the ifindex of ``name``. Raises as :meth:`ip`."""
        self.ip("link", "add", name, *(("address", mac) if mac else ()), "type", "veth", "peer", "name",
                f"{name}-peer")
        for dev in (name, f"{name}-peer"):
            self.ip("link", "set", dev, "up")
        return self.ifindex(name)

    def underlay(self, name: str, address: str, *, mac: str | None = None,
                 neighbours: Mapping[str, str] | None = None) -> int:
        """A veth ``name`` standing in for the node's NIC, up, with ``address`` (``"10.0.0.12/24"``)
        and a permanent neighbour entry for each ``neighbours`` IP -> MAC (so FIB lookups through it
        resolve); returns its ifindex. Raises as :meth:`ip`."""
        index = self.veth(name, mac=mac)
        self.ip("addr", "add", address, "dev", name)
        for ip, lladdr in (neighbours or {}).items():
            self.ip("neigh", "add", ip, "lladdr", lladdr, "dev", name, "nud", "permanent")
        return index

    def ifindex(self, name: str) -> int:
        """The ifindex of device ``name`` in the namespace. Raises :class:`CiliumliteError` if none."""
        with devices.iproute(self.netns) as ipr:
            index = devices.ifindex(ipr, name)
        if index is None:
            raise CiliumliteError(f"no device {name!r} in namespace {self.netns}")
        return index

    def close(self) -> None:
        """Close every :class:`DatapathObjects` made here, newest first (the pins stay for the
        ``bpffs_dir`` fixture to remove)."""
        while self._made:
            self._made.pop().close()
