"""Ownership: what ciliumlite made on the host, recorded as it is made, and its safe removal.

* :mod:`~ciliumlite.ownership.identity`: a process by pid **and** start time (a reused pid is
  never ours).
* :mod:`~ciliumlite.ownership.record`: the record of a lab or test session, rewritten atomically
  before each thing is made and after each is removed.
* :mod:`~ciliumlite.ownership.sweep`: plans and runs the removal of what a record lists
  (``ciliumlite lab destroy``), and nothing else.
* :mod:`~ciliumlite.ownership.host`: ``ciliumlite cleanup``, for datapaths whose process has gone
  (their registry entry is their record): programs on the namespace's devices, pins, state files.

It imports only the standard library, :mod:`ciliumlite.bpf` and :mod:`ciliumlite.datapath`
(registry paths), so the node layer and everything above may use it.
"""

from ciliumlite.ownership.identity import ProcessId
from ciliumlite.ownership.record import Record, RecordInfo, read_all, record_dir

__all__ = ["ProcessId", "Record", "RecordInfo", "read_all", "record_dir"]
