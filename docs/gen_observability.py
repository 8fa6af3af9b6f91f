"""Plot a real scrape series of a lab run: docs/img/observability-lab.png (docs/observability.md).

Run as root from the repository root: ``sudo .venv/bin/python docs/gen_observability.py``.

A one-node cluster with policy on, namespaces ``x`` (isolated for ingress) and ``y``; pods ``a``, ``b``
in ``x`` and ``c`` in ``y``. For 40 seconds a background loop pings: ``a -> c`` all along (allowed),
``b -> a`` from 10 s to 25 s (denied: ``Policy denied``), a TCP connection ``a -> c`` every second
(conntrack entries), and a conntrack GC pass every 10 s. ``/metrics`` is served on 127.0.0.1 (a
free port) and scraped once a second with an HTTP client; each scrape is parsed with
``prometheus_client.parser``. The PromQL panels of ``docs/grafana/ciliumlite-dashboard.json`` are
computed from the series the same way (``rate(...[5s])`` here, over 5 scrapes) and plotted with
matplotlib. The raw series go to ``docs/img/observability-lab.json``.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ciliumlite import prometheus as prom
from ciliumlite.lab import Lab

OUT = Path(__file__).resolve().parent / "img"
SECONDS, DENY_FROM, DENY_TO = 40, 10, 25

DENY_X_INGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"""

Series = dict[str, list[tuple[float, float]]]


def scrape(url: str) -> dict[str, float]:
    """One scrape, summed by (name, the label that matters for the panels)."""
    with urllib.request.urlopen(url, timeout=10) as res:
        text = res.read().decode()
    out: dict[str, float] = defaultdict(float)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name
            for label in ("reason", "direction", "map_name", "status"):
                if label in s.labels:
                    key += f"|{label}={s.labels[label]}"
            out[key] += s.value
    return out


def rate(points: list[tuple[float, float]], window: int = 5) -> tuple[list[float], list[float]]:
    """PromQL's rate() over ``window`` scrapes: (times, per-second increase)."""
    ts, vs = [], []
    for i in range(window, len(points)):
        (t0, v0), (t1, v1) = points[i - window], points[i]
        ts.append(t1)
        vs.append(max(0.0, v1 - v0) / (t1 - t0))
    return ts, vs


def main() -> None:
    series: Series = defaultdict(list)
    with Lab("obs") as lab:
        cl = lab.cluster(["n1"], routing="vxlan", bgp=False, enable_policy=True)
        cl.set_namespace("x", {"ns": "x"})
        cl.set_namespace("y", {"ns": "y"})
        node = cl.node("n1")
        a = node.add_pod("a", namespace="x", labels={"pod": "a"})
        b = node.add_pod("b", namespace="x", labels={"pod": "b"})
        c = node.add_pod("c", namespace="y", labels={"pod": "c"})
        c.ensure_echo_server(8080)
        dp = node.datapath
        assert dp is not None
        cl.apply_policy(DENY_X_INGRESS)
        gc = prom.GcStats()
        registry = prom.CollectorRegistry()
        registry.register(prom.DatapathCollector(lab=lab.prefix, gc=gc))
        stop = threading.Event()
        start = time.monotonic()

        def traffic() -> None:
            last_gc = 0.0
            while not stop.is_set():
                t = time.monotonic() - start
                a.ping(c, count=5, interval=0.05, timeout=0.5)
                if DENY_FROM <= t < DENY_TO:
                    b.ping(a, count=5, interval=0.05, timeout=0.2)
                a.tcp_echo(c, 8080, timeout=1.0)
                if t - last_gc >= 10:
                    gc.run(dp.config.node_name, dp.gc_conntrack)
                    last_gc = t

        with prom.serve("127.0.0.1:0", registry) as server:
            worker = threading.Thread(target=traffic, daemon=True)
            worker.start()
            try:
                scrapes: list[tuple[float, dict[str, float]]] = []
                while (t := time.monotonic() - start) < SECONDS:
                    scrapes.append((t, scrape(server.url)))
                    time.sleep(max(0.0, 1.0 - (time.monotonic() - start - t)))
            finally:
                stop.set()
                worker.join(timeout=30)
    # A series absent from a scrape (no drop yet) is 0 there, as a counter that was never incremented.
    for key in sorted({k for _, got in scrapes for k in got}):
        series[key] = [(t, got.get(key, 0.0)) for t, got in scrapes]
    OUT.mkdir(exist_ok=True)
    (OUT / "observability-lab.json").write_text(json.dumps(series, indent=0, sort_keys=True))
    plot(series)


def plot(series: Series) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    ax = axes[0]
    for key in sorted(k for k in series if k.startswith("cilium_forward_count_total|direction=")):
        ax.plot(*rate(series[key]), label=f"direction={key.split('=')[1]}")
    ax.set_title("sum by (direction) (rate(cilium_forward_count_total[5s]))")
    ax.set_ylabel("packets/s")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[1]
    drops: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for key, pts in series.items():
        if key.startswith("cilium_drop_count_total|"):
            reason = key.split("|")[1].split("=", 1)[1]
            if not drops[reason]:
                drops[reason] = [(t, 0.0) for t, _ in pts]
            drops[reason] = [(t, d + v) for (t, d), (_, v) in zip(drops[reason], pts, strict=True)]
    for reason, pts in sorted(drops.items()):
        ax.plot(*rate(pts), label=reason)
    ax.axvspan(DENY_FROM, DENY_TO, color="tab:red", alpha=0.08, label="b -> a pings (denied)")
    ax.set_title("sum by (reason) (rate(cilium_drop_count_total[5s]))")
    ax.set_ylabel("packets/s")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[2]
    for key in sorted(k for k in series if k.startswith("cilium_datapath_conntrack_gc_entries|status=alive")):
        ax.plot(*zip(*series[key], strict=True), label="conntrack entries (alive)")
    runs = series.get("cilium_datapath_conntrack_gc_runs_total|status=completed", [])
    for (_, v0), (t1, v1) in itertools.pairwise(runs):
        if v1 > v0:
            ax.axvline(t1, color="grey", linestyle=":", linewidth=1)
    ax.set_title("cilium_datapath_conntrack_gc_entries{status=\"alive\"} (dotted: a GC run)")
    ax.set_xlabel("seconds since start (one scrape a second)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "observability-lab.png", dpi=90)
    print(f"wrote {OUT / 'observability-lab.png'}")


if __name__ == "__main__":
    main()
