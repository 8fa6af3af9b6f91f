// SPDX-License-Identifier: GPL-2.0
/*
 * test_maps.c - maps of every kind the SDK's Map/Record layers must handle,
 * plus .rodata config globals and a tc program that echoes them back.
 *
 * Used by tests/bpf (map CRUD, full-map errors, LPM keys, per-CPU values,
 * BTF layout checks of test_key/test_value, rodata config before load).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

/* 8 bytes, explicit padding: Python records must mirror this exactly. */
struct test_key {
	__u32 a;
	__u16 b;
	__u8 c;
	__u8 pad;
};

/* 16 bytes. */
struct test_value {
	__u64 x;
	__u32 y;
	__u32 z;
};

/* 8 bytes: prefix length in bits, then the IPv4 address in network order. */
struct test_lpm_key {
	__u32 prefixlen;
	__u32 addr;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct test_key);
	__type(value, struct test_value);
} test_hash SEC(".maps");

/* Tiny on purpose: the fifth distinct key must fail with E2BIG (MapFullError). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} test_small SEC(".maps");

/* Slots 0..3 are written by tc_config_echo; 4..7 are free for tests. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} test_array SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct test_lpm_key);
	__type(value, __u32);
} test_lpm SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} test_percpu SEC(".maps");

/* Config: set from Python before load (rewrites .rodata), frozen afterwards. */
const volatile __u32 cfg_u32 = 7;
const volatile __u8 cfg_flag = 0;
const volatile __u64 cfg_u64 = 0;
const volatile __u16 cfg_port = 0;

static __always_inline void echo(__u32 slot, __u64 v)
{
	__u64 *p = bpf_map_lookup_elem(&test_array, &slot);

	if (p)
		*p = v;
}

/*
 * On every run: test_array[0] = cfg_u32, [1] = cfg_flag, [2] = cfg_u64,
 * [3] = cfg_port. A test_run after setting the config shows what the
 * verifier saw.
 */
SEC("tc")
int tc_config_echo(struct __sk_buff *skb)
{
	echo(0, cfg_u32);
	echo(1, cfg_flag);
	echo(2, cfg_u64);
	echo(3, cfg_port);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
