"""Records of tests/bpf/progs/test_maps.c, shared by the bpf-tier tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from ciliumlite.bpf import U8, U16, U32, U64, Record


@dataclass(frozen=True, slots=True)
class HashKey(Record, c_name="test_key"):
    """``struct test_key``; the C member ``pad`` needs no field."""

    a: Annotated[int, U32]
    b: Annotated[int, U16]
    c: Annotated[int, U8]


@dataclass(frozen=True, slots=True)
class HashValue(Record, c_name="test_value"):
    """``struct test_value``."""

    x: Annotated[int, U64]
    y: Annotated[int, U32]
    z: Annotated[int, U32]
