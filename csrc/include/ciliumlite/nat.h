/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: source NAT engine on cilium_snat_v4_external (Cilium lib/nat.h
 * snat_v4_new_mapping / snat_v4_rev_nat, reference §1.10 step 6).
 *
 * Keys are struct ipv4_ct_tuple IN PACKET ORDER (saddr/daddr/sport/dport are
 * the header's, no CT naming quirk):
 *
 *   TUPLE_F_OUT  {saddr = orig src, daddr = dst, sport = orig sport,
 *                 dport = dport} of the packet BEFORE SNAT
 *                -> {to_addr, to_port} = the new source
 *   TUPLE_F_IN   {saddr = dst, daddr = to_addr, sport = dport,
 *                 dport = to_port} of the REPLY as it arrives
 *                -> {to_addr, to_port} = the original source to restore
 *
 * A mapping is two entries: IN first with BPF_NOEXIST (that is what makes a
 * port unique per remote endpoint), then OUT. Port choice (Cilium's): keep the
 * original source port if it lies in snat_port_min..snat_port_max, else a
 * random one; on a collision retry a random port once, then port+1 (wrapping
 * in the range), SNAT_COLLISION_RETRIES times in all; then
 * DROP_NAT_NO_MAPPING.
 *
 * DSR entries (dsr.h) are OUT entries of the backend's REPLY (backend ->
 * client) -> {service address, service port}: cil_to_netdev applies every
 * OUT hit the same way (source := to_addr:to_port).
 *
 * created = seconds of bpf_ktime_get_ns(). NAT entries carry no lifetime:
 * Python's GC removes those whose connection (CT entry) is gone, or ones older
 * than the CT lifetimes; LRU evicts under pressure.
 */
#ifndef __CILIUMLITE_NAT_H
#define __CILIUMLITE_NAT_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "compiler.h"
#include "config.h"
#include "maps.h"
#include "l4.h"
#include "ct.h"
#include "reasons.h"

#define SNAT_COLLISION_RETRIES	128

static __always_inline void
nat_tuple(struct ipv4_ct_tuple *t, __be32 saddr, __be32 daddr, __be16 sport,
	  __be16 dport, __u8 proto, __u8 flags)
{
	t->saddr = saddr;
	t->daddr = daddr;
	t->sport = sport;
	t->dport = dport;
	t->nexthdr = proto;
	t->flags = flags;
}

static __always_inline struct ipv4_nat_entry *snat_lookup(const struct ipv4_ct_tuple *t)
{
	return bpf_map_lookup_elem(&cilium_snat_v4_external, t);
}

static __always_inline bool snat_port_in_range(__be16 port)
{
	__u16 p = bpf_ntohs(port);

	return p >= snat_port_min && p <= snat_port_max;
}

/* Source port to use when the packet @p (before SNAT) leaves with source
 * @to_addr: the existing mapping if both of its entries are intact, else a
 * new one. Returns 0 and *@port_out (network order) or DROP_NAT_NO_MAPPING. */
static __always_inline int
snat_v4_mapping(const struct pkt4 *p, __be32 to_addr, bool needs_ct, __be16 *port_out)
{
	struct ipv4_nat_entry ostate = {}, rstate = {};
	struct ipv4_ct_tuple otuple = {}, rtuple = {};
	struct ipv4_nat_entry *e;
	__u32 min = snat_port_min, max = snat_port_max;
	__u32 range, port, i;

	nat_tuple(&otuple, p->saddr, p->daddr, p->sport, p->dport, p->proto, TUPLE_F_OUT);
	e = snat_lookup(&otuple);
	if (e && e->to_addr == to_addr) {
		__be16 cur = e->to_port;

		nat_tuple(&rtuple, p->daddr, to_addr, p->dport, cur, p->proto, TUPLE_F_IN);
		e = snat_lookup(&rtuple);
		if (e && e->to_addr == p->saddr && e->to_port == p->sport) {
			*port_out = cur;
			return 0;
		}
		/* Half a mapping (LRU eviction): drop it and start over. */
		bpf_map_delete_elem(&cilium_snat_v4_external, &otuple);
	}

	if (max < min)
		return DROP_NAT_NO_MAPPING;
	range = max - min + 1;
	port = bpf_ntohs(p->sport);
	if (port < min || port > max)
		port = min + bpf_get_prandom_u32() % range;

	rstate.created = bpf_mono_sec();
	rstate.needs_ct = needs_ct;
	rstate.to_addr = p->saddr;
	rstate.to_port = p->sport;
	nat_tuple(&rtuple, p->daddr, to_addr, p->dport, 0, p->proto, TUPLE_F_IN);

	for (i = 0; i < SNAT_COLLISION_RETRIES; i++) {
		rtuple.dport = bpf_htons((__u16)port);
		if (!bpf_map_update_elem(&cilium_snat_v4_external, &rtuple, &rstate, BPF_NOEXIST))
			goto found;
		if (i == 0)
			port = min + bpf_get_prandom_u32() % range;
		else
			port = port >= max ? min : port + 1;
	}
	return DROP_NAT_NO_MAPPING;

found:
	ostate.created = rstate.created;
	ostate.needs_ct = needs_ct;
	ostate.to_addr = to_addr;
	ostate.to_port = bpf_htons((__u16)port);
	if (bpf_map_update_elem(&cilium_snat_v4_external, &otuple, &ostate, BPF_ANY) < 0) {
		bpf_map_delete_elem(&cilium_snat_v4_external, &rtuple);
		return DROP_NAT_NO_MAPPING;
	}
	*port_out = ostate.to_port;
	return 0;
}

/* SNAT the packet @p to @to_addr (and a mapped port). Returns 0 or a DROP_*. */
static __always_inline int
snat_v4_apply(struct __ctx_buff *ctx, struct pkt4 *p, __be32 to_addr, bool needs_ct)
{
	__be16 port = 0;
	int ret = snat_v4_mapping(p, to_addr, needs_ct, &port);

	if (ret)
		return ret;
	return pkt4_snat(ctx, p, to_addr, port);
}

/* Reverse SNAT of a reply arriving for @p->daddr: if an IN entry matches,
 * destination := the original source. *@hit tells whether it did. Returns 0
 * or a DROP_*. */
static __always_inline int
snat_v4_rev_nat(struct __ctx_buff *ctx, struct pkt4 *p, bool *hit)
{
	struct ipv4_ct_tuple t = {};
	struct ipv4_nat_entry *e;
	__be32 addr;
	__be16 port;

	*hit = false;
	if (!snat_port_in_range(p->dport))
		return 0;
	nat_tuple(&t, p->saddr, p->daddr, p->sport, p->dport, p->proto, TUPLE_F_IN);
	e = snat_lookup(&t);
	if (!e)
		return 0;
	addr = e->to_addr;
	port = e->to_port;
	*hit = true;
	return pkt4_dnat(ctx, p, addr, port);
}

#endif /* __CILIUMLITE_NAT_H */
