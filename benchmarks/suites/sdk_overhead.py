"""sdk_overhead: what one Python call costs on top of the bpf() syscall it makes.

perf.md §7.2 E1 (syscall floor, Python ÷ bare per-call ratio) and §7.5 P2 (wall time of one
test_run call vs the kernel's own ns/run). All arms of a group are interleaved per round.

Map lookups (one existing key of ``test_hash``, tests/bpf/objects/test_maps.o), ns per call:

- ``Map.get`` on a typed map (TestKey -> TestValue records: encode key, decode value)
- ``Map.get`` on an untyped map (bytes in, bytes out)
- the raw cffi call ``lib.bpf_map_lookup_elem(fd, kbuf, vbuf)`` with preallocated buffers
- the bare syscall: ctypes ``syscall(SYS_bpf, BPF_MAP_LOOKUP_ELEM, attr, 32)`` with a prebuilt
  ``union bpf_attr`` (the reference the other arms are divided by; it includes one ctypes call)
- the same raw syscall through cffi's ``syscall()`` (no libbpf wrapper, cheaper call than ctypes)
- the same syscall from a C loop (perf.md E1; compiled at run time with ``cc`` into a temporary
  directory, given the map fd; skipped when no compiler is found): the true floor
- calibration: the null syscall ``getppid`` via C, cffi and ctypes, ``os.getppid()``, an empty loop
  iteration, ``TestKey.pack()`` and ``TestValue.unpack()``

test_run of ``tc_count`` (tests/bpf/objects/test_tc.o) on a 64-byte UDP frame:

- wall ns per ``Program.run(frame, repeat=1)`` call, and per raw cffi
  ``bpf_prog_test_run_opts`` call with prebuilt opts
- the kernel-reported ns/run (``duration``) at repeat=1 and at repeat=100000 in one call
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import statistics
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cffi

from benchmarks.harness import Arm, Context, Measurement, Summary, difference, fmt_value, interleave, ratio
from benchmarks.suites._common import TestKey, TestValue
from ciliumlite.bpf import BpfObject, Map
from ciliumlite.bpf._ffi import ffi, lib

DESCRIPTION = "Per-call cost: Map.get (typed/untyped) vs cffi vs bare bpf() syscall; test_run per call vs per run"
NEEDS_ROOT = True
DEFAULT_REPEATS = 9  # cheap arms (~40 ms each): more rounds tame this VM's noise

CALLS = 20_000
CALLS_QUICK = 5_000
TR_CALLS = 5_000
TR_CALLS_QUICK = 1_000
TR_REPEAT = 100_000
TR_KERNEL_SAMPLES = 500  # repeat=1 calls whose kernel-reported duration is taken per round (median)

#: (SYS_bpf, SYS_getppid) per architecture.
SYSCALL_NR = {"x86_64": (321, 110), "aarch64": (280, 173)}
BPF_MAP_LOOKUP_ELEM = 1
ATTR_SIZE = 32  # map_fd, pad, key, value, flags: the lookup member of union bpf_attr

GET_TYPED = "Map.get, typed records"
GET_RAW = "Map.get, untyped bytes"
CFFI = "cffi lib.bpf_map_lookup_elem, prebuilt buffers"
BARE = "bare syscall: ctypes syscall(SYS_bpf, MAP_LOOKUP_ELEM)"
CFFI_SC = "raw syscall: cffi syscall(SYS_bpf, MAP_LOOKUP_ELEM)"
C_BPF = "C loop: syscall(SYS_bpf, MAP_LOOKUP_ELEM)"
NULL_SC = "calibration: ctypes syscall(SYS_getppid)"
NULL_CFFI = "calibration: cffi syscall(SYS_getppid)"
NULL_C = "calibration: C loop syscall(SYS_getppid)"
GETPPID = "calibration: os.getppid()"
LOOP = "calibration: empty loop iteration"
PACK = "calibration: TestKey.pack()"
UNPACK = "calibration: TestValue.unpack()"

TR_RUN = "Program.run(repeat=1), wall per call"
TR_CFFI = "cffi bpf_prog_test_run_opts(repeat=1), wall per call"
TR_K1 = "kernel-reported ns/run at repeat=1"
TR_KN = f"kernel-reported ns/run at repeat={TR_REPEAT}"


def udp_frame(size: int = 64) -> bytes:
    """An Ethernet/IPv4/UDP frame of ``size`` bytes (10.0.0.1:4000 -> 10.0.0.2:5000) with a valid IP checksum."""
    payload = bytes(size - 14 - 20 - 8)
    eth = bytes.fromhex("020000000002" "020000000001") + struct.pack("!H", 0x0800)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 0, 0x4000, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    csum = sum(struct.unpack("!10H", ip))
    csum = (csum & 0xFFFF) + (csum >> 16)
    csum = ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF
    ip = ip[:10] + struct.pack("!H", csum) + ip[12:]
    udp = struct.pack("!HHHH", 4000, 5000, 8 + len(payload), 0)
    return eth + ip + udp + payload


C_LOOP = r"""
#define _GNU_SOURCE
#include <linux/bpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* usage: loop bpf|getppid <map fd> <calls> <key hex>; prints ns per call. */
int main(int argc, char **argv)
{
	unsigned char key[64] = {0}, val[512];
	union bpf_attr attr;
	struct timespec t0, t1;
	long i, n;
	size_t k;
	int bpf;

	if (argc != 5 || strlen(argv[4]) / 2 > sizeof(key))
		return 2;
	bpf = strcmp(argv[1], "bpf") == 0;
	n = atol(argv[3]);
	for (k = 0; k < strlen(argv[4]) / 2; k++)
		sscanf(argv[4] + 2 * k, "%2hhx", &key[k]);
	memset(&attr, 0, sizeof(attr));
	attr.map_fd = atoi(argv[2]);
	attr.key = (unsigned long)key;
	attr.value = (unsigned long)val;
	/* 32 bytes: the lookup member of union bpf_attr, as the Python arms pass it. */
	if (bpf && syscall(SYS_bpf, BPF_MAP_LOOKUP_ELEM, &attr, 32) != 0) {
		perror("bpf(BPF_MAP_LOOKUP_ELEM)");
		return 1;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (i = 0; i < n; i++) {
		if (bpf)
			syscall(SYS_bpf, BPF_MAP_LOOKUP_ELEM, &attr, 32);
		else
			syscall(SYS_getppid);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%.3f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / (double)n);
	return 0;
}
"""


@contextmanager
def c_loop_binary(ctx: Context) -> Iterator[Path | None]:
    """The C loop compiled into a temporary directory (removed afterwards); None without a compiler."""
    cc = next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None)
    if cc is None:
        ctx.log("no C compiler: the C-loop floor is skipped")
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="ciliumlite-bench-") as d:
        src, exe = Path(d) / "loop.c", Path(d) / "loop"
        src.write_text(C_LOOP)
        r = subprocess.run([cc, "-O2", "-o", str(exe), str(src)], capture_output=True, text=True, timeout=60,
                           check=False)
        if r.returncode != 0:
            ctx.log(f"{cc} failed, the C-loop floor is skipped: {r.stderr.strip()[:300]}")
            yield None
            return
        yield exe


def _c_loop(exe: Path, mode: str, fd: int, calls: int, key: bytes) -> Callable[[], float]:
    def run() -> float:
        r = subprocess.run([str(exe), mode, str(fd), str(calls), key.hex()], pass_fds=(fd,), capture_output=True,
                           text=True, timeout=60, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"C loop ({mode}) failed: {r.stderr.strip()}")
        return float(r.stdout) * calls  # the arm divides by `per`
    return run


def _bare_syscall(fd: int, key: bytes, value_size: int, nr_bpf: int) -> tuple[Any, Any, Any, Any]:
    """(syscall fn, attr, key buffer, value buffer): a prebuilt BPF_MAP_LOOKUP_ELEM through libc syscall()."""
    libc = ctypes.CDLL(None, use_errno=True)
    sc = libc.syscall
    sc.restype = ctypes.c_long
    sc.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_uint]
    kc = ctypes.create_string_buffer(key, len(key))
    vc = ctypes.create_string_buffer(value_size)
    attr = ctypes.create_string_buffer(struct.pack("<IIQQQ", fd, 0, ctypes.addressof(kc), ctypes.addressof(vc), 0),
                                       ATTR_SIZE)
    rc = sc(nr_bpf, BPF_MAP_LOOKUP_ELEM, attr, ATTR_SIZE)
    if rc != 0:
        raise OSError(ctypes.get_errno(), f"bpf(BPF_MAP_LOOKUP_ELEM) via syscall() failed: {os.strerror(ctypes.get_errno())}")
    return sc, attr, kc, vc


def _map_arms(ctx: Context, calls: int, reps: int, warm: int) -> dict[str, list[float]]:
    nr = SYSCALL_NR.get(platform.machine())
    if nr is None:
        raise RuntimeError(f"no syscall numbers for {platform.machine()}; add them to SYSCALL_NR")
    nr_bpf, nr_getppid = nr
    key, value = TestKey(a=7, b=8, c=9), TestValue(x=1, y=2, z=3)
    kraw, vraw = key.pack(), value.pack()
    with BpfObject(ctx.obj_path("test_maps.o")) as obj, c_loop_binary(ctx) as exe:
        obj.load()
        typed: Map[TestKey, TestValue] = obj.map("test_hash", TestKey, TestValue)
        untyped: Map[bytes, bytes] = obj.map("test_hash")
        typed.set(key, value)
        fd = typed.fd
        kbuf, vbuf = ffi.new("char[]", kraw), ffi.new("char[]", len(vraw))
        sc, attr, _kc, vc = _bare_syscall(fd, kraw, len(vraw), nr_bpf)
        cf = cffi.FFI()
        cf.cdef("long syscall(long number, ...);")
        cf_libc = cf.dlopen(None)
        cf_sc = cf_libc.syscall
        cf_attr = cf.cast("void *", ctypes.addressof(attr))
        cf_nr_bpf, cf_nr_ppid = cf.cast("long", nr_bpf), cf.cast("long", nr_getppid)
        cf_cmd, cf_size = cf.cast("long", BPF_MAP_LOOKUP_ELEM), cf.cast("unsigned int", ATTR_SIZE)
        if cf_sc(cf_nr_bpf, cf_cmd, cf_attr, cf_size) != 0:
            raise RuntimeError("bpf(BPF_MAP_LOOKUP_ELEM) via cffi syscall() failed")
        # Every path must read the same value before we time it.
        checks = {GET_TYPED: typed.get(key), GET_RAW: untyped.get(kraw),
                  CFFI: (lib.bpf_map_lookup_elem(fd, kbuf, vbuf), bytes(ffi.buffer(vbuf, len(vraw))))[1],
                  BARE: vc.raw}
        if checks != {GET_TYPED: value, GET_RAW: vraw, CFFI: vraw, BARE: vraw}:
            raise RuntimeError(f"lookup paths disagree: {checks}")
        rng = range(calls)

        def get_typed() -> None:
            g = typed.get
            for _ in rng:
                g(key)

        def get_raw() -> None:
            g = untyped.get
            for _ in rng:
                g(kraw)

        def cffi_lookup() -> None:
            f = lib.bpf_map_lookup_elem
            for _ in rng:
                f(fd, kbuf, vbuf)

        def bare() -> None:
            for _ in rng:
                sc(nr_bpf, BPF_MAP_LOOKUP_ELEM, attr, ATTR_SIZE)

        def cffi_sc() -> None:
            for _ in rng:
                cf_sc(cf_nr_bpf, cf_cmd, cf_attr, cf_size)

        def null_sc() -> None:
            for _ in rng:
                sc(nr_getppid, 0, None, 0)

        def null_cffi() -> None:
            for _ in rng:
                cf_sc(cf_nr_ppid)

        def getppid() -> None:
            g = os.getppid
            for _ in rng:
                g()

        def loop() -> None:
            for _ in rng:
                pass

        def pack() -> None:
            for _ in rng:
                key.pack()

        def unpack() -> None:
            u = TestValue.unpack
            for _ in rng:
                u(vraw)

        arms = [Arm(GET_TYPED, get_typed, calls), Arm(GET_RAW, get_raw, calls), Arm(CFFI, cffi_lookup, calls),
                Arm(BARE, bare, calls), Arm(CFFI_SC, cffi_sc, calls), Arm(NULL_SC, null_sc, calls),
                Arm(NULL_CFFI, null_cffi, calls), Arm(GETPPID, getppid, calls), Arm(LOOP, loop, calls),
                Arm(PACK, pack, calls), Arm(UNPACK, unpack, calls)]
        if exe is not None:
            arms += [Arm(C_BPF, _c_loop(exe, "bpf", fd, calls, kraw), calls, reported=True),
                     Arm(NULL_C, _c_loop(exe, "getppid", fd, calls, kraw), calls, reported=True)]
        out = interleave(arms, repeats=reps, warmup=warm)
        untyped.delete(kraw)
    return out


def _test_run_arms(ctx: Context, calls: int, reps: int, warm: int) -> dict[str, list[float]]:
    frame = udp_frame()
    with BpfObject(ctx.obj_path("test_tc.o")) as obj:
        obj.load()
        prog = obj.program("tc_count")
        first = prog.run(frame)
        if first.retval != 0:
            raise RuntimeError(f"tc_count returned {first.retval}, expected TC_ACT_OK (0)")
        din = ffi.from_buffer(frame)
        dout = ffi.new("char[]", len(frame) + 512)
        opts = ffi.new("struct bpf_test_run_opts *", {
            "sz": ffi.sizeof("struct bpf_test_run_opts"), "data_in": din, "data_out": dout,
            "data_size_in": len(frame), "data_size_out": len(frame) + 512, "repeat": 1})
        pfd = prog.fd
        rc = lib.bpf_prog_test_run_opts(pfd, opts)
        if rc != 0 or opts.retval != 0:
            raise RuntimeError(f"raw test_run failed: rc={rc} retval={opts.retval}")
        rng = range(calls)

        def run_wrapped() -> None:
            r = prog.run
            for _ in rng:
                r(frame)

        def run_cffi() -> int:
            f = lib.bpf_prog_test_run_opts
            bad = 0
            for _ in rng:
                bad |= f(pfd, opts)
            if bad:
                raise RuntimeError("bpf_prog_test_run_opts failed inside the loop")
            return 0

        def kernel_repeat1() -> float:
            return statistics.median(prog.run(frame).duration_ns for _ in range(TR_KERNEL_SAMPLES))

        def kernel_repeat_n() -> float:
            return float(prog.run(frame, repeat=TR_REPEAT).duration_ns)

        return interleave([Arm(TR_RUN, run_wrapped, calls), Arm(TR_CFFI, run_cffi, calls),
                           Arm(TR_K1, kernel_repeat1, reported=True),
                           Arm(TR_KN, kernel_repeat_n, reported=True)], repeats=reps, warmup=warm)


def run(ctx: Context) -> list[Measurement]:
    """Per-call ns of each lookup path and of test_run, with ratios to the bare syscall / kernel ns/run."""
    calls = CALLS_QUICK if ctx.quick else CALLS
    tr_calls = TR_CALLS_QUICK if ctx.quick else TR_CALLS
    reps, warm = ctx.repeats, ctx.warmup
    ctx.params.update(map_calls_per_sample=calls, test_run_calls_per_sample=tr_calls, test_run_repeat=TR_REPEAT,
                      kernel_duration_samples_repeat1=TR_KERNEL_SAMPLES, frame_bytes=64, repeats=reps, warmup=warm,
                      syscall_nr=SYSCALL_NR.get(platform.machine()))

    ctx.log(f"map lookups: {calls} calls per sample, {reps} repeats after {warm} warmup round(s)")
    mp = _map_arms(ctx, calls, reps, warm)
    ctx.log(f"test_run tc_count: {tr_calls} calls per sample; repeat={TR_REPEAT} in one call")
    tr = _test_run_arms(ctx, tr_calls, reps, warm)

    g = "map lookup"
    ms = [Measurement.from_samples(n, s, "ns/call", group=g) for n, s in mp.items()]
    paths = (GET_TYPED, GET_RAW, CFFI, CFFI_SC)
    for name in paths:
        ms.append(ratio(f"{name} ÷ bare syscall", mp[name], mp[BARE], group=g))
    if C_BPF in mp:
        for name in (*paths, BARE):
            ms.append(ratio(f"{name} ÷ C loop", mp[name], mp[C_BPF], group=g, note="perf.md E1: Python ÷ C"))
            ms.append(difference(f"{name} − C loop", mp[name], mp[C_BPF], "ns/call", group=g,
                                 note="Python-side cost per call"))
        ms.append(ratio("C loop: bpf() lookup ÷ null syscall", mp[C_BPF], mp[NULL_C], group=g,
                        note="how much of a bpf() call is the map lookup work vs syscall entry/exit"))
    ms.append(ratio("Map.get typed ÷ untyped", mp[GET_TYPED], mp[GET_RAW], group=g, note="record codec cost"))

    g = "test_run"
    ms.append(Measurement.from_samples(TR_RUN, tr[TR_RUN], "ns/call", group=g))
    ms.append(Measurement.from_samples(TR_CFFI, tr[TR_CFFI], "ns/call", group=g))
    ms.append(Measurement.from_samples(TR_K1, tr[TR_K1], "ns/run", group=g,
                                       note=f"median of {TR_KERNEL_SAMPLES} calls per round"))
    ms.append(Measurement.from_samples(TR_KN, tr[TR_KN], "ns/run", group=g))
    ms.append(ratio("Program.run(repeat=1) ÷ kernel ns/run", tr[TR_RUN], tr[TR_KN], group=g,
                    note="per-call overhead factor"))
    ms.append(ratio("cffi test_run(repeat=1) ÷ kernel ns/run", tr[TR_CFFI], tr[TR_KN], group=g))
    ms.append(ratio("Program.run ÷ cffi test_run (wrapper cost)", tr[TR_RUN], tr[TR_CFFI], group=g,
                    note="perf.md P2 analogue (Python ÷ minimal caller)"))
    ms.append(ratio("kernel ns/run: repeat=1 ÷ repeat=100000", tr[TR_K1], tr[TR_KN], group=g))
    ms.append(difference("Program.run(repeat=1) − kernel ns/run", tr[TR_RUN], tr[TR_KN], "ns/call", group=g,
                         note="what one call costs beyond running the program"))
    return ms


def summarize(ms: list[Measurement]) -> list[Summary]:
    """Each lookup path against the bare syscall; test_run per call against the kernel's ns/run."""
    by = {m.name: m for m in ms}

    def v(name: str) -> str:
        return fmt_value(by[name].median, by[name].unit)

    def opt(name: str) -> str:
        return v(name) if name in by else "n/a"

    lookup_rows = [[p, v(p), "1.00x" if p == BARE else v(f"{p} ÷ bare syscall"), opt(f"{p} ÷ C loop"),
                    opt(f"{p} − C loop")] for p in (GET_TYPED, GET_RAW, CFFI, BARE, CFFI_SC)]
    lookup_rows.append([C_BPF, opt(C_BPF), opt(f"{C_BPF} ÷ bare syscall"), "1.00x" if C_BPF in by else "n/a",
                        "0" if C_BPF in by else "n/a"])
    lookup_rows += [[p, opt(p), "", "", ""] for p in (NULL_C, NULL_CFFI, NULL_SC, GETPPID)]
    tr_rows = [[TR_RUN, v(TR_RUN), v("Program.run(repeat=1) ÷ kernel ns/run")],
               [TR_CFFI, v(TR_CFFI), v("cffi test_run(repeat=1) ÷ kernel ns/run")],
               [TR_K1, v(TR_K1), v("kernel ns/run: repeat=1 ÷ repeat=100000")],
               [TR_KN, v(TR_KN), "1.00x"]]
    return [
        Summary("map lookup of one key: ns per call (median)",
                ["path", "ns/call", "÷ ctypes bare syscall", "÷ C loop", "− C loop (ns)"], lookup_rows,
                note=(f"Typed ÷ untyped: {v('Map.get typed ÷ untyped')}; TestKey.pack {v(PACK)} ns, "
                      f"TestValue.unpack {v(UNPACK)} ns, empty loop {v(LOOP)} ns/iteration. The ctypes 'bare' "
                      f"syscall includes one ctypes call (compare the null syscalls: C vs cffi vs ctypes); the C "
                      f"loop is the floor.")),
        Summary("test_run of tc_count (64 B frame): per call vs per run", ["path", "ns", "÷ kernel ns/run"], tr_rows,
                note="Kernel ns/run at repeat=100000 is the program's own cost; everything above it is per-call "
                     "overhead (syscall entry, skb setup, copying the frame in and out, Python)."),
    ]
