/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: L3 forwarding into a local endpoint (Cilium lib/l3.h).
 *
 * ipv4_local_delivery() is the single place where delivery MACs are set,
 * shared by cil_from_container (pod -> pod on this node) and, later,
 * cil_from_overlay / cil_from_netdev (remote -> pod):
 *
 *   TTL - 1 (incremental csum), smac := ep->node_mac, dmac := ep->mac,
 *   count REASON_FORWARDED, trace "redirect-peer", bpf_redirect_peer(ep->ifindex)
 *
 * bpf_redirect_peer() moves the skb from the *ingress* hook straight to the
 * ingress of the veth peer (the pod's eth0 in the pod netns) without a
 * backlog pass. Requirements (kernel >= 5.10): called from tc ingress; the
 * target is a veth/netkit whose peer lives in another netns - otherwise the
 * kernel drops the packet after the program returned TC_ACT_REDIRECT.
 */
#ifndef __CILIUMLITE_L3_H
#define __CILIUMLITE_L3_H

#include <linux/types.h>
#include <linux/ip.h>
#include <linux/if_packet.h>
#include <bpf/bpf_helpers.h>

#include "compiler.h"
#include "ctx.h"
#include "drop.h"
#include "eth.h"
#include "ipv4.h"
#include "maps.h"
#include "metrics.h"
#include "reasons.h"
#include "trace.h"

/* Deliver the IPv4 packet (header at @l3_off, already ipv4_validate()d) to the
 * local endpoint @ep. @dir is the metrics direction of the calling program.
 * @from_tunnel: the skb was decapsulated by a tunnel device, whose skbs are
 * PACKET_OTHERHOST; set PACKET_HOST or ip_rcv in the pod drops them (Cilium
 * redirect_ep(..., from_tunnel); reference §7.2). Pass a constant.
 * Returns the tc verdict (TC_ACT_REDIRECT or TC_ACT_SHOT). */
#ifndef CL_XDP	/* bpf_redirect_peer is tc-only */
static __always_inline int
ipv4_local_delivery(struct __sk_buff *ctx, __u32 l3_off,
		    const struct endpoint_info *ep, __u8 dir, bool from_tunnel)
{
	struct ethhdr *eth;
	struct iphdr *ip4;
	int ret;

	/* Copy what we need from the map value before any helper call. */
	__u32 ifindex = ep->ifindex;
	__u64 mac = ep->mac;
	__u64 node_mac = ep->node_mac;

	eth = ctx_data(ctx);
	if ((void *)(eth + 1) > ctx_data_end(ctx))
		return send_drop(ctx, DROP_INVALID, dir);
	ip4 = ipv4_hdr(ctx, l3_off);
	if (!ip4)
		return send_drop(ctx, DROP_INVALID, dir);

	/* MACs first (plain stores), then the TTL, whose csum helper
	 * invalidates the packet pointers. */
	eth_store_mac(eth->h_source, &node_mac);
	eth_store_mac(eth->h_dest, &mac);

	ret = ipv4_dec_ttl(ctx, l3_off, ip4);
	if (ret)
		return send_drop(ctx, ret, dir);

	if (from_tunnel && bpf_skb_change_type(ctx, PACKET_HOST) < 0)
		return send_drop(ctx, DROP_WRITE_ERROR, dir);

	update_metrics(ctx, dir, REASON_FORWARDED);
	send_trace_notify(ctx, TRACE_TO_LXC, REASON_FORWARDED, dir, ifindex);
	return bpf_redirect_peer(ifindex, 0);
}
#endif

#endif /* __CILIUMLITE_L3_H */
