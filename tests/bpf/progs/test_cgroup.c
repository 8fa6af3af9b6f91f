// SPDX-License-Identifier: GPL-2.0
/*
 * test_cgroup.c - a cgroup/connect4 program for cgroup attach tests: rewrites
 * connect() to from_ip4:from_port into to_ip4:to_port (socket-LB in miniature).
 *
 * All four config values are in NETWORK byte order, as the kernel keeps them
 * in struct bpf_sock_addr: the addresses as __u32, the ports in the low 16 bits
 * of a __u32 (user_port ABI), e.g. port 80 -> htons(80) = 0x5000.
 *
 * connect_counters slots (__u64 each):
 *   0  CONNECT_SLOT_REWRITTEN  connects rewritten
 *   1  CONNECT_SLOT_SEEN       connect4 calls seen
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

enum {
	CONNECT_SLOT_REWRITTEN = 0,
	CONNECT_SLOT_SEEN = 1,
	CONNECT_SLOT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CONNECT_SLOT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} connect_counters SEC(".maps");

const volatile __u32 from_ip4 = 0;
const volatile __u32 from_port = 0;
const volatile __u32 to_ip4 = 0;
const volatile __u32 to_port = 0;

static __always_inline void bump(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&connect_counters, &slot);

	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("cgroup/connect4")
int connect4_rewrite(struct bpf_sock_addr *ctx)
{
	bump(CONNECT_SLOT_SEEN);
	if (ctx->user_ip4 == from_ip4 && ctx->user_port == from_port) {
		ctx->user_ip4 = to_ip4;
		ctx->user_port = to_port;
		bump(CONNECT_SLOT_REWRITTEN);
	}
	return 1; /* always allow the connect */
}

char LICENSE[] SEC("license") = "GPL";
