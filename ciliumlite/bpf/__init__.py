"""The bpf SDK: libbpf objects, programs, maps and links for Python. Knows nothing of Cilium.

>>> from ciliumlite.bpf import BpfObject
>>> with BpfObject.load_file("prog.o", config={"port": 80}) as obj:   # doctest: +SKIP
...     link = obj.program("tc_count").attach_tc("veth0", netns="lab-node1")
"""

from ciliumlite.bpf import features
from ciliumlite.bpf.errors import (
    BpfError,
    CiliumliteError,
    LayoutError,
    MapFullError,
    NotSupportedError,
    ValidationError,
    VerifierError,
)
from ciliumlite.bpf.link import AttachPoint, ClsactLink, FdLink, Link, LinkInfo
from ciliumlite.bpf.map import ANY, EXIST, NOEXIST, Map, MapInfo, MapType, UpdateFlags
from ciliumlite.bpf.object import BpfObject, Rodata
from ciliumlite.bpf.program import ProgInfo, Program, ProgType, RunResult, SkbContext, TcAction, XdpAction
from ciliumlite.bpf.record import BE16, BE32, IPV4, MAC, S32, S64, U8, U16, U32, U64, At, Bytes, Record

__all__ = [
    "ANY", "BE16", "BE32", "EXIST", "IPV4", "MAC", "NOEXIST", "S32", "S64", "U8", "U16", "U32", "U64",
    "At", "AttachPoint", "BpfError", "BpfObject", "Bytes", "CiliumliteError", "ClsactLink", "FdLink",
    "LayoutError", "Link", "LinkInfo", "Map", "MapFullError", "MapInfo", "MapType", "NotSupportedError",
    "ProgInfo", "ProgType", "Program", "Record", "Rodata", "RunResult", "SkbContext", "TcAction", "UpdateFlags",
    "ValidationError", "VerifierError", "XdpAction", "features",
]
