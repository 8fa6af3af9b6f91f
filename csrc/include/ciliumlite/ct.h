/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: connection tracking (cilium_ct4_global for TCP,
 * cilium_ct_any4_global for UDP), Cilium lib/conntrack.h reduced to what
 * service translation needs.
 *
 * TUPLE CONVENTION (Cilium's naming quirk: "address names are correct for the
 * reply direction, port names for the original direction"). For a connection
 * whose ORIGINAL direction is S:s -> D:d (as on the wire), the key is
 *
 *     { daddr = S, saddr = D, dport = d, sport = s, nexthdr, flags }
 *
 * so a REPLY packet D:d -> S:s maps to the key with its addresses as on the
 * wire and its ports swapped (ct_tuple_reply()), and an original-direction
 * packet maps with its addresses swapped and ports as on the wire
 * (ct_tuple_orig()). This is exactly the key Cilium stores for CT_EGRESS
 * connections.
 *
 * Entries ciliumlite creates (flags = tuple flags):
 *
 *   kind        flags            original direction      value
 *   ----------  ---------------  ----------------------  ------------------------------
 *   service     TUPLE_F_SERVICE  client -> FRONTEND       backend_id, rev_nat_index
 *                                (before DNAT)           (pins the backend)
 *   connection  TUPLE_F_OUT      client' -> BACKEND       rev_nat_index; flags:
 *                                (after DNAT; client' =  CT_F_LB_LOOPBACK (hairpin),
 *                                169.254.42.1 for a      CT_F_NODE_PORT (NodePort),
 *                                hairpin)                CT_F_DSR_INTERNAL (DSR backend
 *                                                        node; rev_nat_index 0)
 *   direct      TUPLE_F_OUT      client -> server        rev_nat_index 0: made only when
 *                                (no translation)        a direct flow's first packet meets
 *                                                        a connection entry with a
 *                                                        rev_nat_index on its tuple (the
 *                                                        client reused a service
 *                                                        connection's port; lb.h
 *                                                        lb4_ct_untranslated)
 *
 * A reply (backend -> client') that hits a connection entry with a
 * rev_nat_index is reverse-NATed (lb.h). TCP state: tx = original direction,
 * rx = reply direction; *_flags_seen accumulate TCP flags; FIN closes one
 * direction, RST both; when both are closed the entry expires after
 * CT_CLOSE_TIMEOUT; a SYN on a closing entry reopens it.
 *
 * lifetime = expiry time in seconds of CLOCK_MONOTONIC (bpf_mono_sec()):
 * Python's GC deletes entries with lifetime < time.clock_gettime(
 * CLOCK_MONOTONIC). LRU maps also evict under pressure.
 */
#ifndef __CILIUMLITE_CT_H
#define __CILIUMLITE_CT_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "compiler.h"
#include "maps.h"
#include "l4.h"
#include "reasons.h"

/* Lifetimes in seconds (Cilium agent defaults, §2.8). */
/* What a lookup of a packet's reply tuple (ct_tuple_reply, TUPLE_F_OUT)
 * found, passed on in a flags word (lb.h lb4_rev_nat_reply's output) so the
 * next classifier of the same, unchanged packet (policy.h
 * policy_ct_classify) does not look the same key up again. Internal markers,
 * never stored in an entry. */
#define CT_F_REPLY_SEEN		0x4000	/* an entry exists */
#define CT_F_REPLY_NONE		0x2000	/* looked up: no entry */

#define CT_LIFETIME_TCP		8000	/* established */
#define CT_SYN_TIMEOUT		60	/* until a non-SYN packet was seen */
#define CT_CLOSE_TIMEOUT	10	/* both directions closed */
#define CT_LIFETIME_NONTCP	60
#define CT_SERVICE_LIFETIME_TCP	8000
#define CT_SERVICE_LIFETIME_NONTCP 60

enum ct_dir {
	CT_DIR_TX = 0,	/* original direction */
	CT_DIR_RX = 1,	/* reply direction */
};

/* Seconds of CLOCK_MONOTONIC, from the coarse clock: lifetimes are whole
 * seconds, and the precise clock costs a TSC read per call (12 % of
 * bpf_xdp's NodePort path in perf on a VM, where every packet asked two or
 * three times). Coarse time lags the precise one by at most a tick (4 ms),
 * far below the second the truncation already gives away, and keeps its
 * base, so Python's GC (time.clock_gettime(CLOCK_MONOTONIC)) compares like
 * with like. Linux 5.11+ (bpf_ktime_get_coarse_ns). */
static __always_inline __u32 bpf_mono_sec(void)
{
	return (__u32)(bpf_ktime_get_coarse_ns() / 1000000000ULL);
}

/* Key of the connection whose original-direction packet is @p. */
static __always_inline void
ct_tuple_orig(struct ipv4_ct_tuple *t, const struct pkt4 *p, __u8 flags)
{
	t->daddr = p->saddr;
	t->saddr = p->daddr;
	t->dport = p->dport;
	t->sport = p->sport;
	t->nexthdr = p->proto;
	t->flags = flags;
}

/* Key of the connection whose reply-direction packet is @p. */
static __always_inline void
ct_tuple_reply(struct ipv4_ct_tuple *t, const struct pkt4 *p, __u8 flags)
{
	t->daddr = p->daddr;
	t->saddr = p->saddr;
	t->dport = p->sport;
	t->sport = p->dport;
	t->nexthdr = p->proto;
	t->flags = flags;
}

static __always_inline struct ct_entry *ct_lookup(const struct ipv4_ct_tuple *t)
{
	if (t->nexthdr == IPPROTO_TCP)
		return bpf_map_lookup_elem(&cilium_ct4_global, t);
	return bpf_map_lookup_elem(&cilium_ct_any4_global, t);
}

static __always_inline int ct_delete(const struct ipv4_ct_tuple *t)
{
	if (t->nexthdr == IPPROTO_TCP)
		return bpf_map_delete_elem(&cilium_ct4_global, t);
	return bpf_map_delete_elem(&cilium_ct_any4_global, t);
}

static __always_inline __u32
ct_lifetime(const struct ipv4_ct_tuple *t, __u16 flags)
{
	bool svc = t->flags & TUPLE_F_SERVICE;

	if (t->nexthdr != IPPROTO_TCP)
		return svc ? CT_SERVICE_LIFETIME_NONTCP : CT_LIFETIME_NONTCP;
	if ((flags & (CT_F_RX_CLOSING | CT_F_TX_CLOSING)) ==
	    (CT_F_RX_CLOSING | CT_F_TX_CLOSING))
		return CT_CLOSE_TIMEOUT;
	if (!(flags & CT_F_SEEN_NON_SYN))
		return CT_SYN_TIMEOUT;
	return svc ? CT_SERVICE_LIFETIME_TCP : CT_LIFETIME_TCP;
}

/* Account one packet of @p in direction @dir and refresh the lifetime. A TCP
 * SYN on a closing entry reopens it. */
static __always_inline void
ct_update(struct ct_entry *e, const struct ipv4_ct_tuple *t, const struct pkt4 *p,
	  enum ct_dir dir, __u32 len)
{
	__u16 flags = e->flags;
	__u8 tcp = p->tcp_flags;

	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, len);

	if (p->proto == IPPROTO_TCP) {
		if (dir == CT_DIR_TX)
			e->tx_flags_seen |= tcp;
		else
			e->rx_flags_seen |= tcp;

		if (tcp & TCP_FLAG_RST) {
			flags |= CT_F_RX_CLOSING | CT_F_TX_CLOSING;
		} else if (tcp & TCP_FLAG_FIN) {
			flags |= dir == CT_DIR_TX ? CT_F_TX_CLOSING : CT_F_RX_CLOSING;
		} else if ((tcp & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN) {
			/* New SYN: a reused tuple starts over. */
			flags &= ~(CT_F_RX_CLOSING | CT_F_TX_CLOSING | CT_F_SEEN_NON_SYN);
		}
		if (!(tcp & TCP_FLAG_SYN) && !(tcp & TCP_FLAG_RST))
			flags |= CT_F_SEEN_NON_SYN;
	}
	if (flags != e->flags)
		e->flags = flags;
	e->lifetime = bpf_mono_sec() + ct_lifetime(t, flags);
}

/* Create (or overwrite) the entry @t from @p, the connection's first packet
 * (original direction). Returns 0 or DROP_CT_CREATE_FAILED. */
static __always_inline int
ct_create(const struct ipv4_ct_tuple *t, const struct pkt4 *p, __u32 len,
	  __u16 flags, __be16 rev_nat_index, __u32 backend_id, __u32 src_sec_id,
	  __u32 ifindex)
{
	struct ct_entry e = {};
	int ret;

	e.backend_id = backend_id;
	e.packets = 1;
	e.bytes = len;
	e.rev_nat_index = rev_nat_index;
	e.ifindex = (__u16)ifindex;
	e.src_sec_id = src_sec_id;
	if (p->proto == IPPROTO_TCP) {
		e.tx_flags_seen = p->tcp_flags;
		if (p->tcp_flags & TCP_FLAG_RST)
			flags |= CT_F_RX_CLOSING | CT_F_TX_CLOSING;
		else if (p->tcp_flags & TCP_FLAG_FIN)
			flags |= CT_F_TX_CLOSING;
		if (!(p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_RST)))
			flags |= CT_F_SEEN_NON_SYN;
	}
	e.flags = flags;
	e.lifetime = bpf_mono_sec() + ct_lifetime(t, flags);

	if (t->nexthdr == IPPROTO_TCP)
		ret = bpf_map_update_elem(&cilium_ct4_global, t, &e, BPF_ANY);
	else
		ret = bpf_map_update_elem(&cilium_ct_any4_global, t, &e, BPF_ANY);
	return ret < 0 ? DROP_CT_CREATE_FAILED : 0;
}

#endif /* __CILIUMLITE_CT_H */
