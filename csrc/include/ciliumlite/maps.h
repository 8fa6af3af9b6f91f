/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: every map shared between objects, and the structs they hold.
 *
 * This header is the single source of truth for map layouts. Python mirrors
 * each struct (ciliumlite/datapath/records.py) and checks it against the BTF
 * that the `__type(key/value, ...)` annotations below put in every object.
 *
 * All maps are pinned by name (LIBBPF_PIN_BY_NAME): Python opens each object
 * with the node's pin_root_path, so every object of one node shares one
 * instance of each map and a restarted controller adopts the live state.
 * Changing a layout is an ABI break for pinned maps: bump the map name.
 *
 * Byte layouts are Cilium's (bpf/lib/maps.h, bpf/lib/common.h); sizes are
 * asserted at the bottom.
 */
#ifndef __CILIUMLITE_MAPS_H
#define __CILIUMLITE_MAPS_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "compiler.h"

/* ---------------------------------------------------------------------------
 * cilium_lxc: local endpoints (pods) and the node's own IPs.
 * ------------------------------------------------------------------------ */

#define ENDPOINTS_MAP_SIZE	65535

#define ENDPOINT_KEY_IPV4	1	/* endpoint_key.family */
#define ENDPOINT_KEY_IPV6	2	/* reserved; ciliumlite is IPv4-only */

/* endpoint_info.flags */
#define ENDPOINT_F_HOST		1	/* a local host IP, not a pod: go to the stack */

/* 20 bytes, packed. ip4 in network byte order, pad*, key, cluster_id = 0. */
struct endpoint_key {
	__be32	ip4;
	__u32	pad1;
	__u32	pad2;
	__u32	pad3;
	__u8	family;		/* ENDPOINT_KEY_IPV4 */
	__u8	key;		/* 0 */
	__u16	cluster_id;	/* 0 */
} __packed;

/* 48 bytes. All integers in host byte order.
 * mac / node_mac are Cilium's mac_t: the 6 MAC bytes in wire order in the
 * first 6 bytes of the u64's memory, the last 2 bytes zero (so on x86 the u64
 * *value* of 02:00:00:00:00:01 is 0x0000010000000002). */
struct endpoint_info {
	__u32	ifindex;	/* host-side veth (lxc*) ifindex, in the node netns */
	__u16	unused;
	__u16	lxc_id;		/* endpoint id */
	__u32	flags;		/* ENDPOINT_F_* */
	__u32	pad0;
	__u64	mac;		/* pod eth0 MAC (mac_t) */
	__u64	node_mac;	/* host-side veth MAC (mac_t) */
	__u32	sec_id;		/* security identity */
	__u32	pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
	__uint(max_entries, ENDPOINTS_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lxc SEC(".maps");

/* ---------------------------------------------------------------------------
 * cilium_metrics: per-CPU packet/byte counters by (reason, dir, line, file).
 * ------------------------------------------------------------------------ */

#define METRICS_MAP_SIZE	1024

/* 8 bytes. reason = enum cl_reason, dir = enum cl_metric_dir, line/file = the
 * source location that counted (file ids: metrics.h). line in host order. */
struct metrics_key {
	__u8	reason;
	__u8	dir;
	__u16	line;
	__u8	file;
	__u8	reserved[3];
};

/* 16 bytes per CPU; Python sums over CPUs. */
struct metrics_value {
	__u64	count;
	__u64	bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct metrics_key);
	__type(value, struct metrics_value);
	__uint(max_entries, METRICS_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_metrics SEC(".maps");

/* ---------------------------------------------------------------------------
 * cilium_tunnel_map: remote pod CIDR -> remote node IP (VXLAN routing mode).
 *
 * Key = the destination masked with tunnel_prefix_mask (config.h), i.e. one
 * entry per remote node's pod CIDR; all node pod CIDRs must have that size.
 * Value = the remote node's underlay IPv4 (the outer destination). Read by
 * cil_from_container when routing_mode == ROUTING_MODE_TUNNEL; written by
 * Python only. Layout is Cilium's (bpf/lib/maps.h TUNNEL_MAP).
 * ------------------------------------------------------------------------ */

#define TUNNEL_ENDPOINT_MAP_SIZE	65536

#define TUNNEL_KEY_IPV4		1	/* tunnel_key.family / tunnel_value.family */

/* 20 bytes, packed. ip4 = pod CIDR network address, network byte order;
 * pad*, pad, cluster_id = 0. */
struct tunnel_key {
	__be32	ip4;
	__u32	pad1;
	__u32	pad2;
	__u32	pad3;
	__u8	family;		/* TUNNEL_KEY_IPV4 */
	__u8	pad;
	__u16	cluster_id;	/* 0 */
} __packed;

/* 20 bytes. ip4 = remote node IPv4, network byte order; key (IPsec SPI in
 * Cilium) and pad = 0. */
struct tunnel_value {
	__be32	ip4;
	__u32	pad1;
	__u32	pad2;
	__u32	pad3;
	__u8	family;		/* TUNNEL_KEY_IPV4 */
	__u8	key;		/* 0 */
	__u16	pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct tunnel_key);
	__type(value, struct tunnel_value);
	__uint(max_entries, TUNNEL_ENDPOINT_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_tunnel_map SEC(".maps");

CL_STATIC_ASSERT(sizeof(struct endpoint_key) == 20, "endpoint_key must be 20 bytes");
CL_STATIC_ASSERT(sizeof(struct endpoint_info) == 48, "endpoint_info must be 48 bytes");
CL_STATIC_ASSERT(__builtin_offsetof(struct endpoint_info, mac) == 16, "endpoint_info.mac at 16");
CL_STATIC_ASSERT(__builtin_offsetof(struct endpoint_info, node_mac) == 24, "endpoint_info.node_mac at 24");
CL_STATIC_ASSERT(__builtin_offsetof(struct endpoint_info, sec_id) == 32, "endpoint_info.sec_id at 32");
CL_STATIC_ASSERT(sizeof(struct metrics_key) == 8, "metrics_key must be 8 bytes");
CL_STATIC_ASSERT(sizeof(struct metrics_value) == 16, "metrics_value must be 16 bytes");
CL_STATIC_ASSERT(sizeof(struct tunnel_key) == 20, "tunnel_key must be 20 bytes");
CL_STATIC_ASSERT(__builtin_offsetof(struct tunnel_key, family) == 16, "tunnel_key.family at 16");
CL_STATIC_ASSERT(__builtin_offsetof(struct tunnel_key, cluster_id) == 18, "tunnel_key.cluster_id at 18");
CL_STATIC_ASSERT(sizeof(struct tunnel_value) == 20, "tunnel_value must be 20 bytes");
CL_STATIC_ASSERT(__builtin_offsetof(struct tunnel_value, family) == 16, "tunnel_value.family at 16");
CL_STATIC_ASSERT(__builtin_offsetof(struct tunnel_value, key) == 17, "tunnel_value.key at 17");

/* ---------------------------------------------------------------------------
 * Lookups.
 * ------------------------------------------------------------------------ */

/* Endpoint (pod or host IP) owning @ip4 (network byte order), or NULL. */
static __always_inline struct endpoint_info *lookup_ip4_endpoint(__be32 ip4)
{
	struct endpoint_key key = {};

	key.ip4 = ip4;
	key.family = ENDPOINT_KEY_IPV4;
	return bpf_map_lookup_elem(&cilium_lxc, &key);
}

/* Tunnel endpoint (remote node) for the pod CIDR holding @daddr (network
 * byte order), or NULL. @prefix_mask: tunnel_prefix_mask (config.h), passed
 * in so this header does not depend on config.h. */
static __always_inline struct tunnel_value *
lookup_ip4_tunnel_endpoint(__be32 daddr, __be32 prefix_mask)
{
	struct tunnel_key key = {};

	key.ip4 = daddr & prefix_mask;
	key.family = TUNNEL_KEY_IPV4;
	return bpf_map_lookup_elem(&cilium_tunnel_map, &key);
}

#endif /* __CILIUMLITE_MAPS_H */
