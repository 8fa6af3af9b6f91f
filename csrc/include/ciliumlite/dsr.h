/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: NodePort DSR with the IPv4 option dispatch (Cilium
 * lib/nodeport.h dsr_set_opt4 / nodeport_extract_dsr_v4 /
 * nodeport_dsr_ingress_ipv4 / dsr_reply_icmp4, reference §3).
 *
 * Wire format (8 bytes, right after the 20-byte base header, IHL += 2):
 *
 *   0x9a  0x08  <port: 2 bytes>  <addr: 4 bytes>
 *
 * port/addr are the frontend the client addressed, in Cilium's
 * LITTLE-ENDIAN quirk: the writer stores bpf_htons()/bpf_htonl() of values
 * that are already network order, so on x86 the bytes are reversed relative
 * to network order (10.0.0.1:30080 -> 80 75 01 00 00 0a). ciliumlite emits
 * and parses exactly that, so it interoperates with Cilium nodes.
 *
 * LB node: the option goes on every TCP segment with SYN set and on every
 * UDP datagram, after DNAT; the L4 checksum is unchanged (the pseudo header
 * uses the L4 length), the IP checksum is fixed incrementally. If the frame
 * would exceed native_mtu, the client gets ICMP fragmentation-needed with
 * mtu = native_mtu - 8 from the frontend address instead (dsr_reply_icmp4;
 * counted as DROP_FRAG_NEEDED, as Cilium does).
 *
 * Backend node: only the first option slot is examined. The option is
 * TRUSTED only if (1) it arrived on the underlay (cil_from_netdev), (2) its
 * address is a cluster node IP (cilium_node_map) other than this node's,
 * and (3) {address, port, proto} - or the wildcard {0.0.0.0, port, proto} -
 * is a NodePort frontend (SVC_FLAG_NODEPORT) in this node's service map.
 * The IP source of a DSR packet is the client, so it cannot be checked; an
 * untrusted option is ignored (the packet is delivered, no reverse NAT is
 * installed, so nobody can make a pod's replies leave with a source that is
 * not a real NodePort frontend of a real node). Trusted: a connection entry
 * CT_F_DSR_INTERNAL (ct.h) and a NAT OUT entry for the REPLY tuple
 * {backend -> client} -> {frontend addr, port} (nat.h), applied by
 * cil_to_netdev. The option stays in the packet delivered to the pod.
 */
#ifndef __CILIUMLITE_DSR_H
#define __CILIUMLITE_DSR_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "compiler.h"
#include "config.h"
#include "ctx.h"
#include "csum.h"
#include "eth.h"
#include "maps.h"
#include "metrics.h"
#include "l4.h"
#include "ct.h"
#include "nat.h"
#include "lb.h"
#include "icmp.h"
#include "reasons.h"

#define DSR_IPV4_OPT_TYPE	0x9a	/* IPOPT_COPY | 26 */
#define DSR_IPV4_OPT_LEN	8
#define DSR_IPV4_OPT_OFF	20	/* from the start of the IP header */
#define IPV4_MAX_OPT_HLEN	60

struct dsr_opt_v4 {
	__u8	type;
	__u8	len;
	__u16	port;
	__u32	addr;
};

CL_STATIC_ASSERT(sizeof(struct dsr_opt_v4) == 8, "dsr_opt_v4 must be 8 bytes");

/* Does lb_mode use DSR for @proto (hybrid: TCP only)? DSR needs native
 * routing: with a tunnel the LB node falls back to SNAT. */
static __always_inline bool lb_dsr_for(__u8 proto)
{
	if (routing_mode != ROUTING_MODE_NATIVE)
		return false;
	return lb_mode == LB_MODE_DSR || (lb_mode == LB_MODE_HYBRID && proto == IPPROTO_TCP);
}

/* Does the packet get the option (TCP: SYN set; UDP: always)? */
static __always_inline bool dsr_needs_opt(const struct pkt4 *p)
{
	return p->proto == IPPROTO_UDP || (p->tcp_flags & TCP_FLAG_SYN);
}

/* Would the frame exceed the underlay MTU once the option is in? GSO skbs
 * are segmented later: their segments are checked against gso_size. */
static __always_inline bool dsr_too_big(struct __ctx_buff *ctx, __u32 l3_off)
{
	__u32 l3_len;

	if (ctx_gso_size(ctx))
		return false;
	l3_len = ctx_full_len(ctx) - l3_off;
	return l3_len + DSR_IPV4_OPT_LEN > native_mtu;
}

/* Open DSR_IPV4_OPT_LEN bytes right after the 20-byte base IPv4 header at
 * @l3_off (what bpf_skb_adjust_room(BPF_ADJ_ROOM_NET) does in tc). XDP: grow
 * the head and move the Ethernet and base IP headers to the new start.
 * Returns 0 or -1. Invalidates packet pointers. */
static __always_inline int dsr_grow_room(struct __ctx_buff *ctx, __u32 l3_off)
{
#ifdef CL_XDP
	const __u32 moved = ETH_HLEN + DSR_IPV4_OPT_OFF;
	__u8 hdrs[ETH_HLEN + DSR_IPV4_OPT_OFF];
	void *data;

	if (l3_off != ETH_HLEN)
		return -1;
	data = ctx_data(ctx);
	if (data + moved > ctx_data_end(ctx))
		return -1;
	__builtin_memcpy(hdrs, data, moved);
	if (bpf_xdp_adjust_head(ctx, -(int)DSR_IPV4_OPT_LEN) < 0)
		return -1;
	data = ctx_data(ctx);
	if (data + moved > ctx_data_end(ctx))
		return -1;
	__builtin_memcpy(data, hdrs, moved);
	return 0;
#else
	(void)l3_off;
	return bpf_skb_adjust_room(ctx, DSR_IPV4_OPT_LEN, BPF_ADJ_ROOM_NET,
				   BPF_F_ADJ_ROOM_NO_CSUM_RESET) < 0 ? -1 : 0;
#endif
}

/* Insert the option into the (already DNATed) packet @p for frontend
 * @svc_addr:@svc_port (network order). Returns 0 or a DROP_*. */
static __always_inline int
dsr_set_opt4(struct __ctx_buff *ctx, struct pkt4 *p, __be32 svc_addr, __be16 svc_port)
{
	struct dsr_opt_v4 opt = {};
	__u32 old_word, new_word;
	struct iphdr *ip4;
	__u32 l3_off = p->l3_off;
	__s64 sum;

	/* Bounded for the verifier (@p may come from memory it cannot see
	 * into: an XDP global function's argument); always ETH_HLEN here. */
	if (l3_off > 64)
		return DROP_INVALID;
	barrier_data(l3_off);
	ip4 = ctx_data(ctx) + l3_off;
	if ((void *)(ip4 + 1) > ctx_data_end(ctx))
		return DROP_INVALID;
	if ((__u32)ip4->ihl * 4 + DSR_IPV4_OPT_LEN > IPV4_MAX_OPT_HLEN)
		return DROP_CT_INVALID_HDR;

	opt.type = DSR_IPV4_OPT_TYPE;
	opt.len = DSR_IPV4_OPT_LEN;
	opt.port = bpf_htons(svc_port);	/* Cilium's double swap, see above */
	opt.addr = bpf_htonl(svc_addr);

	/* First word: version/IHL, TOS, tot_len. */
	old_word = *(__u32 *)ip4;
	ip4->ihl += DSR_IPV4_OPT_LEN / 4;
	ip4->tot_len = bpf_htons(bpf_ntohs(ip4->tot_len) + DSR_IPV4_OPT_LEN);
	new_word = *(__u32 *)ip4;

	sum = bpf_csum_diff(&old_word, 4, &new_word, 4, 0);
	if (sum < 0)
		return DROP_CSUM_L3;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&opt, sizeof(opt), (__wsum)sum);
	if (sum < 0)
		return DROP_CSUM_L3;

	if (dsr_grow_room(ctx, p->l3_off))
		return DROP_INVALID;
	if (ctx_store_bytes(ctx, p->l3_off + DSR_IPV4_OPT_OFF, &opt, sizeof(opt), 0) < 0)
		return DROP_WRITE_ERROR;
	if (ctx_l3_csum_replace(ctx, p->l3_off + offsetof(struct iphdr, check), 0, sum, 0) < 0)
		return DROP_CSUM_L3;
	p->l4_off += DSR_IPV4_OPT_LEN;
	return 0;
}

/* Answer the (not yet translated) packet @p with ICMP fragmentation needed,
 * mtu = native_mtu - 8 (icmp.h). Counts DROP_FRAG_NEEDED. */
static __always_inline int dsr_reply_icmp4(struct __sk_buff *ctx, const struct pkt4 *p, __u8 dir)
{
	return icmp4_reply_unreach(ctx, p, ICMP_FRAG_NEEDED, native_mtu - DSR_IPV4_OPT_LEN,
				   DROP_FRAG_NEEDED, dir);
}

/* Is a DSR option for frontend @addr:@port/@proto trustworthy? See the top. */
static __always_inline bool dsr_opt_trusted(__be32 addr, __be16 port, __u8 proto)
{
	struct lb4_service *svc;
	struct lb4_key key = {};

	if (!addr || addr == node_ipv4)
		return false;
	if (!bpf_map_lookup_elem(&cilium_node_map, &addr))
		return false;
	key.address = addr;
	key.dport = port;
	key.proto = proto;
	svc = lb4_lookup_service(&key, false);
	if (!svc) {
		key.address = 0;
		svc = lb4_lookup_service(&key, false);
	}
	return svc && (svc->flags & SVC_FLAG_NODEPORT);
}

/* Backend node, packet @p (client -> local backend pod) from the underlay:
 * install / refresh / clear the DSR state. Returns 0 or a DROP_*. Never
 * changes the packet. */
static __always_inline int dsr_ingress(struct __ctx_buff *ctx, const struct pkt4 *p, __u32 hdr_len)
{
	struct ipv4_ct_tuple ct = {}, nt = {};
	struct ipv4_nat_entry nat = {};
	struct dsr_opt_v4 opt = {};
	struct ct_entry *e;
	__be32 svc_addr = 0;
	__be16 svc_port = 0;
	int ret;

	ct_tuple_orig(&ct, p, TUPLE_F_OUT);
	e = ct_lookup(&ct);

	if (!dsr_needs_opt(p)) {
		/* TCP without SYN: keep an existing DSR connection alive. */
		if (e && (e->flags & CT_F_DSR_INTERNAL))
			ct_update(e, &ct, p, CT_DIR_TX, ctx_full_len(ctx));
		return 0;
	}

	if (hdr_len >= DSR_IPV4_OPT_OFF + DSR_IPV4_OPT_LEN &&
	    !ctx_load_bytes(ctx, p->l3_off + DSR_IPV4_OPT_OFF, &opt, sizeof(opt)) &&
	    opt.type == DSR_IPV4_OPT_TYPE && opt.len == DSR_IPV4_OPT_LEN) {
		svc_addr = bpf_ntohl(opt.addr);
		svc_port = bpf_ntohs(opt.port);
		if (!dsr_opt_trusted(svc_addr, svc_port, p->proto))
			svc_addr = 0;
	}

	nat_tuple(&nt, p->daddr, p->saddr, p->dport, p->sport, p->proto, TUPLE_F_OUT);
	if (!svc_addr) {
		/* A SYN (or datagram) without a usable option on a tuple that
		 * was DSR: the tuple was reused, stop reverse-NATing it. */
		if (e && (e->flags & CT_F_DSR_INTERNAL) && p->proto == IPPROTO_TCP) {
			bpf_map_delete_elem(&cilium_snat_v4_external, &nt);
			ct_delete(&ct);
		}
		return 0;
	}

	if (e && (e->flags & CT_F_DSR_INTERNAL) && p->proto == IPPROTO_UDP) {
		struct ipv4_nat_entry *cur = snat_lookup(&nt);

		if (cur && cur->to_addr == svc_addr && cur->to_port == svc_port) {
			ct_update(e, &ct, p, CT_DIR_TX, ctx_full_len(ctx));
			return 0;
		}
	}

	ret = ct_create(&ct, p, ctx_full_len(ctx), CT_F_DSR_INTERNAL, 0, 0, 2 /* WORLD */, ctx_ifindex(ctx));
	if (ret)
		return ret;
	nat.created = bpf_mono_sec();
	nat.needs_ct = 1;
	nat.to_addr = svc_addr;
	nat.to_port = svc_port;
	if (bpf_map_update_elem(&cilium_snat_v4_external, &nt, &nat, BPF_ANY) < 0)
		return DROP_NAT_NO_MAPPING;
	return 0;
}

#endif /* __CILIUMLITE_DSR_H */
