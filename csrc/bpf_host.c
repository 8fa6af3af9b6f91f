// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* bpf_host.o - tc programs on the node's underlay device (Cilium bpf_host.c).
 *
 * ONE object per node, loaded with the same pin root as bpf_lxc.o (maps are
 * shared by name). Needed in routing_mode NATIVE; harmless in the others.
 *
 * Programs
 *   cil_from_netdev  SEC("tc"), tc ingress of the underlay device = packets
 *                    arriving at the node from the network.
 *
 * Decisions (Cilium handle_ipv4_cont with ENABLE_HOST_ROUTING)
 *   - IPv4, frame addressed to this host at L2 (pkt_type PACKET_HOST), valid
 *     header, daddr is a local pod -> ipv4_local_delivery: TTL-1,
 *     smac := lxc MAC, dmac := pod MAC, bpf_redirect_peer(lxc);
 *   - everything else (ARP, VXLAN UDP to the node, BGP, host IPs, unknown
 *     destinations, malformed or L2-misaddressed frames)
 *                                   -> stack untouched (TC_ACT_OK).
 *     The only drops are delivery failures of pod-bound packets inside
 *     ipv4_local_delivery (TTL exceeded, csum/write errors): a bug here must
 *     not cut the node off its underlay.
 *
 * Load-time configuration (.rodata): only the shared config.h variables;
 * none is read yet.
 *
 * Maps (maps.h, pinned by name)
 *   cilium_lxc      HASH         endpoint_key -> endpoint_info   read
 *   cilium_metrics  PERCPU_HASH  metrics_key  -> metrics_value  read/write
 *
 * All metrics here use direction METRIC_INGRESS. Every packet is counted
 * (REASON_TO_STACK / REASON_FORWARDED), underlay traffic included.
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
#include "ciliumlite/eth.h"
#include "ciliumlite/ipv4.h"
#include "ciliumlite/l3.h"

#define pass_to_stack(ctx)	send_to_stack((ctx), METRIC_INGRESS)

static __always_inline int handle_ipv4(struct __sk_buff *ctx)
{
	const __u32 l3_off = ETH_HLEN;
	struct endpoint_info *ep;
	struct iphdr *ip4;
	__u32 hdr_len = 0;

	/* Not for us at L2 (another host's MAC on a shared segment): the
	 * stack drops it; so do not deliver it either. */
	if (ctx->pkt_type != PACKET_HOST)
		return pass_to_stack(ctx);

	/* Malformed IPv4 is the stack's business on the underlay. */
	if (ipv4_validate(ctx, l3_off, &hdr_len))
		return pass_to_stack(ctx);
	ip4 = ipv4_hdr(ctx, l3_off);
	if (!ip4)
		return pass_to_stack(ctx);

	/* ==== NodePort / LoadBalancer / DSR (later issue) ==================
	 * nodeport_lb4() goes HERE, before the endpoint lookup: service
	 * frontends (node IP:nodePort, LB IPs) are translated to a backend and
	 * either delivered locally (fall through) or forwarded (fib.h / DSR).
	 * ================================================================= */

	ep = lookup_ip4_endpoint(ip4->daddr);
	if (!ep || (ep->flags & ENDPOINT_F_HOST))
		return pass_to_stack(ctx);

	return ipv4_local_delivery(ctx, l3_off, ep, METRIC_INGRESS, false);
}

SEC("tc")
int cil_from_netdev(struct __sk_buff *ctx)
{
	struct ethhdr *eth = eth_hdr(ctx);

	if (!eth)
		return pass_to_stack(ctx);

	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return handle_ipv4(ctx);

	/* ARP, IPv6, LLDP, ...: the node's own business. */
	return pass_to_stack(ctx);
}

char _license[] SEC("license") = "Dual BSD/GPL";
