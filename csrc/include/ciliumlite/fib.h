/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: native routing with BPF host routing (Cilium lib/fib.h
 * fib_redirect_v4 / fib_do_redirect).
 *
 *   fib_redirect_v4(ctx, l3_off, dir)
 *
 * looks the packet up in the node's FIB (bpf_fib_lookup, AF_INET, ingress
 * perspective from ctx->ifindex, main rules and tables), then:
 *
 *   result       action                                         counted as
 *   -----------  ---------------------------------------------  ---------------------
 *   SUCCESS      TTL-1, smac/dmac := FIB result,                REASON_FIB_REDIRECT
 *                bpf_redirect(fib.ifindex, 0)
 *   NO_NEIGH     TTL-1, bpf_redirect_neigh(fib.ifindex,         REASON_FIB_REDIRECT
 *                {AF_INET, next hop from the FIB}) - the kernel
 *                resolves the neighbour and fills in the MACs
 *   NOT_FWDED    to the stack untouched (no route, or a local / REASON_TO_STACK
 *                broadcast / multicast destination): the stack
 *                delivers it or answers ICMP unreachable
 *   FRAG_NEEDED  to the stack untouched (it fragments or sends  REASON_TO_STACK
 *                ICMP frag-needed)
 *   anything     drop                                           DROP_NO_FIB
 *   else         (BLACKHOLE, UNREACHABLE, PROHIBIT, FWD_DISABLED,
 *                UNSUPP_LWT, NO_SRC_ADDR)
 *
 * Cilium drops on every result but SUCCESS / NO_NEIGH; ciliumlite passes
 * NOT_FWDED and FRAG_NEEDED to the stack instead, so a missing route or a
 * node-local address degrades to kernel behaviour rather than a silent drop.
 *
 * tot_len is given to the lookup (MTU check -> FRAG_NEEDED) only for non-GSO
 * skbs: a GSO super-packet's tot_len exceeds the MTU by design and would
 * send every TCP bulk transfer to the stack (Cilium passes 0 always).
 *
 * Requirements: IPv4 forwarding enabled on the INGRESS device (the lxc:
 * net.ipv4.conf.<lxc>.forwarding=1, which net.ipv4.ip_forward=1 set before
 * the lxc is created gives) or every lookup returns FWD_DISABLED -> drop;
 * a route to the destination in the node's main FIB (BGP, static).
 */
#ifndef __CILIUMLITE_FIB_H
#define __CILIUMLITE_FIB_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "compiler.h"
#include "config.h"
#include "ctx.h"
#include "drop.h"
#include "eth.h"
#include "ipv4.h"
#include "metrics.h"
#include "reasons.h"
#include "trace.h"

#ifndef AF_INET
# define AF_INET	2	/* <sys/socket.h> does not build for -target bpf */
#endif

/* The FIB lookup alone, for a packet that would leave with source @saddr and
 * destination @daddr (the addresses it will have once translated), from the
 * ingress device @ifindex; @tot_len 0 skips the MTU check. Returns the
 * BPF_FIB_LKUP_RET_* result; on SUCCESS @fib holds the egress device and the
 * MACs. Does not touch the packet. */
static __always_inline int
fib_lookup4(struct __ctx_buff *ctx, struct bpf_fib_lookup *fib, __be32 saddr, __be32 daddr,
	    __u8 tos, __u16 tot_len, __u32 ifindex)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->tos = tos;
	fib->ipv4_src = saddr;
	fib->ipv4_dst = daddr;
	fib->ifindex = ifindex;
	fib->tot_len = tot_len;
	return bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
}

#ifdef CL_XDP
/* XDP: send the translated frame out along the SUCCESS result @fib of
 * fib_lookup4(): TTL-1, MACs from the FIB, then XDP_TX when the egress is
 * the device it came in on (the NodePort "hairpin"), else
 * bpf_redirect(egress) (XDP_REDIRECT). Counted REASON_XDP_FORWARDED. The
 * caller checked the result: XDP cannot resolve a neighbour
 * (bpf_redirect_neigh is tc-only), so anything but SUCCESS is left to tc. */
static __always_inline int
fib_xdp_forward(struct xdp_md *ctx, __u32 l3_off, const struct bpf_fib_lookup *fib, __u8 dir)
{
	__u32 oif = fib->ifindex;
	struct ethhdr *eth;
	struct iphdr *ip4;
	int ret;

	ip4 = ipv4_hdr(ctx, l3_off);
	if (!ip4)
		return send_drop(ctx, DROP_INVALID, dir);
	ret = ipv4_dec_ttl(ctx, l3_off, ip4);
	if (ret)
		return send_drop(ctx, ret, dir);
	eth = ctx_data(ctx);
	if ((void *)(eth + 1) > ctx_data_end(ctx))
		return send_drop(ctx, DROP_INVALID, dir);
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	update_metrics(ctx, dir, REASON_XDP_FORWARDED);
	if (oif == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(oif, 0);
}
#else
/* FIB-route the IPv4 packet at @l3_off (already ipv4_validate()d) out of the
 * node. @dir is the metrics direction of the calling program. Counts the
 * outcome (table above); returns the tc verdict (TC_ACT_REDIRECT, TC_ACT_OK
 * or TC_ACT_SHOT). */
static __always_inline int
fib_redirect_v4(struct __sk_buff *ctx, __u32 l3_off, __u8 dir)
{
	struct bpf_fib_lookup fib = {};
	struct ethhdr *eth;
	struct iphdr *ip4;
	__u32 oif;
	int fib_ret, ret;

	ip4 = ipv4_hdr(ctx, l3_off);
	if (!ip4)
		return send_drop(ctx, DROP_INVALID, dir);

	fib.family = AF_INET;
	fib.tos = ip4->tos;
	fib.ipv4_src = ip4->saddr;
	fib.ipv4_dst = ip4->daddr;
	fib.ifindex = ctx->ifindex;
	if (!ctx->gso_size)
		fib.tot_len = bpf_ntohs(ip4->tot_len);

	fib_ret = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	switch (fib_ret) {
	case BPF_FIB_LKUP_RET_SUCCESS:
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		break;
	case BPF_FIB_LKUP_RET_NOT_FWDED:
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		return send_to_stack(ctx, dir);
	default:
		return send_drop(ctx, DROP_NO_FIB, dir);
	}

	oif = fib.ifindex;
	/* Kernels before d1c362e1dd68 ("bpf: Always return target ifindex in
	 * bpf_fib_lookup", 6.4) leave the input ifindex in place on NO_NEIGH;
	 * fall back to the configured underlay device. */
	if (fib_ret == BPF_FIB_LKUP_RET_NO_NEIGH && oif == ctx->ifindex && native_ifindex)
		oif = native_ifindex;

	/* bpf_fib_lookup does not touch the packet: ip4 is still valid. */
	ret = ipv4_dec_ttl(ctx, l3_off, ip4);
	if (ret)
		return send_drop(ctx, ret, dir);

	if (fib_ret == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* fib.ipv4_dst now holds the next hop (gateway, or the
		 * destination itself on a connected route). */
		struct bpf_redir_neigh nh = {
			.nh_family = AF_INET,
			.ipv4_nh = fib.ipv4_dst,
		};

		update_metrics(ctx, dir, REASON_FIB_REDIRECT);
		send_trace_notify(ctx, TRACE_FIB, REASON_FIB_REDIRECT, dir, oif);
		return bpf_redirect_neigh(oif, &nh, sizeof(nh), 0);
	}

	/* SUCCESS: the neighbour is known; write the MACs ourselves.
	 * ipv4_dec_ttl() invalidated the packet pointers. */
	eth = ctx_data(ctx);
	if ((void *)(eth + 1) > ctx_data_end(ctx))
		return send_drop(ctx, DROP_INVALID, dir);
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);

	update_metrics(ctx, dir, REASON_FIB_REDIRECT);
	send_trace_notify(ctx, TRACE_FIB, REASON_FIB_REDIRECT, dir, oif);
	return bpf_redirect(oif, 0);
}
#endif /* CL_XDP */

#endif /* __CILIUMLITE_FIB_H */
