// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* bpf_lxc.o - tc programs on the host side of a pod's veth pair (lxc*).
 *
 * ONE object per node, loaded once, attached to every pod's host-side veth
 * (unlike Cilium, which compiles one bpf_lxc.o per endpoint). Node-wide
 * configuration is .rodata, set by Python before load; everything about a
 * particular pod comes from cilium_lxc. The program finds "its" endpoint by
 * looking up the packet's source IP and checking that the endpoint's ifindex
 * is the device the packet arrived on (ctx->ifindex).
 *
 * Programs
 *   cil_from_container  SEC("tc"), tc ingress of every lxc* = packets leaving
 *                       the pod. Proxy-ARP, anti-spoofing, same-node delivery
 *                       with bpf_redirect_peer; remote pods by VXLAN
 *                       (routing_mode 1) or FIB lookup (routing_mode 2);
 *                       everything else to the stack.
 *
 * IPv4 decision order (Cilium handle_ipv4_from_lxc, §1.3 step 6):
 *   1. source must be the pod behind this lxc (IP and MAC), else drop;
 *   1b. services (TCP/UDP, not fragments; lb.h, ct.h):
 *      - the packet is a reply of a translated connection (connection CT
 *        entry with a rev_nat_index; this pod is the backend): source :=
 *        frontend from cilium_lb4_reverse_nat; hairpin (CT_F_LB_LOOPBACK):
 *        destination 169.254.42.1 := this pod. A NodePort reply
 *        (CT_F_NODE_PORT) that nothing below claims is FIB-routed back to
 *        the client instead of going to the stack;
 *      - else daddr:dport is a frontend (internal scope for two-scope
 *        services): count 0 -> ICMP port unreachable back into the pod
 *        (counted DROP_NO_SERVICE; connect() gets ECONNREFUSED); else backend (CT
 *        service entry pins it; affinity by client IP; random), DNAT, and
 *        for a hairpin (backend == this pod) source := 169.254.42.1; a
 *        connection CT entry drives the reverse NAT. A frontend hit means
 *        socket LB did not translate the flow (raw socket, socket LB off).
 *        Only with enable_per_packet_lb: at 0 no frontend is looked up and
 *        the packet goes on as a direct flow;
 *      - else (no frontend, a direct flow): a TCP SYN or UDP datagram whose
 *        tuple has a connection entry with a rev_nat_index (a service
 *        connection from the same client port to this very backend) starts
 *        a fresh entry without it, so its replies are not reverse-NATed;
 *      - an ICMP error from a backend about a connection translated to it
 *        (icmp_err.h icmp4_err_rev_nat_orig): quoted destination (and an
 *        outer source that is the backend) := the frontend; a NodePort one
 *        is FIB-routed back to the client like a reply;
 *      then the steps below run on the translated destination;
 *   1c. policy (enable_policy; policy.h): UDP to the VXLAN port ->
 *      DROP_ENCAP_PROHIBITED; replies (CT) pass; every forward packet is
 *      checked against the egress policy of this pod (peer: the local
 *      endpoint's identity, or ipcache on the translated daddr, WORLD on a
 *      miss) and, for a local destination pod, its ingress policy (peer:
 *      this pod's identity); a new allowed connection gets its CT entry;
 *   2. daddr is a local pod          -> ipv4_local_delivery (redirect_peer);
 *      daddr is a local host IP      -> stack;
 *   3. routing_mode TUNNEL: cilium_tunnel_map[daddr & tunnel_prefix_mask]
 *        found     -> encap_and_redirect(remote node, VNI = source sec_id);
 *        not found -> stack;
 *   4. routing_mode NATIVE: (daddr & native_cidr_mask) == native_cidr
 *        -> fib_redirect_v4 (fib.h), else stack;
 *   5. routing_mode NONE: stack.
 *
 * Load-time configuration (.rodata)
 *   name                  type    default  meaning
 *   enable_arp_responder  __u8    1        1: answer the pod's ARP requests
 *                                          with its lxc MAC (proxy-ARP) and
 *                                          drop ARP whose sender IP/MAC is not
 *                                          the pod's; 0: pass every ARP frame
 *                                          to the stack untouched (Python must
 *                                          then arrange proxy_arp on lxc*).
 *   routing_mode, tunnel_ifindex, native_ifindex, native_cidr,
 *   native_cidr_mask, tunnel_prefix_mask, node_ipv4
 *                                          node-wide, see config.h.
 *
 * Maps (maps.h, pinned by name)
 *   cilium_lxc         HASH         endpoint_key -> endpoint_info   read
 *   cilium_tunnel_map  HASH         tunnel_key   -> tunnel_value    read
 *   cilium_lb4_services_v2, _backends_v3, _reverse_nat              read
 *   cilium_lb4_affinity, cilium_ct4_global, cilium_ct_any4_global   read/write
 *   cilium_ipcache, cilium_policy (+ inner maps)                   read
 *   cilium_policystats LRU_PERCPU_HASH (policy.h)                 read/write
 *   cilium_metrics     PERCPU_HASH  metrics_key  -> metrics_value  read/write
 *   cilium_events      RINGBUF      drop/trace events (trace.h)    write
 *
 * ciliumlite is IPv4-only: IPv6 and every other non-IPv4/ARP ethertype is
 * dropped with DROP_UNKNOWN_L3 (disable IPv6 in the pod, or its router
 * solicitations and MLD reports will show up as such drops).
 *
 * All metrics here use direction METRIC_EGRESS (egress of the source pod,
 * Cilium's convention for from-container).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
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
#include "ciliumlite/arp.h"
#include "ciliumlite/l3.h"
#include "ciliumlite/encap.h"
#include "ciliumlite/fib.h"
#include "ciliumlite/l4.h"
#include "ciliumlite/ct.h"
#include "ciliumlite/lb.h"
#include "ciliumlite/icmp.h"
#include "ciliumlite/icmp_err.h"
#include "ciliumlite/policy.h"

/* See the table above. */
const volatile __u8 enable_arp_responder = 1;

/* Hand the packet to the node's stack, counted as REASON_TO_STACK at the
 * caller's line (metrics.h send_to_stack). */
#define pass_to_stack(ctx)	send_to_stack((ctx), METRIC_EGRESS)

/* The endpoint that owns @ip4 and sits behind the device the packet came in
 * on, or NULL (unknown IP, another pod's IP, or a host IP). */
static __always_inline struct endpoint_info *
lookup_source_endpoint(const struct __sk_buff *ctx, __be32 ip4)
{
	struct endpoint_info *ep = lookup_ip4_endpoint(ip4);

	if (!ep || ep->ifindex != ctx->ifindex || (ep->flags & ENDPOINT_F_HOST))
		return NULL;
	return ep;
}

/* Proxy-ARP (Cilium tail_handle_arp). */
static __always_inline int handle_arp(struct __sk_buff *ctx)
{
	struct arp_eth_ipv4 *arp;
	struct endpoint_info *ep;
	struct ethhdr *eth;
	__u64 mac, node_mac;
	__be32 sip, tip;
	int ret;

	if (!enable_arp_responder)
		return pass_to_stack(ctx);

	ret = arp_load(ctx, &eth, &arp);
	if (ret)
		return send_drop(ctx, ret, METRIC_EGRESS);

	/* Replies (e.g. the pod answering the node) and other opcodes: let
	 * the stack of the lxc device see them. */
	if (arp->ar_op != bpf_htons(ARPOP_REQUEST))
		return pass_to_stack(ctx);

	sip = arp->ar_sip;
	tip = arp->ar_tip;

	/* RFC 5227 probe (sender IP 0.0.0.0): never answer it, or the pod
	 * would see its own address as taken. */
	if (sip == 0)
		return pass_to_stack(ctx);

	ep = lookup_source_endpoint(ctx, sip);
	if (!ep)
		return send_drop(ctx, DROP_INVALID_SIP, METRIC_EGRESS);
	if (!eth_addr_eq_mac(eth->h_source, &ep->mac) ||
	    !eth_addr_eq_mac(arp->ar_sha, &ep->mac))
		return send_drop(ctx, DROP_INVALID_SMAC, METRIC_EGRESS);

	/* Unicast to someone else's MAC: not ours to answer (Cilium passes
	 * unknown ARP to the stack). */
	if (!arp_dst_is_us(eth, &ep->node_mac))
		return pass_to_stack(ctx);

	/* Gratuitous ARP / duplicate address detection for the pod's own IP. */
	if (tip == sip)
		return pass_to_stack(ctx);

	/* Every other target IP (the gateway, whatever it is) resolves to the
	 * lxc MAC: all L3 forwarding happens here. */
	mac = ep->mac;
	node_mac = ep->node_mac;
	arp_prepare_reply(eth, arp, &node_mac, &mac);
	update_metrics(ctx, METRIC_EGRESS, REASON_ARP_REPLY);
	send_trace_notify(ctx, TRACE_ARP_REPLY, REASON_ARP_REPLY, METRIC_EGRESS, ctx->ifindex);
	/* Egress of the same lxc device = back into the pod. */
	return bpf_redirect(ctx->ifindex, 0);
}

/* Policy of a packet from a pod (Cilium's policy_can_egress4 in
 * handle_ipv4_from_lxc and, for a local destination, the receiver's
 * policy_can_ingress4 run before the redirect): @p after service
 * translation, @dst its destination's cilium_lxc row (NULL: not local),
 * @ct_flags what lb4_rev_nat_reply said, @translated whether the service
 * translation rewrote the destination (its CT entry is accounted there).
 * Returns 0 or a DROP_*. */
static __always_inline int
lxc_policy(struct __sk_buff *ctx, const struct pkt4 *p, __u16 src_ep_id, __u32 src_sec_id,
	   const struct endpoint_info *dst, __u16 ct_flags, bool translated)
{
	struct policy_pkt pk = {};
	struct ct_entry *orig;
	enum policy_ct ct;
	__u32 peer = WORLD_ID;
	void *inner;
	int ret;

	if (policy_encap_prohibited(p))
		return DROP_ENCAP_PROHIBITED;
	/* The reply of a translated connection (its source is the frontend
	 * again), or a pod reaching itself through a service (hairpin,
	 * source 169.254.42.1: Cilium's loopback bypass). */
	if ((ct_flags & CT_F_REVNAT_DONE) || p->saddr == IPV4_LOOPBACK)
		return 0;
	policy_pkt_init(ctx, p, &pk);
	/* lb4_rev_nat_reply looked up this packet's reply tuple already; a
	 * translated packet is another tuple. */
	ct = policy_ct_classify(&pk, &orig, translated ? 0 : ct_flags);
	if (ct == POLICY_CT_REPLY)
		return 0;
	if (dst) {
		peer = dst->sec_id;	/* HOST_ID for the node's own addresses */
		/* The node reaches its pods through the stack, which no program
		 * here sees, so its connections have no CT entry: a TCP segment
		 * other than a SYN from a pod to its node is taken for the reply
		 * it almost always is (kubelet probes, the node's clients). */
		if ((dst->flags & ENDPOINT_F_HOST) && !orig && pk.pp.proto == IPPROTO_TCP &&
		    !pkt4_is_tcp_syn(&pk.pp))
			return 0;
	}
	inner = policy_map_of(src_ep_id);
	/* The peer's identity matters only to an enforced egress. */
	if (!dst && inner)
		peer = ipcache_lookup_identity(p->daddr);
	ret = policy_check(ctx, inner, src_ep_id, peer, 1, &pk, ct == POLICY_CT_NEW);
	if (ret)
		return ret;
	if (dst && !(dst->flags & ENDPOINT_F_HOST)) {
		ret = policy_check(ctx, policy_map_of(dst->lxc_id), dst->lxc_id, src_sec_id, 0, &pk,
				   ct == POLICY_CT_NEW);
		if (ret)
			return ret;
	}
	return policy_ct_commit(ctx, &pk, orig, src_sec_id, !translated);
}

/* Per-packet service translation (Cilium __per_packet_lb_svc_xlate_4 +
 * lb4_local + lb4_xlate). @p is a TCP/UDP packet from a validated pod. If its
 * daddr:dport is a frontend (internal scope for two-scope services), pick the
 * backend (CT service entry, affinity by client IP, random), DNAT, and for a
 * hairpin (the backend is the client itself) SNAT the source to
 * 169.254.42.1; then create/refresh the connection entry that drives the
 * reverse NAT of replies. Not a service: lb4_ct_untranslated (a direct flow
 * never inherits a service connection's rev-NAT). Returns 0 (translated or
 * not a service) or a DROP_*. */
static __always_inline int
lxc_svc_xlate(struct __sk_buff *ctx, struct pkt4 *p, __u32 src_sec_id)
{
	struct lb4_service *svc, svc_copy;
	struct lb4_selected sel = {};
	struct lb4_key key = {};
	__u16 ct_flags = 0;
	int ret;

	key.address = p->daddr;
	key.dport = p->dport;
	key.proto = p->proto;
	/* enable_per_packet_lb 0 (DatapathConfig.per_packet_lb=False, socket
	 * LB on): socket LB is the only E-W translation, as in a Cilium build
	 * without ENABLE_PER_PACKET_LB. The verifier prunes the lookup below;
	 * a packet still carrying a frontend (raw socket, a socket connected
	 * before the service) leaves untranslated, like any direct flow. */
	svc = enable_per_packet_lb ? lb4_lookup_service(&key, true) : NULL;
	if (!svc)
		/* Not a service: a direct flow, which must not inherit the
		 * rev-NAT of a service connection that had its tuple. */
		return lb4_ct_untranslated(ctx, p, src_sec_id);
	/* A frontend hit means socket LB did not translate this flow (raw
	 * socket, socket LB off or not attached): translate it here. */
	svc_copy = *svc;
	if (!svc_copy.count)
		return DROP_NO_SERVICE;

	ret = lb4_local(ctx, &key, &svc_copy, p, false, &sel);
	if (ret)
		return ret;

	if (sel.address == p->saddr) {
		ct_flags |= CT_F_LB_LOOPBACK;
		ret = pkt4_set_saddr(ctx, p, IPV4_LOOPBACK);
		if (ret)
			return ret;
	}
	ret = pkt4_dnat(ctx, p, sel.address, sel.port);
	if (ret)
		return ret;
	return lb4_ct_conn(ctx, p, ct_flags, sel.rev_nat_index, sel.backend_id, src_sec_id);
}

static __always_inline int handle_ipv4(struct __sk_buff *ctx)
{
	const __u32 l3_off = ETH_HLEN;
	struct endpoint_info *ep;
	struct ethhdr *eth;
	struct iphdr *ip4;
	__u32 hdr_len = 0;	/* IHL * 4; the L4 offset for later issues */
	__u32 src_sec_id;
	struct pkt4 p = {};
	__u16 ct_flags = 0;
	__u16 src_ep_id;
	bool nodeport_reply;
	bool translated = false;
	__be32 daddr;
	int ret;

	ret = ipv4_validate(ctx, l3_off, &hdr_len);
	if (ret)
		return send_drop(ctx, ret, METRIC_EGRESS);

	eth = ctx_data(ctx);
	if ((void *)(eth + 1) > ctx_data_end(ctx))
		return send_drop(ctx, DROP_INVALID, METRIC_EGRESS);
	ip4 = ipv4_hdr(ctx, l3_off);
	if (!ip4)
		return send_drop(ctx, DROP_INVALID, METRIC_EGRESS);

	/* Anti-spoofing: the source IP must be the pod behind this lxc, and
	 * the source MAC that pod's eth0 MAC. */
	ep = lookup_source_endpoint(ctx, ip4->saddr);
	if (!ep)
		return send_drop(ctx, DROP_INVALID_SIP, METRIC_EGRESS);
	if (!eth_addr_eq_mac(eth->h_source, &ep->mac))
		return send_drop(ctx, DROP_INVALID_SMAC, METRIC_EGRESS);
	src_sec_id = ep->sec_id;
	src_ep_id = ep->lxc_id;

	/* ---- Service translation (lb.h, ct.h) ---------------------------
	 * 1. A reply of a translated connection (this pod is the backend):
	 *    source := frontend (per-packet ClusterIP, NodePort to a local
	 *    backend), and for a hairpin destination := this pod.
	 * 2. Otherwise a packet to a frontend: DNAT to a backend. */
	ret = pkt4_extract(ctx, l3_off, hdr_len, &p);
	if (ret)
		return send_drop(ctx, ret, METRIC_EGRESS);
	if (p.proto) {
		ret = lb4_rev_nat_reply(ctx, &p, 0, &ct_flags);
		if (ret)
			return send_drop(ctx, ret, METRIC_EGRESS);
		if (!(ct_flags & CT_F_REPLY_SEEN)) {
			__be32 before = p.daddr;

			ret = lxc_svc_xlate(ctx, &p, src_sec_id);
			translated = p.daddr != before;
			/* No backend (the packet is still untranslated): ICMP
			 * port unreachable back into the pod, so connect()
			 * fails at once with ECONNREFUSED (Cilium's default
			 * SERVICE_NO_BACKEND_RESPONSE=reject). */
			if (ret == DROP_NO_SERVICE)
				return icmp4_reply_unreach(ctx, &p, ICMP_PORT_UNREACH, 0,
							   DROP_NO_SERVICE, METRIC_EGRESS);
			if (ret)
				return send_drop(ctx, ret, METRIC_EGRESS);
		}
		daddr = p.daddr;
	} else {
		daddr = ip4->daddr;
		/* An ICMP error from a backend (or a router behind it) about a
		 * connection translated to it: the quote's destination back to
		 * the frontend, so the client's socket matches it; a NodePort
		 * one is then routed back to the outside client below, like
		 * the connection's replies (icmp_err.h). */
		ret = icmp4_err_rev_nat_orig(ctx, 0);
		if (ret < 0)
			return send_drop(ctx, -ret, METRIC_EGRESS);
		ct_flags = (__u16)ret;
	}
	/* A NodePort reply goes back to an outside client: route it with the
	 * FIB rather than the stack when nothing below claims it. */
	nodeport_reply = (ct_flags & (CT_F_REVNAT_DONE | CT_F_NODE_PORT)) ==
			 (CT_F_REVNAT_DONE | CT_F_NODE_PORT);

	/* Destination: a pod on this node -> straight into it; one of the
	 * node's own IPs -> the stack. */
	ep = lookup_ip4_endpoint(daddr);
	if (enable_policy) {
		ret = lxc_policy(ctx, &p, src_ep_id, src_sec_id, ep, ct_flags, translated);
		if (ret)
			return send_drop(ctx, ret, METRIC_EGRESS);
	}
	if (ep) {
		if (!(ep->flags & ENDPOINT_F_HOST))
			return ipv4_local_delivery(ctx, l3_off, ep, METRIC_EGRESS, false);
		return pass_to_stack(ctx);
	}

	/* ---- Not local: remote pods, other nodes, the world. ------------
	 * routing_mode is .rodata: the verifier prunes the other modes. */
	if (routing_mode == ROUTING_MODE_TUNNEL) {
		struct tunnel_value *tun;

		tun = lookup_ip4_tunnel_endpoint(daddr, tunnel_prefix_mask);
		if (tun)
			return encap_and_redirect(ctx, tun->ip4, src_sec_id, METRIC_EGRESS);
		/* Not a pod CIDR of a known node (Cilium: DROP_NO_TUNNEL_ENDPOINT
		 * -> stack): the world, node IPs, ... */
		if (nodeport_reply)
			return fib_redirect_v4(ctx, l3_off, METRIC_EGRESS);
		return pass_to_stack(ctx);
	}

	if (nodeport_reply ||
	    (routing_mode == ROUTING_MODE_NATIVE &&
	     (daddr & native_cidr_mask) == native_cidr))
		return fib_redirect_v4(ctx, l3_off, METRIC_EGRESS);

	return pass_to_stack(ctx);
}

SEC("tc")
int cil_from_container(struct __sk_buff *ctx)
{
	struct ethhdr *eth;

	send_trace_notify(ctx, TRACE_FROM_LXC, 0, METRIC_EGRESS, 0);

	eth = eth_hdr(ctx);
	if (!eth)
		return send_drop(ctx, DROP_INVALID, METRIC_EGRESS);

	switch (eth->h_proto) {
	case bpf_htons(ETH_P_IP):
		return handle_ipv4(ctx);
	case bpf_htons(ETH_P_ARP):
		return handle_arp(ctx);
	default:
		/* IPv6, VLAN, 802.3 length frames, ...: ciliumlite is IPv4-only. */
		return send_drop(ctx, DROP_UNKNOWN_L3, METRIC_EGRESS);
	}
}

char _license[] SEC("license") = "Dual BSD/GPL";
