/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: datapath events (Cilium's drop/trace notifications, lib/drop.h
 * and lib/trace.h) in the BPF ring buffer cilium_events (maps.h).
 *
 *   send_drop(ctx, reason, dir)                   drop.h: counts, then the
 *                                                 drop event (drop_events)
 *   send_trace_notify(ctx, obs, reason, dir, to)  a trace event at a forward
 *                                                 decision (trace_events)
 *   send_to_stack(ctx, dir)                       count REASON_TO_STACK, trace
 *                                                 TRACE_TO_STACK, TC_ACT_OK
 *
 * Read from Python by ciliumlite/datapath/events.py (Monitor), which mirrors
 * every number and offset below; `ciliumlite monitor` prints them.
 *
 * Event layout (ABI: append only; a change bumps CL_NOTIFY_VERSION). Both
 * types share one fixed 120-byte layout, little-endian host integers, with
 * the addresses and ports in network order as on the wire. A ring record is
 * 8 bytes of ring header + 120 = 128 bytes: 256 KiB hold 2047 unread events.
 *
 *   off size  field        drop_notify                 trace_notify
 *   ---  ---- -----------  --------------------------  --------------------------
 *     0    1  type         CL_NOTIFY_DROP (1)          CL_NOTIFY_TRACE (2)
 *     1    1  subtype      drop reason (DROP_*)        observation point (TRACE_*)
 *     2    1  version      CL_NOTIFY_VERSION (1)       same
 *     3    1  dir          enum cl_metric_dir of the program that emitted it
 *     4    2  line         source line of the send_drop / trace call site
 *     6    1  file         source file id (metrics.h __cl_file_id)
 *     7    1  reason       = subtype                   forward reason (REASON_*);
 *                                                      0 at from-* points
 *     8    8  ktime_ns     bpf_ktime_get_ns() (CLOCK_MONOTONIC)
 *    16    4  ifindex      ctx->ifindex: the device the program runs on
 *    20    4  dst_ifindex  0                           redirect target (lxc,
 *                                                      cilium_vxlan, FIB oif); 0
 *    24    4  len_orig     ctx->len: whole frame, L2 header included
 *    28    2  len_cap      bytes valid in data[] = min(len_orig, 64)
 *    30    1  flags        CL_NOTIFY_F_IPV4 | CL_NOTIFY_F_L4
 *    31    1  pad0
 *    32    4  cpu          bpf_get_smp_processor_id()
 *    36    4  pad1
 *    40    4  saddr        IPv4 source       \  valid with CL_NOTIFY_F_IPV4
 *    44    4  daddr        IPv4 destination   | (ctx->protocol is ETH_P_IP and
 *    48    2  sport        L4 source port     | an IPv4 header follows the
 *    50    2  dport        L4 dest port       | 14-byte Ethernet header);
 *    52    1  proto        IP protocol       /  ports with CL_NOTIFY_F_L4 (TCP,
 *    53    3  pad                               UDP, SCTP; not a later fragment)
 *    56   64  data         the frame's first len_cap bytes (Ethernet header on),
 *                          zero after len_cap
 *
 * The addressing fields describe the packet as it is when the event is sent:
 * at redirect-peer after TTL-1/MAC rewrite, at to-overlay before the kernel
 * adds the outer headers, after DNAT/SNAT where the program translated it.
 *
 * Observation points (trace subtype; Cilium's TRACE_* numbers where Cilium
 * has the point, 100+ for ciliumlite's own):
 *
 *   TRACE_TO_LXC        0  "redirect-peer"  ipv4_local_delivery: bpf_redirect_peer
 *                                           into a local pod (l3.h)
 *   TRACE_TO_STACK      3  "to-stack"       send_to_stack(): TC_ACT_OK to the stack
 *   TRACE_TO_OVERLAY    4  "to-overlay"     encap_and_redirect: tunnel key set,
 *                                           redirect to cilium_vxlan (encap.h)
 *   TRACE_FROM_LXC      5  "from-container" entry of cil_from_container
 *   TRACE_FROM_OVERLAY  9  "from-overlay"   entry of cil_from_overlay
 *   TRACE_FROM_NETWORK 10  "from-netdev"    entry of cil_from_netdev
 *   TRACE_TO_NETWORK   11  "to-netdev"      every verdict of cil_to_netdev
 *   TRACE_FIB         100  "fib"            fib_redirect_v4: bpf_redirect /
 *                                           bpf_redirect_neigh (fib.h)
 *   TRACE_ARP_REPLY   101  "arp-reply"      proxy-ARP reply sent back into the pod
 *
 * Load-time switches (.rodata, config.h): drop_events (default 1),
 * trace_events (default 0: the verifier removes every trace call site),
 * events_per_sec (default 1000).
 *
 * Rate limit: before bpf_ringbuf_reserve, one token is taken from a per-CPU
 * token bucket (cilium_events_ratelimit, PERCPU_ARRAY of one
 * struct events_bucket): events_per_sec tokens a second, burst = events_per_sec
 * (so at most events_per_sec events per second and CPU, after a burst of as
 * many). events_per_sec = 0 turns the limiter off. No token ->
 * REASON_EVENT_LOST_RATE_LIMIT; reserve fails (the reader is slow or absent
 * and the ring is full) -> REASON_EVENT_LOST_RING_FULL; both counted in
 * cilium_metrics at this file's line, with the direction of the event and
 * the packet's bytes. Monitoring never blocks and never changes a verdict:
 * the functions here return nothing the caller looks at.
 *
 * Verifier cost: the event itself is built in cl_notify_skb(), a *global*
 * (non-static, noinline) BPF function. The verifier checks its body once per
 * program and every call site as one instruction, so the ~30 send_drop sites
 * of bpf_host.c cost a call each, not an event builder each.
 *
 * XDP: there is no XDP object yet; send_drop/send_to_stack on an xdp_md count
 * only (the _Generic below sends no event).
 */
#ifndef __CILIUMLITE_TRACE_H
#define __CILIUMLITE_TRACE_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "compiler.h"
#include "config.h"
#include "ctx.h"
#include "maps.h"
#include "metrics.h"
#include "reasons.h"

#define CL_NOTIFY_VERSION	1
#define CL_NOTIFY_CAP_LEN	64

#ifndef NSEC_PER_SEC
# define NSEC_PER_SEC		1000000000ULL
#endif

/* cl_notify_hdr.type */
enum cl_notify_type {
	CL_NOTIFY_DROP		= 1,
	CL_NOTIFY_TRACE		= 2,
};

/* cl_notify_hdr.subtype of a trace event (table above). */
enum cl_trace_point {
	TRACE_TO_LXC		= 0,
	TRACE_TO_STACK		= 3,
	TRACE_TO_OVERLAY	= 4,
	TRACE_FROM_LXC		= 5,
	TRACE_FROM_OVERLAY	= 9,
	TRACE_FROM_NETWORK	= 10,
	TRACE_TO_NETWORK	= 11,
	TRACE_FIB		= 100,
	TRACE_ARP_REPLY		= 101,
};

/* cl_notify_hdr.flags */
#define CL_NOTIFY_F_IPV4	0x01	/* saddr, daddr, proto are valid */
#define CL_NOTIFY_F_L4		0x02	/* sport, dport are valid */

/* 40 bytes. */
struct cl_notify_hdr {
	__u8	type;
	__u8	subtype;
	__u8	version;
	__u8	dir;
	__u16	line;
	__u8	file;
	__u8	reason;
	__u64	ktime_ns;
	__u32	ifindex;
	__u32	dst_ifindex;
	__u32	len_orig;
	__u16	len_cap;
	__u8	flags;
	__u8	pad0;
	__u32	cpu;
	__u32	pad1;
};

/* 16 bytes; network byte order. */
struct cl_notify_flow4 {
	__be32	saddr;
	__be32	daddr;
	__be16	sport;
	__be16	dport;
	__u8	proto;
	__u8	pad[3];
};

/* 120 bytes each, the same layout (the type byte tells them apart). */
struct drop_notify {
	struct cl_notify_hdr	hdr;
	struct cl_notify_flow4	flow;
	__u8			data[CL_NOTIFY_CAP_LEN];
};

struct trace_notify {
	struct cl_notify_hdr	hdr;
	struct cl_notify_flow4	flow;
	__u8			data[CL_NOTIFY_CAP_LEN];
};

CL_STATIC_ASSERT(sizeof(struct cl_notify_hdr) == 40, "cl_notify_hdr layout");
CL_STATIC_ASSERT(sizeof(struct cl_notify_flow4) == 16, "cl_notify_flow4 layout");
CL_STATIC_ASSERT(sizeof(struct drop_notify) == 120, "drop_notify layout");
CL_STATIC_ASSERT(sizeof(struct trace_notify) == 120, "trace_notify layout");
CL_STATIC_ASSERT(__builtin_offsetof(struct cl_notify_hdr, line) == 4, "line");
CL_STATIC_ASSERT(__builtin_offsetof(struct cl_notify_hdr, reason) == 7, "reason");
CL_STATIC_ASSERT(__builtin_offsetof(struct cl_notify_hdr, ktime_ns) == 8, "ktime_ns");
CL_STATIC_ASSERT(__builtin_offsetof(struct cl_notify_hdr, ifindex) == 16, "ifindex");
CL_STATIC_ASSERT(__builtin_offsetof(struct cl_notify_hdr, dst_ifindex) == 20, "dst_ifindex");
CL_STATIC_ASSERT(__builtin_offsetof(struct cl_notify_hdr, len_orig) == 24, "len_orig");
CL_STATIC_ASSERT(__builtin_offsetof(struct cl_notify_hdr, len_cap) == 28, "len_cap");
CL_STATIC_ASSERT(__builtin_offsetof(struct cl_notify_hdr, flags) == 30, "flags");
CL_STATIC_ASSERT(__builtin_offsetof(struct cl_notify_hdr, cpu) == 32, "cpu");
CL_STATIC_ASSERT(__builtin_offsetof(struct drop_notify, flow) == 40, "flow");
CL_STATIC_ASSERT(__builtin_offsetof(struct drop_notify, data) == 56, "data");
CL_STATIC_ASSERT(__builtin_offsetof(struct cl_notify_flow4, sport) == 8, "sport");
CL_STATIC_ASSERT(__builtin_offsetof(struct cl_notify_flow4, proto) == 12, "proto");

/* Take one token from this CPU's bucket (see the top of the file). */
static __always_inline bool cl_events_take_token(void)
{
	struct events_bucket *b;
	__u64 per_token, elapsed, add, tokens, now;
	__u64 burst = events_per_sec;
	__u32 key = 0;

	if (!burst)
		return true;	/* limiter off */
	b = bpf_map_lookup_elem(&cilium_events_ratelimit, &key);
	if (!b)
		return false;

	per_token = NSEC_PER_SEC / burst;
	if (!per_token)
		per_token = 1;
	now = bpf_ktime_get_ns();
	elapsed = now - b->last_ns;
	if (elapsed >= per_token) {
		add = elapsed / per_token;
		tokens = b->tokens + add;
		if (tokens >= burst) {
			tokens = burst;
			b->last_ns = now;
		} else {
			/* Keep the fraction of a token already earned. */
			b->last_ns += add * per_token;
		}
		b->tokens = tokens;
	}
	if (!b->tokens)
		return false;
	b->tokens -= 1;
	return true;
}

/* IPv4 addresses, protocol and (TCP/UDP/SCTP, first fragment) ports of the
 * frame, read with bpf_skb_load_bytes (works on non-linear skbs and needs no
 * packet-pointer bounds). Returns CL_NOTIFY_F_* for what was found. */
static __always_inline __u8 cl_notify_flow(struct __sk_buff *ctx, struct cl_notify_flow4 *flow)
{
	struct iphdr ip4;
	__be16 ports[2];
	__u32 l4_off;

	if (ctx->protocol != bpf_htons(ETH_P_IP))
		return 0;
	if (bpf_skb_load_bytes(ctx, ETH_HLEN, &ip4, sizeof(ip4)) < 0 || ip4.version != 4)
		return 0;
	flow->saddr = ip4.saddr;
	flow->daddr = ip4.daddr;
	flow->proto = ip4.protocol;
	if (ip4.frag_off & bpf_htons(0x1fff))	/* IP_OFFSET: not the first fragment */
		return CL_NOTIFY_F_IPV4;
	if (ip4.protocol != IPPROTO_TCP && ip4.protocol != IPPROTO_UDP &&
	    ip4.protocol != IPPROTO_SCTP)
		return CL_NOTIFY_F_IPV4;
	l4_off = ETH_HLEN + ((__u32)ip4.ihl & 0xf) * 4;
	if (bpf_skb_load_bytes(ctx, l4_off, ports, sizeof(ports)) < 0)
		return CL_NOTIFY_F_IPV4;
	flow->sport = ports[0];
	flow->dport = ports[1];
	return CL_NOTIFY_F_IPV4 | CL_NOTIFY_F_L4;
}

/* Count an event that did not make it into the ring. */
static __always_inline void cl_notify_lost(struct __sk_buff *ctx, __u8 reason, __u8 dir)
{
	__update_metrics(ctx->len, dir, reason, __MAGIC_LINE__, __MAGIC_FILE__);
}

/* Build and submit one event. meta = type | subtype << 8 | reason << 16 |
 * dir << 24; src = line | file << 16. Global (verified once per program, not
 * per call site); always returns 0, which no caller looks at. */
__attribute__((noinline)) int
cl_notify_skb(struct __sk_buff *ctx, __u32 meta, __u32 src, __u32 dst_ifindex)
{
	struct drop_notify *e;	/* the layout of trace_notify too */
	__u8 dir = meta >> 24;
	__u32 cap;

	if (!cl_events_take_token()) {
		cl_notify_lost(ctx, REASON_EVENT_LOST_RATE_LIMIT, dir);
		return 0;
	}
	e = bpf_ringbuf_reserve(&cilium_events, sizeof(*e), 0);
	if (!e) {
		cl_notify_lost(ctx, REASON_EVENT_LOST_RING_FULL, dir);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->hdr.type = meta & 0xff;
	e->hdr.subtype = (meta >> 8) & 0xff;
	e->hdr.version = CL_NOTIFY_VERSION;
	e->hdr.dir = dir;
	e->hdr.line = src & 0xffff;
	e->hdr.file = (src >> 16) & 0xff;
	e->hdr.reason = (meta >> 16) & 0xff;
	e->hdr.ktime_ns = bpf_ktime_get_ns();
	e->hdr.ifindex = ctx->ifindex;
	e->hdr.dst_ifindex = dst_ifindex;
	e->hdr.len_orig = ctx->len;
	e->hdr.cpu = bpf_get_smp_processor_id();
	e->hdr.flags = cl_notify_flow(ctx, &e->flow);

	cap = ctx->len;
	if (cap > CL_NOTIFY_CAP_LEN)
		cap = CL_NOTIFY_CAP_LEN;
	if (cap > 0 && bpf_skb_load_bytes(ctx, 0, e->data, cap) == 0)
		e->hdr.len_cap = cap;

	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline void
__send_notify_skb(struct __sk_buff *ctx, __u8 type, __u8 subtype, __u8 reason, __u8 dir,
		  __u32 dst_ifindex, __u16 line, __u8 file)
{
	cl_notify_skb(ctx, (__u32)type | (__u32)subtype << 8 | (__u32)reason << 16 | (__u32)dir << 24,
		      (__u32)line | (__u32)file << 16, dst_ifindex);
}

static __always_inline void
__send_notify_xdp(struct xdp_md *ctx __attribute__((unused)), __u8 type __attribute__((unused)),
		  __u8 subtype __attribute__((unused)), __u8 reason __attribute__((unused)),
		  __u8 dir __attribute__((unused)), __u32 dst_ifindex __attribute__((unused)),
		  __u16 line __attribute__((unused)), __u8 file __attribute__((unused)))
{
	/* No XDP object yet: nothing is sent. */
}

#define __send_notify(ctx, type, subtype, reason, dir, dst_ifindex, line, file)	\
	_Generic((ctx),								\
		struct __sk_buff *: __send_notify_skb,				\
		struct xdp_md *: __send_notify_xdp)				\
	((ctx), (type), (subtype), (reason), (dir), (dst_ifindex), (line), (file))

/* A drop event for @reason at the caller's line (drop_events). send_drop()
 * sends it; call it directly only where a packet is consumed without
 * send_drop (icmp.h turns the packet into an ICMP error). */
#define send_drop_notify(ctx, reason, dir)					\
	__send_drop_notify((ctx), (reason), (dir), __MAGIC_LINE__, __MAGIC_FILE__)

#define __send_drop_notify(ctx, reason, dir, line, file)			\
	do {									\
		if (drop_events)						\
			__send_notify((ctx), CL_NOTIFY_DROP, (reason), (reason),	\
				      (dir), 0, (line), (file));		\
	} while (0)

/* A trace event at observation point @obs (enum cl_trace_point) for a packet
 * leaving with forward reason @reason towards @dst_ifindex (0: the stack or
 * unknown), at the caller's line. Nothing at all unless trace_events. */
#define send_trace_notify(ctx, obs, reason, dir, dst_ifindex)			\
	do {									\
		if (trace_events)						\
			__send_notify((ctx), CL_NOTIFY_TRACE, (obs), (reason), (dir),	\
				      (dst_ifindex), __MAGIC_LINE__, __MAGIC_FILE__);	\
	} while (0)

/* Hand the packet to the kernel stack untouched: count REASON_TO_STACK at the
 * caller's line, trace TRACE_TO_STACK, and evaluate to the "continue" verdict
 * (TC_ACT_OK). A statement-expression macro so line and file are the
 * caller's. */
#define send_to_stack(ctx, dir)							\
	({									\
		update_metrics((ctx), (dir), REASON_TO_STACK);			\
		send_trace_notify((ctx), TRACE_TO_STACK, REASON_TO_STACK, (dir), 0);	\
		ctx_act_ok(ctx);						\
	})

#endif /* __CILIUMLITE_TRACE_H */
