/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: ICMP errors about translated connections (Cilium's "related"
 * conntrack lookup, ct_lookup4 with the inner tuple of an ICMP error, and
 * nat.h snat_v4_rev_nat / snat_v4_nat handling ICMP_DEST_UNREACH and
 * ICMP_TIME_EXCEEDED).
 *
 * An ICMP error (type 3 destination unreachable - code 4 fragmentation
 * needed in particular - or type 11 time exceeded) quotes the IP header and
 * the first 8 L4 bytes of the packet it is about. When that packet was
 * translated on its way (NodePort DNAT / SNAT, DSR, per-packet ClusterIP
 * DNAT, masquerade), the quote holds the translated tuple and the error is
 * addressed to the translated source, neither of which the endpoint that
 * owns the connection knows: it must see the error as if nothing had been
 * translated, or path MTU discovery and connect() errors never reach it.
 *
 *   icmp4_err_parse(ctx, l3_off, &e)   outer ICMP + quoted TCP/UDP tuple
 *   icmp4_err_set_in_{addr,port}()     rewrite the quote
 *   icmp4_err_rev_nat_orig(ctx, skip)  the quote is an original-direction
 *                                      packet to a backend (the error comes
 *                                      from the backend's side): the quoted
 *                                      destination becomes the frontend
 *
 * Checksums of a rewrite:
 *   - outer IPv4 header: incrementally (pkt4_set_saddr/daddr on the outer
 *     view, proto ICMP: no pseudo header);
 *   - quoted IPv4 header checksum: incrementally, with every quoted address;
 *   - ICMP checksum: incrementally for every quoted port. A quoted address
 *     needs nothing: the address word and the quoted header checksum change
 *     by opposite amounts (RFC 1624), so the one's-complement sum the ICMP
 *     checksum covers is unchanged;
 *   - quoted L4 checksum: LEFT AS QUOTED (as Cilium does). It covers a whole
 *     segment the quote usually truncates (and for TCP often lies beyond the
 *     8 bytes a router must quote), and no stack checks it: Linux matches
 *     the error to a socket by the quoted addresses and ports only.
 * Only an error whose outer header is not a fragment, that quotes a TCP or
 * UDP first fragment with at least 8 L4 bytes, is looked at; everything else
 * passes unchanged, as does an error about an untranslated connection.
 */
#ifndef __CILIUMLITE_ICMP_ERR_H
#define __CILIUMLITE_ICMP_ERR_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "compiler.h"
#include "ctx.h"
#include "csum.h"
#include "maps.h"
#include "l4.h"
#include "ct.h"
#include "lb.h"
#include "reasons.h"

#define ICMP_DEST_UNREACH_TYPE	3
#define ICMP_TIME_EXCEEDED_TYPE	11
#define ICMP_ERR_HDR_LEN	8	/* type, code, checksum, unused/mtu */

/* "Not an error this code translates: go on as before" from the global
 * functions that return a tc verdict otherwise (verdicts are >= 0). */
#define CL_ICMP_ERR_PASS	(-1)

struct icmp_err4 {
	/* The error itself: saddr/daddr of the outer header, proto
	 * IPPROTO_ICMP (pkt4_set_* then leave L4 alone), l4_off = the ICMP
	 * header. */
	struct pkt4	out;
	/* The quoted packet, in its own packet order: proto TCP/UDP, l3_off =
	 * the quoted IPv4 header, l4_off = its ports. */
	struct pkt4	in;
};

/* Fill @e from the packet at @l3_off. Returns 0 for an ICMP error quoting a
 * TCP/UDP tuple, -1 for anything else (which is left alone). */
static __always_inline int icmp4_err_parse(struct __sk_buff *ctx, __u32 l3_off, struct icmp_err4 *e)
{
	struct iphdr ip, q;
	__be16 ports[2];
	__u32 hlen, qoff, qhlen;
	__u8 type;

	if (bpf_skb_load_bytes(ctx, l3_off, &ip, sizeof(ip)) < 0)
		return -1;
	if (ip.protocol != IPPROTO_ICMP || (ip.frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return -1;
	hlen = (__u32)ip.ihl * 4;
	if (hlen < sizeof(ip) || hlen > 60)
		return -1;
	if (bpf_skb_load_bytes(ctx, l3_off + hlen, &type, 1) < 0)
		return -1;
	if (type != ICMP_DEST_UNREACH_TYPE && type != ICMP_TIME_EXCEEDED_TYPE)
		return -1;
	qoff = l3_off + hlen + ICMP_ERR_HDR_LEN;
	if (bpf_skb_load_bytes(ctx, qoff, &q, sizeof(q)) < 0)
		return -1;
	qhlen = (__u32)q.ihl * 4;
	if (q.version != 4 || qhlen < sizeof(q) || qhlen > 60)
		return -1;
	if (q.protocol != IPPROTO_TCP && q.protocol != IPPROTO_UDP)
		return -1;
	/* A later fragment has no ports to match. */
	if (q.frag_off & bpf_htons(IP_OFFSET))
		return -1;
	/* RFC 792: at least 8 bytes of the quoted L4 header. */
	if (ctx->len < qoff + qhlen + 8)
		return -1;
	if (bpf_skb_load_bytes(ctx, qoff + qhlen, ports, sizeof(ports)) < 0)
		return -1;

	e->out.saddr = ip.saddr;
	e->out.daddr = ip.daddr;
	e->out.sport = 0;
	e->out.dport = 0;
	e->out.proto = IPPROTO_ICMP;
	e->out.tcp_flags = 0;
	e->out.l3_off = l3_off;
	e->out.l4_off = (__u16)(l3_off + hlen);

	e->in.saddr = q.saddr;
	e->in.daddr = q.daddr;
	e->in.sport = ports[0];
	e->in.dport = ports[1];
	e->in.proto = q.protocol;
	e->in.tcp_flags = 0;
	e->in.l3_off = qoff;
	e->in.l4_off = (__u16)(qoff + qhlen);
	return 0;
}

/* Is the (validated, @hdr_len) packet at @l3_off an unfragmented ICMP
 * error (the cheap test before icmp4_err_parse)? */
static __always_inline bool icmp4_is_err(struct __sk_buff *ctx, __u32 l3_off, __u32 hdr_len)
{
	struct iphdr *ip4 = ctx_data(ctx) + l3_off;
	__u8 type;

	if ((void *)(ip4 + 1) > ctx_data_end(ctx))
		return false;
	if (ip4->protocol != IPPROTO_ICMP || (ip4->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return false;
	if (bpf_skb_load_bytes(ctx, l3_off + hdr_len, &type, 1) < 0)
		return false;
	return type == ICMP_DEST_UNREACH_TYPE || type == ICMP_TIME_EXCEEDED_TYPE;
}

/* Quoted source (@src) or destination address := @addr. Returns 0 or a DROP_*. */
static __always_inline int
icmp4_err_set_in_addr(struct __sk_buff *ctx, struct icmp_err4 *e, bool src, __be32 addr)
{
	__be32 old = src ? e->in.saddr : e->in.daddr;
	__u32 off = e->in.l3_off + (src ? offsetof(struct iphdr, saddr) : offsetof(struct iphdr, daddr));

	if (old == addr)
		return 0;
	/* The quoted header checksum only: the ICMP checksum is unchanged
	 * (see the top). */
	if (bpf_l3_csum_replace(ctx, e->in.l3_off + offsetof(struct iphdr, check), old, addr,
				sizeof(addr)) < 0)
		return DROP_CSUM_L3;
	if (bpf_skb_store_bytes(ctx, off, &addr, sizeof(addr), 0) < 0)
		return DROP_WRITE_ERROR;
	if (src)
		e->in.saddr = addr;
	else
		e->in.daddr = addr;
	return 0;
}

/* Quoted source (@src) or destination port := @port. Returns 0 or a DROP_*. */
static __always_inline int
icmp4_err_set_in_port(struct __sk_buff *ctx, struct icmp_err4 *e, bool src, __be16 port)
{
	__be16 old = src ? e->in.sport : e->in.dport;
	__u32 off = e->in.l4_off + (src ? 0 : 2);

	if (old == port)
		return 0;
	/* The ICMP checksum covers the port; the quoted L4 checksum stays as
	 * quoted (see the top). */
	if (bpf_l4_csum_replace(ctx, e->out.l4_off + ICMP_CSUM_OFF, old, port, sizeof(port)) < 0)
		return DROP_CSUM_L4;
	if (bpf_skb_store_bytes(ctx, off, &port, sizeof(port), 0) < 0)
		return DROP_WRITE_ERROR;
	if (src)
		e->in.sport = port;
	else
		e->in.dport = port;
	return 0;
}

/* The quote's source := @addr:@port. */
static __always_inline int
icmp4_err_in_snat(struct __sk_buff *ctx, struct icmp_err4 *e, __be32 addr, __be16 port)
{
	int ret = icmp4_err_set_in_addr(ctx, e, true, addr);

	return ret ? ret : icmp4_err_set_in_port(ctx, e, true, port);
}

/* The quote's destination := @addr:@port. */
static __always_inline int
icmp4_err_in_dnat(struct __sk_buff *ctx, struct icmp_err4 *e, __be32 addr, __be16 port)
{
	int ret = icmp4_err_set_in_addr(ctx, e, false, addr);

	return ret ? ret : icmp4_err_set_in_port(ctx, e, false, port);
}

/* An ICMP error at ETH_HLEN whose quote is an ORIGINAL-direction packet of a
 * per-packet translated connection, client -> backend as the backend saw it
 * (connection entry, TUPLE_F_OUT, with a rev_nat_index): the error comes
 * from the backend or from behind it and goes to the client, who knows only
 * the frontend. Quoted destination := the frontend
 * (cilium_lb4_reverse_nat); the outer source too when it is the backend
 * itself (a port unreachable from the backend pod would otherwise show the
 * client the backend's address). The destination (the client) is already
 * right. Entries with @skip_flags, hairpin entries (CT_F_LB_LOOPBACK: the
 * quoted source 169.254.42.1 would need the pod back too; such errors stay
 * unchanged) and untranslated connections are left alone.
 * Returns the entry's flags | CT_F_REPLY_SEEN | CT_F_REVNAT_DONE when
 * translated (callers treat the error as a reply of the connection: no
 * policy check, a NodePort error is routed back to the client), 0 when
 * untouched, or -DROP_* on failure. A global function: verified once. */
__attribute__((noinline)) int icmp4_err_rev_nat_orig(struct __sk_buff *ctx, __u32 skip_flags)
{
	struct icmp_err4 e = {};
	struct ipv4_ct_tuple t = {};
	struct lb4_reverse_nat *rn;
	struct ct_entry *ce;
	__be32 be_addr, fe_addr;
	__be16 idx, fe_port;
	__u16 flags;
	int ret;

	if (!ctx || icmp4_err_parse(ctx, ETH_HLEN, &e))
		return 0;
	ct_tuple_orig(&t, &e.in, TUPLE_F_OUT);
	ce = ct_lookup(&t);
	if (!ce || !ce->rev_nat_index || (ce->flags & (skip_flags | CT_F_LB_LOOPBACK)))
		return 0;
	flags = ce->flags;
	idx = ce->rev_nat_index;
	rn = bpf_map_lookup_elem(&cilium_lb4_reverse_nat, &idx);
	if (!rn)
		return -DROP_NAT_NO_MAPPING;
	fe_addr = rn->address;
	fe_port = rn->port;
	be_addr = e.in.daddr;

	ret = icmp4_err_in_dnat(ctx, &e, fe_addr, fe_port);
	if (!ret && e.out.saddr == be_addr)
		ret = pkt4_set_saddr(ctx, &e.out, fe_addr);
	if (ret)
		return -ret;
	return flags | CT_F_REPLY_SEEN | CT_F_REVNAT_DONE;
}

/* lb4_rev_nat_at_delivery, and for an ICMP error the related lookup above
 * (NodePort entries skipped, as there). Returns 0 or a DROP_*. */
static __always_inline int
lb4_rev_nat_related_at_delivery(struct __sk_buff *ctx, __u32 l3_off, __u32 hdr_len, __u16 *flags)
{
	int ret = lb4_rev_nat_at_delivery(ctx, l3_off, hdr_len, flags);

	if (ret || *flags)
		return ret;
	ret = icmp4_err_rev_nat_orig(ctx, CT_F_NODE_PORT);
	if (ret < 0)
		return -ret;
	*flags = (__u16)ret;
	return 0;
}

#endif /* __CILIUMLITE_ICMP_ERR_H */
