// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* bpf_overlay.o - tc program on the node's VXLAN device (cilium_vxlan).
 *
 * ONE object per node, loaded with the same pin root as bpf_lxc.o (maps are
 * shared by name). Used in routing_mode TUNNEL.
 *
 * Programs
 *   cil_from_overlay  SEC("tc"), tc ingress of cilium_vxlan = packets the
 *                     kernel VXLAN device has just decapsulated (Cilium
 *                     bpf_overlay.c cil_from_overlay).
 *
 * Decisions
 *   - no tunnel metadata (bpf_skb_get_tunnel_key fails: not a collect-md
 *     device, or the hook is not on a tunnel device)
 *                                   -> drop DROP_NO_TUNNEL_KEY;
 *   - ARP and every other non-IPv4 frame
 *                                   -> stack untouched (TC_ACT_OK);
 *   - malformed IPv4                -> drop DROP_INVALID;
 *   - daddr is a local pod          -> reverse NAT if the packet is the
 *                                      reply of a per-packet service
 *                                      connection this node translated
 *                                      (lb.h lb4_rev_nat_at_delivery), then
 *                                      ipv4_local_delivery(from_tunnel):
 *                                      TTL-1, smac := lxc MAC, dmac := pod
 *                                      MAC, pkt_type := PACKET_HOST,
 *                                      bpf_redirect_peer(lxc);
 *   - daddr is a local host IP      -> pkt_type := PACKET_HOST, stack;
 *   - any other daddr               -> drop DROP_UNROUTABLE (nothing that is
 *                                      not on this node should arrive here).
 *
 * The VNI (tunnel_id) is the sender's source security identity (encap.h).
 * With enable_policy (policy.h) it is the peer of the receiving pod's
 * ingress policy, checked before the reverse NAT and the delivery (a reply of
 * a connection this node knows passes; a new allowed connection gets its CT
 * entry here); a VNI claiming HOST (1) is DROP_INVALID_IDENTITY: a node
 * presents its own traffic as REMOTE_NODE, so only a forgery says HOST.
 *
 * Why PACKET_HOST: the inner frame's destination MAC is the *sender's* lxc
 * MAC (MACs are not rewritten on encap), so after eth_type_trans() on the
 * VXLAN device the skb is PACKET_OTHERHOST, which ip_rcv drops (reference
 * §7.2; kernels >= 6.15 reset it in redirect_peer anyway).
 *
 * Load-time configuration (.rodata): only the shared config.h variables;
 * none is read by this program.
 *
 * Maps (maps.h, pinned by name)
 *   cilium_lxc      HASH         endpoint_key -> endpoint_info   read
 *   cilium_ipcache, cilium_policy, cilium_policystats (policy.h)
 *   cilium_metrics  PERCPU_HASH  metrics_key  -> metrics_value  read/write
 *   cilium_events   RINGBUF      drop/trace events (trace.h)    write
 *
 * All metrics here use direction METRIC_INGRESS.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ciliumlite/compiler.h"
#include "ciliumlite/config.h"
#include "ciliumlite/ctx.h"
#include "ciliumlite/reasons.h"
#include "ciliumlite/maps.h"
#include "ciliumlite/metrics.h"
#include "ciliumlite/drop.h"
#include "ciliumlite/trace.h"
#include "ciliumlite/eth.h"
#include "ciliumlite/ipv4.h"
#include "ciliumlite/l3.h"
#include "ciliumlite/encap.h"
#include "ciliumlite/lb.h"
#include "ciliumlite/icmp_err.h"
#include "ciliumlite/policy.h"

#define pass_to_stack(ctx)	send_to_stack((ctx), METRIC_INGRESS)

static __always_inline int
handle_ipv4(struct __sk_buff *ctx, __u32 src_identity)
{
	const __u32 l3_off = ETH_HLEN;
	struct endpoint_info *ep;
	struct iphdr *ip4;
	__u32 hdr_len = 0;
	__u16 ct_seen = 0;
	int ret;

	ret = ipv4_validate(ctx, l3_off, &hdr_len);
	if (ret)
		return send_drop(ctx, ret, METRIC_INGRESS);
	ip4 = ipv4_hdr(ctx, l3_off);
	if (!ip4)
		return send_drop(ctx, DROP_INVALID, METRIC_INGRESS);

	ep = lookup_ip4_endpoint(ip4->daddr);
	if (!ep)
		return send_drop(ctx, DROP_UNROUTABLE, METRIC_INGRESS);

	if (ep->flags & ENDPOINT_F_HOST) {
		if (bpf_skb_change_type(ctx, PACKET_HOST) < 0)
			return send_drop(ctx, DROP_WRITE_ERROR, METRIC_INGRESS);
		return pass_to_stack(ctx);
	}

	if (enable_policy && src_identity == HOST_ID)
		return send_drop(ctx, DROP_INVALID_IDENTITY, METRIC_INGRESS);

	/* Reply of a service connection this node translated: source back to
	 * the frontend before the client pod sees it; an ICMP error about one
	 * (the backend's port unreachable, a frag-needed from behind it): its
	 * quote back to the frontend (icmp_err.h). The lookup also tells
	 * policy whether the packet is a reply or related (never checked). */
	ret = lb4_rev_nat_related_at_delivery(ctx, l3_off, hdr_len, &ct_seen);
	if (ret)
		return send_drop(ctx, ret, METRIC_INGRESS);
	if (enable_policy) {
		ret = policy_ingress_from_network(ctx, l3_off, hdr_len, ep, src_identity, ct_seen);
		if (ret)
			return send_drop(ctx, ret, METRIC_INGRESS);
	}
	return ipv4_local_delivery(ctx, l3_off, ep, METRIC_INGRESS, true);
}

SEC("tc")
int cil_from_overlay(struct __sk_buff *ctx)
{
	struct bpf_tunnel_key key = {};
	struct ethhdr *eth;

	send_trace_notify(ctx, TRACE_FROM_OVERLAY, 0, METRIC_INGRESS, 0);

	if (bpf_skb_get_tunnel_key(ctx, &key, TUNNEL_KEY_SIZE, 0) < 0)
		return send_drop(ctx, DROP_NO_TUNNEL_KEY, METRIC_INGRESS);

	eth = eth_hdr(ctx);
	if (!eth)
		return send_drop(ctx, DROP_INVALID, METRIC_INGRESS);

	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return handle_ipv4(ctx, key.tunnel_id);

	/* ARP, IPv6, ...: not ours; the stack decides. */
	return pass_to_stack(ctx);
}

char _license[] SEC("license") = "Dual BSD/GPL";
