/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: the maps of socket send/recv acceleration (bpf_sockops.o).
 *
 * Kept out of maps.h: only bpf_sockops.o declares them, so the tc and socket
 * LB objects of a node that never enables the feature do not create them.
 * Python mirrors every struct in ciliumlite/datapath/records.py (SockKey,
 * SockopsConfig, SockopsCounter) and checks it against this BTF.
 *
 * Map names stay within 15 characters (BPF_OBJ_NAME_LEN): Cilium's sockmap
 * broke once on a longer name (cilium PR #6988).
 */
#ifndef __CILIUMLITE_SOCKOPS_H
#define __CILIUMLITE_SOCKOPS_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "compiler.h"

#define SOCK_OPS_MAP_SIZE	65535

/* 12 bytes: a socket as seen from its own side. Addresses in network byte
 * order, ports in host byte order (sock_ops and sk_msg give local_port in host
 * order and remote_port in network order: both are normalised). The peer of
 * {a, b, pa, pb} is {b, a, pb, pa}. IPv4 only. */
struct sock_key {
	__be32	local_ip4;
	__be32	remote_ip4;
	__u16	local_port;
	__u16	remote_port;
};

/* cilium_sock_ops: established TCP sockets whose both ends are local
 * endpoints. Written by cil_sockops (BPF_NOEXIST); the kernel removes a socket
 * when it is closed (sock_map_close) or destroyed, never on a TCP state
 * change. Never deleted by Python: deleting a socket that still has
 * redirected bytes queued drops those bytes (its psock goes with it). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, struct sock_key);
	__type(value, __u64);
	__uint(max_entries, SOCK_OPS_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_sock_ops SEC(".maps");

/* Per socket, in the socket itself (SK_STORAGE): what cil_sockops saw at
 * ESTABLISHED and what cil_sk_msg decided. */
#define SOCK_MODE_UNDECIDED	0	/* no message sent yet */
#define SOCK_MODE_REDIRECT	1	/* every message so far went to the peer */
#define SOCK_MODE_PASS		2	/* TCP/IP from now on, for good */

struct sock_state {
	__u8	mode;		/* SOCK_MODE_* */
	__u8	pass_reason;	/* SOCKOPS_C_* that made it PASS */
	__u16	local_lxc_id;	/* endpoint ids at ESTABLISHED */
	__u16	remote_lxc_id;
	__u16	pad;
	__u32	local_ifindex;	/* and their lxc ifindexes */
	__u32	remote_ifindex;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_sock_sk SEC(".maps");

/* cilium_sock_cfg[0]: the runtime switch Python flips under traffic. */
struct sockops_config {
	__u32	enabled;	/* 0: add no socket, pass every message */
	__u32	pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct sockops_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_sock_cfg SEC(".maps");

/* cilium_sock_exc: ports never accelerated (a socket whose local or remote
 * port is listed is not added). The opt-out for applications that read with
 * splice(2): on kernels without tcp_bpf_splice_read, splice reads only the TCP
 * receive queue and never sees redirected bytes. Key: port, host order. */
#define SOCK_EXCLUDE_MAP_SIZE	64

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, __u8);
	__uint(max_entries, SOCK_EXCLUDE_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_sock_exc SEC(".maps");

/* cilium_sock_ctr[SOCKOPS_C_*]: per-CPU counts (events or messages) and bytes.
 * Mirrored in ciliumlite/datapath/sockops.py (COUNTERS). Append only. */
#define SOCKOPS_C_SOCK_ADDED		0	/* socket put in cilium_sock_ops */
#define SOCKOPS_C_SOCK_NOT_LOCAL	1	/* established, an end is no local pod */
#define SOCKOPS_C_SOCK_ADD_FAILED	2	/* sock_hash_update refused (full, taken) */
#define SOCKOPS_C_MSG_REDIRECT		3	/* message handed to the peer socket */
#define SOCKOPS_C_MSG_PASS		4	/* message through TCP/IP (any reason) */
#define SOCKOPS_C_PASS_NO_PEER		5	/* first message: peer not in the map */
#define SOCKOPS_C_PASS_DISABLED		6	/* switched off while the socket lived */
#define SOCKOPS_C_PASS_ENDPOINT		7	/* an end's endpoint went or changed */
#define SOCKOPS_C_PASS_PEER_GONE	8	/* redirecting, then the peer left the map */
#define SOCKOPS_C_PASS_NO_STATE		9	/* in the map without sock_state */
#define SOCKOPS_C_SOCK_CLOSED		10	/* a tracked socket reached TCP_CLOSE */
#define SOCKOPS_C_SOCK_EXCLUDED		11	/* a port of it is in cilium_sock_exc */
#define SOCKOPS_C_MAX			16

struct sockops_counter {
	__u64	count;
	__u64	bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct sockops_counter);
	__uint(max_entries, SOCKOPS_C_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_sock_ctr SEC(".maps");

CL_STATIC_ASSERT(sizeof(struct sock_key) == 12, "sock_key must be 12 bytes");
CL_STATIC_ASSERT(sizeof(struct sock_state) == 16, "sock_state must be 16 bytes");

static __always_inline void sockops_count(__u32 idx, __u64 bytes)
{
	struct sockops_counter *c = bpf_map_lookup_elem(&cilium_sock_ctr, &idx);

	if (c) {
		c->count++;
		c->bytes += bytes;
	}
}

static __always_inline bool sockops_enabled(void)
{
	__u32 zero = 0;
	struct sockops_config *cfg = bpf_map_lookup_elem(&cilium_sock_cfg, &zero);

	return cfg && cfg->enabled;
}

#endif /* __CILIUMLITE_SOCKOPS_H */
