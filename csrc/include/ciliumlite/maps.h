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
 *
 * Two test builds of the same sources change layouts on purpose (CMake's
 * layout-next/ and layout-break/ objects; ciliumlite.datapath.migrate moves
 * a running node between builds):
 *   CILIUMLITE_LAYOUT_NEXT  appends a field to ct_entry and doubles
 *                           cilium_lxc's max_entries (an upgrade that
 *                           migrates: copy with zero fill, copy all);
 *   CILIUMLITE_LAYOUT_BREAK widens endpoint_key and shrinks cilium_node_map
 *                           to one entry (an upgrade that is refused).
 * Python's records describe the default build only.
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

#ifdef CILIUMLITE_LAYOUT_NEXT
#define ENDPOINTS_MAP_SIZE	131070
#else
#define ENDPOINTS_MAP_SIZE	65535
#endif

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
#ifdef CILIUMLITE_LAYOUT_BREAK
	__u32	zone;		/* the refused upgrade's key change */
#endif
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

/* ===========================================================================
 * Load balancing (Cilium's LB4 maps, reference §2.2-2.7). Written by Python
 * (frontends, slots, backends, reverse NAT, Maglev); bpf_sock writes
 * cilium_lb4_reverse_sk, every object may write cilium_lb4_affinity.
 * ======================================================================== */

#define LB_SERVICE_MAP_SIZE	65536
#define LB_BACKEND_MAP_SIZE	65536
#define LB_REVNAT_MAP_SIZE	65536
#define LB_REVNAT_SK_MAP_SIZE	262144
#define LB_AFFINITY_MAP_SIZE	65536
#define LB_MAGLEV_MAP_SIZE	65536

/* lb4_key.scope */
#define LB_LOOKUP_SCOPE_EXT	0
#define LB_LOOKUP_SCOPE_INT	1

/* lb4_service.flags (Cilium's low byte of the 16 service flag bits) */
#define SVC_FLAG_EXTERNAL_IP	0x01
#define SVC_FLAG_NODEPORT	0x02
#define SVC_FLAG_EXT_LOCAL_SCOPE 0x04
#define SVC_FLAG_HOSTPORT	0x08
#define SVC_FLAG_AFFINITY	0x10
#define SVC_FLAG_LOADBALANCER	0x20
#define SVC_FLAG_ROUTABLE	0x40	/* reachable from outside (bpf_host); not ClusterIP */
/* lb4_service.flags2 (the high byte) */
#define SVC_FLAG2_LOCALREDIRECT	0x01
#define SVC_FLAG2_LOOPBACK	0x08
#define SVC_FLAG2_INT_LOCAL_SCOPE 0x10
#define SVC_FLAG2_TWO_SCOPES	0x20
#define SVC_FLAG2_MAGLEV	0x80	/* ciliumlite: Maglev for N-S (from-netdev) traffic */

/* lb4_backend.flags */
#define BE_STATE_ACTIVE		0

/* 12 bytes. Key of cilium_lb4_services_v2. address/dport network order;
 * backend_slot HOST order (0 = the frontend row, 1..count = backend slots);
 * proto = IPPROTO_TCP / IPPROTO_UDP (never 0 in ciliumlite);
 * scope = LB_LOOKUP_SCOPE_*. pad zero. */
struct lb4_key {
	__be32	address;
	__be16	dport;
	__u16	backend_slot;
	__u8	proto;
	__u8	scope;
	__u8	pad[2];
};

/* 12 bytes. Value of cilium_lb4_services_v2.
 * Frontend row (slot 0): backend_id = affinity timeout (s), count = number of
 * backend slots, rev_nat_index (network order), flags, flags2.
 * Slot rows: backend_id (host order), rev_nat_index; count/flags unused.
 * qcount (quarantined slots after count) is ignored by ciliumlite. */
struct lb4_service {
	__u32	backend_id;
	__u16	count;
	__be16	rev_nat_index;
	__u8	flags;
	__u8	flags2;
	__u16	qcount;
};

/* 12 bytes. Value of cilium_lb4_backends_v3 (key: __u32 backend_id, host
 * order). address/port network order; flags BE_STATE_* (0 = active). */
struct lb4_backend {
	__be32	address;
	__be16	port;
	__u8	proto;
	__u8	flags;
	__u16	cluster_id;
	__u8	zone;
	__u8	pad;
};

/* 6 bytes, packed. Value of cilium_lb4_reverse_nat (key: __be16
 * rev_nat_index): the frontend a translated reply must come from. */
struct lb4_reverse_nat {
	__be32	address;
	__be16	port;
} __packed;

/* 16 bytes. Key of cilium_lb4_reverse_sk (socket LB): socket cookie and the
 * backend the socket was connected/sent to (network order). pad zero. */
struct ipv4_revnat_tuple {
	__u64	cookie;
	__be32	address;
	__be16	port;
	__u16	pad;
};

/* 8 bytes. Value of cilium_lb4_reverse_sk: the service address/port the
 * application used (network order) and the frontend's rev_nat_index, copied
 * raw from lb4_service.rev_nat_index (i.e. network order, as in Cilium). */
struct ipv4_revnat_entry {
	__be32	address;
	__be16	port;
	__u16	rev_nat_index;
};

/* 16 bytes. Key of cilium_lb4_affinity. client_id = client IPv4 (its __be32
 * in the low 4 bytes of memory, upper 4 zero) when netns_cookie == 0, or the
 * client's netns cookie (socket LB) when netns_cookie == 1. rev_nat_id = the
 * raw lb4_service.rev_nat_index (network order). pad zero. */
struct lb4_affinity_key {
	__u64	client_id;
	__u16	rev_nat_id;
	__u8	netns_cookie;
	__u8	pad[5];
};

/* 16 bytes. Value of cilium_lb4_affinity. last_used in seconds of
 * bpf_ktime_get_ns() (CLOCK_MONOTONIC); backend_id host order. */
struct lb_affinity_val {
	__u64	last_used;
	__u32	backend_id;
	__u32	pad;
};

/* 8 bytes. Key of ciliumlite's flat cilium_lb4_maglev (value: __u32
 * backend_id). rev_nat_index in HOST order (unlike everywhere else), index in
 * 0 .. maglev_table_size-1. */
struct lb4_maglev_key {
	__u16	rev_nat_index;
	__u16	pad;
	__u32	index;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, LB_SERVICE_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb4_services_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, LB_BACKEND_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb4_backends_v3 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be16);
	__type(value, struct lb4_reverse_nat);
	__uint(max_entries, LB_REVNAT_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb4_reverse_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv4_revnat_tuple);
	__type(value, struct ipv4_revnat_entry);
	__uint(max_entries, LB_REVNAT_SK_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb4_reverse_sk SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_affinity_key);
	__type(value, struct lb_affinity_val);
	__uint(max_entries, LB_AFFINITY_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb4_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_maglev_key);
	__type(value, __u32);
	__uint(max_entries, LB_MAGLEV_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_lb4_maglev SEC(".maps");

/* ===========================================================================
 * Connection tracking and NAT (reference §2.8-2.9). Written by BPF only;
 * Python reads them and garbage-collects expired entries. Tuple convention:
 * ct.h (CT entries) and nat.h (NAT entries, packet order).
 * ======================================================================== */

#define CT_MAP_SIZE_TCP		524288
#define CT_MAP_SIZE_ANY		262144
#define SNAT_MAPPING_MAP_SIZE	524288
#ifdef CILIUMLITE_LAYOUT_BREAK
#define NODE_MAP_SIZE		1	/* fewer than a cluster's nodes: the shrink does not fit */
#else
#define NODE_MAP_SIZE		16384
#endif

/* ipv4_ct_tuple.flags */
#define TUPLE_F_OUT		0	/* CT: connection; NAT: egress / source-NAT direction */
#define TUPLE_F_IN		1	/* NAT: ingress / reverse direction */
#define TUPLE_F_RELATED		2	/* reserved (ICMP errors) */
#define TUPLE_F_SERVICE		4	/* CT: service entry (pins the backend) */

/* 14 bytes, packed. Addresses and ports network order. */
struct ipv4_ct_tuple {
	__be32	daddr;
	__be32	saddr;
	__be16	dport;
	__be16	sport;
	__u8	nexthdr;
	__u8	flags;
} __packed;

/* ct_entry.flags (Cilium's bitfield positions as plain bits) */
#define CT_F_RX_CLOSING		0x0001
#define CT_F_TX_CLOSING		0x0002
#define CT_F_LB_LOOPBACK	0x0008	/* hairpin: source was SNATed to IPV4_LOOPBACK */
#define CT_F_SEEN_NON_SYN	0x0010
#define CT_F_NODE_PORT		0x0020	/* NodePort connection (revDNAT + route out) */
#define CT_F_DSR_INTERNAL	0x0080	/* DSR connection on the backend node */
#define CT_F_FROM_TUNNEL	0x0400

/* 56 bytes. Integers host order except rev_nat_index (network order, as in
 * lb4_service). lifetime = expiry in seconds of bpf_ktime_get_ns(). */
struct ct_entry {
	__u64	reserved0;
	__u64	backend_id;
	__u64	packets;
	__u64	bytes;
	__u32	lifetime;
	__u16	flags;		/* CT_F_* */
	__be16	rev_nat_index;
	__u16	ifindex;
	__u8	tx_flags_seen;	/* TCP flags seen in the original direction */
	__u8	rx_flags_seen;	/* ... and in the reply direction */
	__u32	src_sec_id;
	__u32	last_tx_report;
	__u32	last_rx_report;
#ifdef CILIUMLITE_LAYOUT_NEXT
	__u64	next_field;	/* appended by the next layout: 0 in migrated entries */
#endif
};

/* 40 bytes. Value of cilium_snat_v4_external. TUPLE_F_OUT entries: to_addr/
 * to_port = the new source; TUPLE_F_IN entries: the original destination to
 * restore. created = seconds of bpf_ktime_get_ns(); needs_ct 0/1. */
struct ipv4_nat_entry {
	__u64	created;
	__u64	needs_ct;
	__u64	pad1;
	__u64	pad2;
	__be32	to_addr;
	__be16	to_port;
	__u16	pad3;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv4_ct_tuple);
	__type(value, struct ct_entry);
	__uint(max_entries, CT_MAP_SIZE_TCP);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_ct4_global SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv4_ct_tuple);
	__type(value, struct ct_entry);
	__uint(max_entries, CT_MAP_SIZE_ANY);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_ct_any4_global SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv4_ct_tuple);
	__type(value, struct ipv4_nat_entry);
	__uint(max_entries, SNAT_MAPPING_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_snat_v4_external SEC(".maps");

/* cilium_node_map: the underlay IPv4 (network order) of every cluster node,
 * this one included -> 1. Written by Python. Read by bpf_host (DSR option
 * trust, masquerade exclusions). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32);
	__type(value, __u8);
	__uint(max_entries, NODE_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_node_map SEC(".maps");

/* ===========================================================================
 * Datapath events (trace.h; `ciliumlite monitor`).
 * ======================================================================== */

#define EVENTS_RING_SIZE	(256 * 1024)	/* bytes; a power of 2, page aligned */

/* cilium_events: drop and trace events (struct drop_notify / trace_notify,
 * trace.h, 120 bytes each). Written by every tc program, read by Python
 * (ciliumlite/datapath/events.py) with the libbpf ring buffer reader. A
 * RINGBUF has no key or value type; the record layout is trace.h's. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RING_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_events SEC(".maps");

/* 16 bytes. Value of cilium_events_ratelimit: one CPU's token bucket.
 * last_ns in bpf_ktime_get_ns() time; tokens <= events_per_sec. */
struct events_bucket {
	__u64	last_ns;
	__u64	tokens;
};

/* cilium_events_ratelimit: the per-CPU token bucket checked before every
 * event (key 0 only). Pinned, so all objects of a node share one budget. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct events_bucket);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_events_ratelimit SEC(".maps");

#ifndef CILIUMLITE_LAYOUT_BREAK
CL_STATIC_ASSERT(sizeof(struct endpoint_key) == 20, "endpoint_key must be 20 bytes");
#endif
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

CL_STATIC_ASSERT(sizeof(struct lb4_key) == 12, "lb4_key must be 12 bytes");
CL_STATIC_ASSERT(sizeof(struct lb4_service) == 12, "lb4_service must be 12 bytes");
CL_STATIC_ASSERT(sizeof(struct lb4_backend) == 12, "lb4_backend must be 12 bytes");
CL_STATIC_ASSERT(sizeof(struct lb4_reverse_nat) == 6, "lb4_reverse_nat must be 6 bytes");
CL_STATIC_ASSERT(sizeof(struct ipv4_revnat_tuple) == 16, "ipv4_revnat_tuple must be 16 bytes");
CL_STATIC_ASSERT(sizeof(struct ipv4_revnat_entry) == 8, "ipv4_revnat_entry must be 8 bytes");
CL_STATIC_ASSERT(sizeof(struct lb4_affinity_key) == 16, "lb4_affinity_key must be 16 bytes");
CL_STATIC_ASSERT(sizeof(struct lb_affinity_val) == 16, "lb_affinity_val must be 16 bytes");
CL_STATIC_ASSERT(sizeof(struct lb4_maglev_key) == 8, "lb4_maglev_key must be 8 bytes");
CL_STATIC_ASSERT(sizeof(struct ipv4_ct_tuple) == 14, "ipv4_ct_tuple must be 14 bytes");
#ifdef CILIUMLITE_LAYOUT_NEXT
CL_STATIC_ASSERT(sizeof(struct ct_entry) == 64, "ct_entry must be 64 bytes in the next layout");
#else
CL_STATIC_ASSERT(sizeof(struct ct_entry) == 56, "ct_entry must be 56 bytes");
#endif
CL_STATIC_ASSERT(__builtin_offsetof(struct ct_entry, lifetime) == 32, "ct_entry.lifetime at 32");
CL_STATIC_ASSERT(__builtin_offsetof(struct ct_entry, flags) == 36, "ct_entry.flags at 36");
CL_STATIC_ASSERT(__builtin_offsetof(struct ct_entry, rev_nat_index) == 38, "ct_entry.rev_nat_index at 38");
CL_STATIC_ASSERT(__builtin_offsetof(struct ct_entry, src_sec_id) == 44, "ct_entry.src_sec_id at 44");
CL_STATIC_ASSERT(sizeof(struct ipv4_nat_entry) == 40, "ipv4_nat_entry must be 40 bytes");
CL_STATIC_ASSERT(__builtin_offsetof(struct ipv4_nat_entry, to_addr) == 32, "ipv4_nat_entry.to_addr at 32");
CL_STATIC_ASSERT(sizeof(struct events_bucket) == 16, "events_bucket must be 16 bytes");

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
