"""The agent's endpoints by container id: request checks, identities from the store, the datapath.

A runtime names a container by its id (``CNI_CONTAINERID``) and its network namespace by a path
(``CNI_NETNS``: ``/var/run/netns/cni-…`` or ``/proc/<pid>/ns/net``); the datapath knows endpoints
by IP. This table joins the two, makes a repeated ADD of the same container return what the first
one made, and refuses a namespace that is not a separate network namespace: the pod side of an
endpoint gets a default route, which must never land in the node's or the host's namespace.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ciliumlite.agent import endpoint_state
from ciliumlite.agent.errors import AgentApiError, Conflict, KvstoreUnavailable, NotFound
from ciliumlite.bpf.errors import ValidationError
from ciliumlite.bpf.netns import NETNS_RUN_DIR, NetnsRef, netns_inode
from ciliumlite.cluster.cluster import policy_store
from ciliumlite.cluster.store import ClusterStore, EndpointRecord
from ciliumlite.datapath import devices
from ciliumlite.endpoint import Endpoint
from ciliumlite.policy.labels import pod_labels

log = logging.getLogger("ciliumlite.agent")

#: The CNI spec's container id: alphanumerics, then also ``_ . -``.
CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,255}")
IFNAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,14}")
_NS_GET_NSTYPE = 0xB703  # ioctl on a namespace fd: its CLONE_NEW* type (linux/nsfs.h)
_CLONE_NEWNET = 0x40000000
_BODY_KEYS = {"netns", "ifname", "labels", "name"}
#: The label that carries a pod's Kubernetes namespace (Cilium's ``k8s:io.kubernetes.pod.namespace``).
NAMESPACE_LABEL = "io.kubernetes.pod.namespace"


class EndpointDatapath(Protocol):
    """What the table needs of the node's datapath (``ciliumlite.Datapath`` has it)."""

    def add_endpoint(self, pod_netns: str, *, name: str | None = ..., labels: dict[str, str] | None = ...,
                     identity: int | None = ..., pod_ifname: str = ...) -> Endpoint:
        """Connect a pod namespace."""

    def remove_endpoint(self, ep: Endpoint) -> None:
        """Disconnect it."""

    def relabel_endpoint(self, ep: Endpoint, *, identity: int, labels: dict[str, str] | None = ...) -> Endpoint:
        """Give it a new identity in place."""


@dataclass
class AgentEndpoint:
    """One container's endpoint: what the runtime asked for and what the datapath made."""

    container_id: str
    netns: str
    ifname: str
    name: str
    labels: dict[str, str]
    endpoint: Endpoint
    netns_inode: int
    gateway: str
    mtu: int
    created: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        """The API's view (``PUT``/``GET /v1/endpoint/{id}``): addresses, devices, identity."""
        ep = self.endpoint
        return {"container_id": self.container_id, "name": self.name, "endpoint": ep.as_row(),
                "ip": str(ep.ip), "prefix": 32, "gateway": self.gateway, "mac": ep.mac,
                "ifname": self.ifname, "netns": self.netns, "host_ifname": ep.ifname,
                "host_ifindex": ep.ifindex, "host_mac": ep.node_mac, "identity": ep.identity,
                "labels": dict(self.labels), "mtu": self.mtu, "created": self.created}

    def record(self) -> dict[str, Any]:
        """The row the agent's table on disk keeps (:mod:`ciliumlite.agent.endpoint_state`)."""
        return {"container_id": self.container_id, "netns": self.netns, "ifname": self.ifname, "name": self.name,
                "labels": dict(self.labels), "netns_inode": self.netns_inode, "gateway": self.gateway,
                "mtu": self.mtu, "created": self.created, "ip": str(self.endpoint.ip),
                "endpoint_id": self.endpoint.id}


@dataclass(frozen=True)
class EndpointRequest:
    """A validated ``PUT /v1/endpoint/{id}`` body."""

    container_id: str
    netns: str
    ifname: str
    labels: dict[str, str]
    name: str

    @classmethod
    def parse(cls, container_id: str, body: Any) -> EndpointRequest:
        """Check the id and the body. Raises :class:`ValidationError` naming the field that is wrong."""
        if not CONTAINER_ID.fullmatch(container_id or ""):
            raise ValidationError(f"container id {container_id!r}: use 1-256 of A-Z a-z 0-9 _ . - "
                                  "(starting with a letter or digit)")
        if not isinstance(body, Mapping):
            raise ValidationError(f"the body must be a JSON object, not {type(body).__name__}")
        unknown = sorted(set(body) - _BODY_KEYS)
        if unknown:
            raise ValidationError(f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_BODY_KEYS))})")
        netns = body.get("netns")
        if not isinstance(netns, str) or not netns:
            raise ValidationError("netns: required, a namespace name or a path such as /var/run/netns/cni-1234")
        ifname = body.get("ifname", "eth0")
        if not isinstance(ifname, str) or not IFNAME.fullmatch(ifname):
            raise ValidationError(f"ifname: {ifname!r} is not an interface name (1-15 of A-Z a-z 0-9 _ . -)")
        labels = parse_labels(body.get("labels") or {})
        name = body.get("name") or container_id[:63]
        if not isinstance(name, str) or len(name) > 253:
            raise ValidationError(f"name: {name!r} is not a string of at most 253 characters")
        return cls(container_id, netns, ifname, labels, name)


def parse_labels(labels: Any) -> dict[str, str]:
    """A request's ``labels``: an object of non-empty strings to strings. Raises :class:`ValidationError`."""
    if not isinstance(labels, Mapping) or not all(isinstance(k, str) and k and isinstance(v, str)
                                                   for k, v in labels.items()):
        raise ValidationError(f"labels: {labels!r} is not an object of non-empty strings to strings")
    return dict(labels)


def check_pod_netns(netns: str, forbidden: Mapping[int, str]) -> int:
    """The inode of the network namespace ``netns`` (a name under /var/run/netns, or a path).

    Raises :class:`ValidationError` when it does not exist, is no network namespace, or is one of
    ``forbidden`` (inode -> what it is: the node's namespace, the host's).
    """
    path = netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)
    if "/" not in netns and not re.fullmatch(r"[A-Za-z0-9_.\-]{1,255}", netns):
        raise ValidationError(f"netns: {netns!r} is not a namespace name")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ValidationError(f"netns: {netns} does not exist or cannot be opened ({exc.strerror})") from None
    try:
        try:
            nstype = fcntl.ioctl(fd, _NS_GET_NSTYPE)
        except OSError:
            nstype = -1
        if nstype != _CLONE_NEWNET:
            raise ValidationError(f"netns: {netns} is not a network namespace")
        inode = os.fstat(fd).st_ino
    finally:
        os.close(fd)
    if inode in forbidden:
        raise ValidationError(f"netns: {netns} is {forbidden[inode]}, not a pod's own namespace")
    return inode


def forbidden_namespaces(node_netns: NetnsRef) -> dict[int, str]:
    """The namespaces a pod may never be: the node's, this process's and the host's (pid 1's)."""
    out: dict[int, str] = {}
    # pid 1 may be unreadable (a sandboxed init); kthreadd (pid 2) lives in the host's namespace too.
    for ref, what in ((f"/proc/{os.getpid()}/ns/net", "the agent's own namespace"),
                      ("/proc/1/ns/net", "the host's namespace"), ("/proc/2/ns/net", "the host's namespace"),
                      (node_netns, "the node's namespace")):
        try:
            out[netns_inode(ref)] = what
        except OSError:
            continue
    return out


class EndpointTable:
    """The endpoints one agent made, by container id; thread-safe (one change at a time).

    ``store`` allocates identities (``allocate_identity``) and, when it has them, records the
    ipcache (``put_ip_identity`` / ``delete_ip_identity``: each endpoint's IP, identity, this
    node's ``node_ip``, the pod's namespace from its ``io.kubernetes.pod.namespace`` label).
    With ``state_path``, the table is kept on disk there after every change (see
    :mod:`ciliumlite.agent.endpoint_state`) for :meth:`restore` in the next agent.
    """

    def __init__(self, datapath: EndpointDatapath, store: ClusterStore, *, node_netns: NetnsRef,
                 gateway: str, mtu: int, node_ip: str = "0.0.0.0",
                 on_error: Callable[[str], None] | None = None, state_path: str | None = None,
                 node_name: str = "") -> None:
        self._datapath = datapath
        self._datapath_has_bpf = getattr(datapath, "maps", None) is not None
        # With policy (the datapath enforces it and the store keeps endpoints): identities come
        # from the pods' security labels and every endpoint is published with them.
        enforcing = bool(getattr(getattr(datapath, "config", None), "enable_policy", False))
        self._policy = policy_store(store) if enforcing else None
        self._node_ip = node_ip
        self._store = store
        self._node_netns = node_netns
        self._gateway = gateway
        self._mtu = mtu
        self._on_error = on_error or (lambda _msg: None)
        self._by_id: dict[str, AgentEndpoint] = {}
        # Containers whose endpoint is being made: on disk before the datapath is touched.
        self._pending: dict[str, dict[str, Any]] = {}
        self._state_path = state_path
        self._node_name = node_name
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_id)

    def all(self) -> list[AgentEndpoint]:
        """Every endpoint, oldest first."""
        with self._lock:
            return sorted(self._by_id.values(), key=lambda e: e.endpoint.id)

    def get(self, container_id: str) -> AgentEndpoint:
        """The endpoint of a container. Raises :class:`NotFound`."""
        with self._lock:
            found = self._by_id.get(container_id)
        if found is None:
            raise NotFound(f"no endpoint for container {container_id!r}")
        return found

    def verify(self, container_id: str) -> list[str]:
        """What is wrong with a container's endpoint now (empty: all is as made).

        Checks that its namespace is still the same one, that the pod's interface is there with the
        endpoint's address, that the host-side device is there and the program attached. Raises
        :class:`NotFound`.
        """
        rec = self.get(container_id)
        ep, problems = rec.endpoint, []
        try:
            if check_pod_netns(rec.netns, {}) != rec.netns_inode:
                problems.append(f"{rec.netns} is another network namespace than the one the endpoint was made in")
        except ValidationError as exc:
            return [str(exc)]
        try:
            with devices.iproute(rec.netns) as ipr:
                idx = devices.ifindex(ipr, rec.ifname)
                if idx is None:
                    problems.append(f"no {rec.ifname} in {rec.netns}")
                elif not any(a.get_attr("IFA_ADDRESS") == str(ep.ip) for a in ipr.get_addr(index=idx)):
                    problems.append(f"{rec.ifname} in {rec.netns} lacks {ep.ip}")
            with devices.iproute(self._node_netns) as ipr:
                if devices.ifindex(ipr, ep.ifname) is None:
                    problems.append(f"host-side device {ep.ifname} is gone")
        except Exception as exc:  # pyroute2 errors: report, do not fail the check itself
            problems.append(f"reading the devices: {type(exc).__name__}: {exc}")
        if self._datapath_has_bpf and ep.link is None:
            problems.append(f"no program attached to {ep.ifname}")
        return problems

    def add(self, req: EndpointRequest) -> tuple[bool, AgentEndpoint]:
        """Make the endpoint of ``req`` (or return the one made for the same container before).

        Returns (created, endpoint). Raises :class:`ValidationError` (bad namespace, or what the
        datapath refuses), :class:`Conflict` (the id is in use with another namespace or ifname, or
        that namespace's ifname belongs to another container), :class:`KvstoreUnavailable` (no
        identity could be allocated); on any failure nothing is left behind.
        """
        with self._lock:
            inode = check_pod_netns(req.netns, forbidden_namespaces(self._node_netns))
            old = self._by_id.get(req.container_id)
            if old is not None:
                if (old.netns_inode, old.ifname) == (inode, req.ifname):
                    return False, old
                raise Conflict(f"container {req.container_id} already has an endpoint in {old.netns} "
                               f"({old.ifname}); DELETE it first")
            for other in self._by_id.values():
                if (other.netns_inode, other.ifname) == (inode, req.ifname):
                    raise Conflict(f"{req.ifname} in {req.netns} is the endpoint of container {other.container_id}")
            labels = req.labels or {"name": req.name}
            try:
                identity = self._allocate(labels)
            except ValidationError:
                raise
            except Exception as exc:
                raise KvstoreUnavailable(f"cannot allocate a security identity: {type(exc).__name__}: {exc}") from exc
            self._pending[req.container_id] = {
                "container_id": req.container_id, "netns": req.netns, "ifname": req.ifname, "name": req.name,
                "labels": labels, "netns_inode": inode, "gateway": self._gateway, "mtu": self._mtu,
                "created": time.time(), "ip": None, "endpoint_id": None}
            try:
                self._save()  # the intent first: a crash after the datapath made it still finds the container
                ep = self._datapath.add_endpoint(req.netns, name=req.name, labels=labels, identity=identity,
                                                 pod_ifname=req.ifname)
            except BaseException:
                self._pending.pop(req.container_id, None)
                self._save_quietly()
                raise
            rec = AgentEndpoint(req.container_id, req.netns, req.ifname, req.name, labels, ep, inode,
                                self._gateway, self._mtu, created=self._pending.pop(req.container_id)["created"])
            self._by_id[req.container_id] = rec
            self._save_quietly()  # the pending record on disk matches the endpoint already
        self._publish_ip(rec)
        log.info("endpoint %s: %s (identity %d) for container %s in %s", ep.id, ep.ip, identity,
                 req.container_id, req.netns)
        return True, rec

    def remove(self, container_id: str) -> AgentEndpoint:
        """Remove a container's endpoint (devices, map rows, ipcache entry). Raises :class:`NotFound`."""
        with self._lock:
            rec = self._by_id.get(container_id)
            if rec is None:
                raise NotFound(f"no endpoint for container {container_id!r}")
            self._datapath.remove_endpoint(rec.endpoint)
            del self._by_id[container_id]
            self._save_quietly()  # a stale record is dropped by the next restore (no endpoint matches)
        self._withdraw_ip(rec)
        log.info("endpoint %s: %s of container %s removed", rec.endpoint.id, rec.endpoint.ip, container_id)
        return rec

    def relabel(self, container_id: str, labels: Mapping[str, str] | None = None) -> AgentEndpoint:
        """Give a container's endpoint new labels (``None``: the same ones, its namespace's labels
        having changed in the store), as ``cilium endpoint labels`` does: the identity of its
        security labels is allocated and written in place (``Datapath.relabel_endpoint``: no
        program reloaded, its connections stay), the table saved and the endpoint record
        published, so every agent's next sync follows. Its Kubernetes namespace cannot change
        (an ``io.kubernetes.pod.namespace`` label is ignored). Raises :class:`NotFound`,
        :class:`KvstoreUnavailable` (no identity could be allocated: nothing changed)."""
        with self._lock:
            rec = self._by_id.get(container_id)
            if rec is None:
                raise NotFound(f"no endpoint for container {container_id!r}")
            new = {k: v for k, v in (rec.labels if labels is None else labels).items() if k != NAMESPACE_LABEL}
            if NAMESPACE_LABEL in rec.labels:
                new[NAMESPACE_LABEL] = rec.labels[NAMESPACE_LABEL]
            try:
                identity = self._allocate(new)
            except Exception as exc:
                raise KvstoreUnavailable(f"cannot allocate a security identity: {type(exc).__name__}: {exc}") from exc
            old_identity = rec.endpoint.identity
            rec.endpoint = self._datapath.relabel_endpoint(rec.endpoint, identity=identity, labels=new)
            rec.labels = new
            self._save_quietly()
        self._publish_ip(rec)
        log.info("endpoint %s: %s relabelled, identity %d -> %d", rec.endpoint.id, rec.endpoint.ip,
                 old_identity, identity)
        return rec

    # -- the table on disk --------------------------------------------------------------------------
    def _records(self) -> list[dict[str, Any]]:
        done = [r.record() for r in sorted(self._by_id.values(), key=lambda e: e.endpoint.id)]
        return done + [dict(p) for p in self._pending.values()]

    def _save(self) -> None:
        """Write the table (under the lock). Raises :class:`AgentApiError` when it cannot be written."""
        if self._state_path is None:
            return
        try:
            endpoint_state.write(self._state_path, self._node_name, self._records())
        except OSError as exc:
            raise AgentApiError(f"cannot record the endpoint table in {self._state_path}: {exc}") from exc

    def _save_quietly(self) -> None:
        # After the datapath changed: the change stands; a failed write is reported, and the next
        # successful one (or the restore's matching by namespace) catches up.
        try:
            self._save()
        except AgentApiError as exc:
            self._on_error(str(exc))

    def restore(self, endpoints: Sequence[Endpoint]) -> list[str]:
        """Take the containers back from the table on disk for a restored datapath's ``endpoints``.

        A record is matched to the endpoint with its address (or, for one written before its
        endpoint existed, with its pod namespace and interface); its identity is claimed again and
        its ipcache entry re-published (the dead agent's lease takes them with it). Records whose
        endpoint is gone are dropped; endpoints without a record stay in the datapath but cannot
        be deleted by container id. Returns one line for each such discrepancy (empty: all
        restored). Raises :class:`~ciliumlite.agent.endpoint_state.EndpointStateError` for a table
        that cannot be trusted (nothing is taken then).
        """
        if self._state_path is None:
            return []
        records = endpoint_state.read(self._state_path, self._node_name)
        by_ip = {str(ep.ip): ep for ep in endpoints}  # those not taken by a record yet
        notes: list[str] = []
        restored: list[AgentEndpoint] = []
        with self._lock:
            for r in records:
                ep = by_ip.get(str(r["ip"])) if r["ip"] is not None else self._match_pending(r, by_ip.values())
                if ep is None or (r["endpoint_id"] is not None and ep.id != r["endpoint_id"]):
                    notes.append(f"container {r['container_id']}: its endpoint ({r['ip'] or 'being made'}) is "
                                 "not in the datapath any more: record dropped")
                    continue
                rec = AgentEndpoint(str(r["container_id"]), str(r["netns"]), str(r["ifname"]), str(r["name"]),
                                    dict(r["labels"]), ep, int(r["netns_inode"]), str(r["gateway"]), int(r["mtu"]),
                                    created=float(r["created"]))
                self._by_id[rec.container_id] = rec
                by_ip.pop(str(ep.ip), None)
                restored.append(rec)
            notes += [f"endpoint {ep.id} ({ep.ip}, {ep.pod_netns}) has no container id on record: it keeps "
                      "forwarding, but no CNI DEL can name it" for ep in by_ip.values()]
            self._save_quietly()
        for rec in restored:
            self._reclaim(rec)
        return notes

    @staticmethod
    def _match_pending(r: dict[str, Any], endpoints: Iterable[Endpoint]) -> Endpoint | None:
        # A record written before its endpoint existed: the endpoint made in its namespace, if any
        # (the datapath names the pod side by the namespace the request gave).
        return next((ep for ep in endpoints if ep.pod_netns == r["netns"]), None)

    def _reclaim(self, rec: AgentEndpoint) -> None:
        """Claim a restored endpoint's identity and ipcache entry again, on this agent's lease."""
        try:
            identity = self._allocate(rec.labels)
        except Exception as exc:
            self._on_error(f"identity of restored endpoint {rec.endpoint.ip}: {exc}")
        else:
            if identity != rec.endpoint.identity:
                self._on_error(f"restored endpoint {rec.endpoint.ip} has identity {rec.endpoint.identity}, but its "
                               f"labels now have {identity}: recreate the pod to pick it up")
        self._publish_ip(rec)

    def _security_labels(self, labels: Mapping[str, str]) -> dict[str, str]:
        """A pod's security labels as policy selects them (``k8s:app=web``, its namespace and the
        namespace's labels from the store), its namespace from its ``io.kubernetes.pod.namespace``
        label (default ``default``)."""
        namespace = labels.get(NAMESPACE_LABEL) or "default"
        own = {k: v for k, v in labels.items() if k != NAMESPACE_LABEL}
        ns_labels = getattr(self._store, "namespace_labels", None)
        return pod_labels(namespace, own, ns_labels(namespace) if ns_labels is not None else {}).as_dict()

    def _allocate(self, labels: Mapping[str, str]) -> int:
        return self._store.allocate_identity(self._security_labels(labels) if self._policy is not None else labels)

    # The ipcache entries are best effort: the endpoint works without them (a pod on another
    # node is then world to policy), and a kvstore outage must not fail a pod's creation.
    def _publish_ip(self, rec: AgentEndpoint) -> None:
        if self._policy is not None:
            try:
                namespace = rec.labels.get(NAMESPACE_LABEL) or "default"
                self._policy.put_endpoint(EndpointRecord(
                    str(rec.endpoint.ip), self._node_name, self._node_ip, rec.endpoint.identity,
                    self._security_labels(rec.labels), {}, f"{namespace}/{rec.name}"))
            except Exception as exc:
                self._on_error(f"endpoint record of {rec.endpoint.ip}: {exc}")
            return
        put = getattr(self._store, "put_ip_identity", None)
        if put is None:
            return
        try:
            put(str(rec.endpoint.ip), rec.endpoint.identity, self._node_ip,
                namespace=rec.labels.get(NAMESPACE_LABEL, ""), pod=rec.name)
        except Exception as exc:
            self._on_error(f"ipcache entry of {rec.endpoint.ip}: {exc}")

    def _withdraw_ip(self, rec: AgentEndpoint) -> None:
        delete = getattr(self._store, "delete_ip_identity", None)
        if delete is None:
            return
        try:
            delete(str(rec.endpoint.ip))
        except Exception as exc:
            self._on_error(f"ipcache entry of {rec.endpoint.ip}: {exc}")


__all__ = ["AgentEndpoint", "EndpointRequest", "EndpointTable", "check_pod_netns", "forbidden_namespaces",
           "parse_labels"]
