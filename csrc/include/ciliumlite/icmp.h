/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: ICMP destination-unreachable replies built in place (Cilium
 * dsr_reply_icmp4 / tail_no_service_ipv4).
 *
 *   icmp4_reply_unreach(ctx, p, code, mtu, reason, dir)
 *
 * turns the packet @p (its headers as the sender built them) into
 *   Ethernet (MACs swapped) | IPv4 {src = p's destination, dst = p's source,
 *   TTL 64} | ICMP type 3 code @code (mtu field = @mtu for code 4) |
 *   p's 20-byte IP header | p's first 8 L4 bytes
 * (70 bytes), counts @reason (a DROP_*: the original packet is consumed; its
 * drop event is sent with the packet as it came in) and
 * sends it back out of the device it arrived on (bpf_redirect to
 * ctx->ifindex: from a tc ingress hook that is the sender's side - back into
 * the pod from an lxc, back to the network from the underlay). Packets with
 * IP options are only counted and dropped (the quote would be wrong).
 * Used for DSR frag-needed (code 4) and services without backends (code 3,
 * port unreachable: the client's connect() fails with ECONNREFUSED).
 */
#ifndef __CILIUMLITE_ICMP_H
#define __CILIUMLITE_ICMP_H

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
#include "drop.h"
#include "metrics.h"
#include "l4.h"
#include "reasons.h"
#include "trace.h"

/* <linux/icmp.h> pulls in glibc's <sys/socket.h> (no -target bpf build). */
#define ICMP_DEST_UNREACH	3
#define ICMP_PORT_UNREACH	3
#define ICMP_FRAG_NEEDED	4

struct cl_icmp_unreach_hdr {
	__u8	type;
	__u8	code;
	__u16	checksum;
	__u16	unused;
	__be16	mtu;
};

static __always_inline int
icmp4_reply_unreach(struct __sk_buff *ctx, const struct pkt4 *p, __u8 code, __u32 mtu,
		    __u8 reason, __u8 dir)
{
	const __u32 l3_off = p->l3_off;
	struct {
		struct iphdr ip;
		struct cl_icmp_unreach_hdr icmp;
		struct iphdr orig;
		__u8 l4[8];
	} r = {};	/* 56 bytes, no padding */
	struct ethhdr eth;
	__u8 tmp[ETH_ALEN];
	__s64 sum;

	CL_STATIC_ASSERT(sizeof(r) == 56, "ICMP reply layout");
	if (bpf_skb_load_bytes(ctx, 0, &eth, sizeof(eth)) < 0 ||
	    bpf_skb_load_bytes(ctx, l3_off, &r.orig, sizeof(r.orig)) < 0 ||
	    bpf_skb_load_bytes(ctx, p->l4_off, r.l4, sizeof(r.l4)) < 0)
		return send_drop(ctx, DROP_INVALID, dir);
	if (r.orig.ihl != 5)
		return send_drop(ctx, reason, dir);
	/* The packet is consumed: its drop event shows it as it came in
	 * (a failure below sends a second one with its own reason). */
	send_drop_notify(ctx, reason, dir);

	r.ip.version = 4;
	r.ip.ihl = 5;
	r.ip.tot_len = bpf_htons(sizeof(r));
	r.ip.ttl = 64;
	r.ip.protocol = IPPROTO_ICMP;
	r.ip.saddr = r.orig.daddr;
	r.ip.daddr = r.orig.saddr;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&r.ip, sizeof(r.ip), 0);
	if (sum < 0)
		return send_drop(ctx, DROP_CSUM_L3, dir);
	r.ip.check = ~csum_fold_sum((__u32)sum);

	r.icmp.type = ICMP_DEST_UNREACH;
	r.icmp.code = code;
	if (code == ICMP_FRAG_NEEDED)
		r.icmp.mtu = bpf_htons((__u16)mtu);
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&r.icmp,
			    sizeof(r.icmp) + sizeof(r.orig) + sizeof(r.l4), 0);
	if (sum < 0)
		return send_drop(ctx, DROP_CSUM_L4, dir);
	r.icmp.checksum = ~csum_fold_sum((__u32)sum);

	__builtin_memcpy(tmp, eth.h_dest, ETH_ALEN);
	__builtin_memcpy(eth.h_dest, eth.h_source, ETH_ALEN);
	__builtin_memcpy(eth.h_source, tmp, ETH_ALEN);

	if (bpf_skb_change_tail(ctx, l3_off + sizeof(r), 0) < 0)
		return send_drop(ctx, DROP_WRITE_ERROR, dir);
	if (bpf_skb_store_bytes(ctx, 0, &eth, sizeof(eth), 0) < 0 ||
	    bpf_skb_store_bytes(ctx, l3_off, &r, sizeof(r), 0) < 0)
		return send_drop(ctx, DROP_WRITE_ERROR, dir);

	update_metrics(ctx, dir, reason);
	return bpf_redirect(ctx->ifindex, 0);
}

#endif /* __CILIUMLITE_ICMP_H */
