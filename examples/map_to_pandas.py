"""Maps at numpy speed: a conntrack table as structured arrays and as a pandas DataFrame.

Creates a BPF hash map from user space with the datapath's own conntrack records (``Ipv4CtTuple`` ->
``CtEntry``, as ``cilium_ct4_global`` holds them), fills it from numpy arrays in one batch syscall, reads
it back as arrays and as a DataFrame with readable addresses, asks pandas which services carry the most
bytes, and deletes the idle flows with an array of keys. No program, namespace or pin: the map goes
away with the process. Run as root (pandas comes with ``pip install 'ciliumlite[pandas]'``)::

    sudo .venv/bin/python examples/map_to_pandas.py
"""

from __future__ import annotations

import time
from ipaddress import IPv4Address

import numpy as np
import pandas as pd

from ciliumlite.bpf import Map, MapType
from ciliumlite.datapath.records import CtEntry, Ipv4CtTuple

FLOWS = 50_000
PODS, SERVICES = 200, 20


def main() -> int:
    rng = np.random.default_rng(7)
    with Map.create(MapType.HASH, "example_ct", Ipv4CtTuple, CtEntry, FLOWS) as ct:
        print(f"key dtype: {ct.key_dtype}")

        # One structured array per side; ports and addresses are host integers (the dtype is big-endian).
        keys, values = np.zeros(FLOWS, ct.key_dtype), np.zeros(FLOWS, ct.value_dtype)
        keys["daddr"] = int(IPv4Address("10.96.0.1")) + rng.integers(0, SERVICES, FLOWS)
        keys["saddr"] = int(IPv4Address("10.244.0.1")) + np.arange(FLOWS) % PODS
        keys["dport"] = np.where(keys["daddr"] % 2, 443, 80)
        keys["sport"] = 10_000 + np.arange(FLOWS) // PODS
        keys["nexthdr"] = 6
        values["packets"] = rng.integers(1, 1_000, FLOWS)
        values["bytes"] = values["packets"] * rng.integers(60, 1_500, FLOWS)
        values["rev_nat_index"] = keys["daddr"] - int(IPv4Address("10.96.0.0"))

        start = time.perf_counter()
        written = ct.update_batch(keys, values)
        print(f"update_batch: {written} entries in {(time.perf_counter() - start) * 1e3:.1f} ms")
        start = time.perf_counter()
        got_keys, got_values = ct.to_numpy()
        print(f"to_numpy: {len(got_keys)} entries in {(time.perf_counter() - start) * 1e3:.1f} ms, "
              f"values {got_values.dtype.itemsize} bytes each")

        # The typed record layer sees the same entries.
        first = Ipv4CtTuple.unpack(keys[0].tobytes())
        print(f"one entry as records: {first.saddr}:{first.sport} -> {first.daddr}:{first.dport} "
              f"packets={ct[first].packets}")

        df = ct.to_pandas(decode=True)
        with pd.option_context("display.width", 120):
            print(df[["daddr", "saddr", "dport", "sport", "packets", "bytes", "rev_nat_index"]]
                  .sort_values(["saddr", "sport"]).head().to_string(index=False))
            top = df.groupby("daddr", observed=True)["bytes"].sum().nlargest(3)
            print("top services by bytes:")
            print(top.to_string())

        idle = got_keys[got_values["packets"] < 10]
        removed = ct.delete_batch(idle)
        print(f"delete_batch: removed {removed} idle flows, {len(ct)} left")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
