// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* bpf_host.o - tc programs on the node's underlay device (Cilium bpf_host.c).
 *
 * ONE object per node, loaded with the same pin root as bpf_lxc.o (maps are
 * shared by name). Needed in routing_mode NATIVE and for NodePort services;
 * harmless otherwise.
 *
 * Programs
 *   cil_from_netdev  SEC("tc"), tc ingress of the underlay device = packets
 *                    arriving at the node from the network.
 *   cil_to_netdev    SEC("tc"), tc EGRESS of the underlay device: DSR reply
 *                    rewrite, NodePort revDNAT for host-network backends,
 *                    BPF masquerade (see to_netdev_ipv4 below). Counts every
 *                    packet (REASON_TO_NETDEV / REASON_NAT_EGRESS / drop),
 *                    direction METRIC_EGRESS.
 *
 * cil_from_netdev decisions, in order (IPv4 frames addressed to this host
 * at L2, pkt_type PACKET_HOST, valid header; everything else -> stack):
 *   0. an ICMP error (type 3 / 11) to node_ipv4 -> tail_icmp_err_from_netdev
 *      (about a connection we translated: translated and sent to its
 *      owner; anything else -> stack, as before);
 *   1. reverse SNAT: daddr == node_ipv4, TCP/UDP, dport in snat_port_min..max
 *      and a TUPLE_F_IN entry in cilium_snat_v4_external -> daddr:dport :=
 *      the original source (nat.h). Then
 *        - the connection entry has CT_F_NODE_PORT (reply from a remote
 *          NodePort backend): source := the frontend (revDNAT), FIB-route
 *          back to the client (fib.h);
 *        - else (a masqueraded pod connection): continue at 4.
 *   2. service: {daddr, dport, proto} in cilium_lb4_services_v2, EXTERNAL
 *      scope only (externalTrafficPolicy=Local: that row lists the node's
 *      own backends):
 *        - not SVC_FLAG_ROUTABLE (a ClusterIP)      -> drop DROP_IS_CLUSTER_IP
 *        - count == 0                               -> drop DROP_NO_SERVICE
 *        - backend (CT service entry / affinity / Maglev when
 *          SVC_FLAG2_MAGLEV / random), DNAT, connection entry with
 *          CT_F_NODE_PORT, then
 *            local pod backend  -> ipv4_local_delivery (the reply is
 *                                  revDNATed in cil_from_container);
 *            node's own IP      -> stack;
 *            remote backend, DSR (lb_mode DSR, or HYBRID and TCP; needs
 *              routing_mode NATIVE): no connection entry; SYN / every UDP
 *              datagram that would exceed native_mtu with the option ->
 *              ICMP frag-needed back to the client (DROP_FRAG_NEEDED);
 *              else DNAT, option (dsr.h), fib_redirect_v4;
 *            remote backend, SNAT -> SNAT to node_ipv4:port (nat.h), then
 *                                  VXLAN (routing_mode TUNNEL, VNI = WORLD
 *                                  identity 2) or fib_redirect_v4.
 *   3. daddr is a local pod: reverse-SNATed masquerade replies are
 *      delivered at once; else (lb_mode != SNAT) DSR option handling on the
 *      backend node (dsr.h dsr_ingress: trusted option -> CT_F_DSR_INTERNAL
 *      entry + NAT OUT entry for the reply), the pod's ingress policy
 *      (enable_policy, policy.h: source identity = ipcache on saddr),
 *      reverse NAT of per-packet service replies (lb.h),
 *      ipv4_local_delivery; anything else -> stack. A NodePort packet
 *      DNATed to a local backend (2.) meets the same ingress policy.
 *   Frames this program cannot parse or that are not ours always go to the
 *   stack: a bug here must not cut the node off its underlay.
 *
 * Load-time configuration (.rodata): config.h; read here: node_ipv4,
 * routing_mode, tunnel_ifindex, tunnel_prefix_mask, native_ifindex,
 * native_cidr(_mask), pod_cidr(_mask), lb_mode, native_mtu,
 * enable_masquerade, snat_port_min/max, maglev_table_size, maglev_seed.
 *
 * Requirements for NodePort to remote backends: IPv4 forwarding on the
 * underlay device (FIB lookups from its ingress), a route to every remote pod
 * CIDR (native), node_ipv4 set.
 *
 * Maps (maps.h, pinned by name)
 *   cilium_lxc, cilium_tunnel_map            read
 *   cilium_lb4_* (services, backends, maglev, revnat)   read
 *   cilium_node_map                          read
 *   cilium_lb4_affinity, cilium_ct4_global, cilium_ct_any4_global,
 *   cilium_snat_v4_external                  read/write
 *   cilium_metrics                           read/write
 *   cilium_events                            write (drop/trace events, trace.h)
 *
 * All metrics here use direction METRIC_INGRESS. Every packet is counted
 * (REASON_TO_STACK / REASON_FORWARDED / REASON_FIB_REDIRECT /
 * REASON_ENCAPSULATED or a drop), underlay traffic included.
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
#include "ciliumlite/fib.h"
#include "ciliumlite/l4.h"
#include "ciliumlite/ct.h"
#include "ciliumlite/lb.h"
#include "ciliumlite/nat.h"
#include "ciliumlite/dsr.h"
#include "ciliumlite/icmp_err.h"
#include "ciliumlite/tailcall.h"
#include "ciliumlite/policy.h"	/* also WORLD_ID, Cilium's identity of the outside */

#define pass_to_stack(ctx)	send_to_stack((ctx), METRIC_INGRESS)

/* This object's tail calls (tailcall.h): filled by the loader after load. */
CL_CALLS_MAP(cilium_calls_host, CL_CALLS_HOST_SIZE);

/* ctx->cb[] words handed from one tail call to the next (tc keeps them for
 * the whole run of a packet through this object's programs). */
#define CB_SNAT_PORT	0	/* the source port a new mapping chose (network order) */

/* Parse the IPv4 packet at ETH_HLEN into @p: every program of this object
 * (entry or tail call) starts here, so a tail call needs nothing passed but
 * the packet. Returns 0, or -1 for a packet that is not valid IPv4. p->proto
 * is TCP/UDP, ICMP echo with masquerade on, or 0 (not translatable). */
static __always_inline int host_parse4(struct __sk_buff *ctx, struct pkt4 *p, __u32 *hdr_len)
{
	if (ipv4_validate(ctx, ETH_HLEN, hdr_len))
		return -1;
	if (pkt4_extract(ctx, ETH_HLEN, *hdr_len, p))
		return -1;
	if (!p->proto && enable_masquerade)
		pkt4_extract_icmp_echo(ctx, p);
	return 0;
}

/* cil_to_netdev: let the packet leave untouched, counted REASON_TO_NETDEV. */
#define send_to_stack_egress(ctx)					\
	({								\
		update_metrics((ctx), METRIC_EGRESS, REASON_TO_NETDEV);	\
		send_trace_notify((ctx), TRACE_TO_NETWORK, REASON_TO_NETDEV,	\
				  METRIC_EGRESS, 0);			\
		TC_ACT_OK;						\
	})

/* cil_to_netdev: the packet leaves translated, counted REASON_NAT_EGRESS. */
#define send_nat_egress(ctx)						\
	({								\
		update_metrics((ctx), METRIC_EGRESS, REASON_NAT_EGRESS);	\
		send_trace_notify((ctx), TRACE_TO_NETWORK, REASON_NAT_EGRESS,	\
				  METRIC_EGRESS, 0);			\
		TC_ACT_OK;						\
	})

/* Forward a NodePort packet whose destination is now a remote backend (or,
 * for replies, the outside client) out of the node. */
static __always_inline int
nodeport_fwd(struct __sk_buff *ctx, const struct pkt4 *p)
{
	if (routing_mode == ROUTING_MODE_TUNNEL) {
		struct tunnel_value *tun;

		tun = lookup_ip4_tunnel_endpoint(p->daddr, tunnel_prefix_mask);
		if (tun)
			return encap_and_redirect(ctx, tun->ip4, WORLD_ID, METRIC_INGRESS);
	}
	return fib_redirect_v4(ctx, p->l3_off, METRIC_INGRESS);
}

/* NodePort / LoadBalancer frontend hit (Cilium nodeport_lb4 +
 * nodeport_svc_lb4). @svc is a copy of the row, count > 0. */
static __always_inline int
nodeport_lb4(struct __sk_buff *ctx, struct pkt4 *p, struct lb4_key *key,
	     const struct lb4_service *svc)
{
	struct lb4_selected sel = {};
	struct endpoint_info *ep;
	__be32 svc_addr = p->daddr;
	__be16 svc_port = p->dport;
	int ret;

	ret = lb4_local(ctx, key, svc, p, true, &sel);
	if (ret)
		return send_drop(ctx, ret, METRIC_INGRESS);

	ep = lookup_ip4_endpoint(sel.address);
	if (!ep && lb_dsr_for(p->proto)) {
		/* Remote backend, DSR: DNAT only, frontend in an IP option
		 * (SYN / every datagram), no connection entry here - the reply
		 * goes straight from the backend node to the client. */
		bool opt = dsr_needs_opt(p);

		if (opt && dsr_too_big(ctx, p->l3_off))
			return dsr_reply_icmp4(ctx, p, METRIC_INGRESS);
		ret = pkt4_dnat(ctx, p, sel.address, sel.port);
		if (!ret && opt)
			ret = dsr_set_opt4(ctx, p, svc_addr, svc_port);
		if (ret)
			return send_drop(ctx, ret, METRIC_INGRESS);
		return fib_redirect_v4(ctx, p->l3_off, METRIC_INGRESS);
	}

	ret = pkt4_dnat(ctx, p, sel.address, sel.port);
	if (ret)
		return send_drop(ctx, ret, METRIC_INGRESS);
	ret = lb4_ct_conn(ctx, p, CT_F_NODE_PORT, sel.rev_nat_index, sel.backend_id, WORLD_ID);
	if (ret)
		return send_drop(ctx, ret, METRIC_INGRESS);

	if (ep) {
		if (ep->flags & ENDPOINT_F_HOST)
			return pass_to_stack(ctx);
		/* The backend pod's ingress policy, against the client's
		 * identity (ipcache on the source: WORLD from outside). */
		if (enable_policy) {
			ret = policy_ingress_from_network(ctx, p->l3_off, p->l4_off - p->l3_off, ep,
							  ipcache_lookup_identity(p->saddr), 0);
			if (ret)
				return send_drop(ctx, ret, METRIC_INGRESS);
		}
		return ipv4_local_delivery(ctx, p->l3_off, ep, METRIC_INGRESS, false);
	}

	/* Remote backend, SNAT mode: the reply must come back through us.
	 * The mapping and the rewrite are tail calls (verified apart). */
	return tail_call_or_drop(ctx, cilium_calls_host, CL_CALL_HOST_NODEPORT_SNAT, METRIC_INGRESS);
}

/* Tail call CL_CALL_HOST_NODEPORT_SNAT of cil_from_netdev: a NodePort
 * packet already DNATed to a remote backend (connection entry made) gets a
 * mapping to node_ipv4 (nat.h), port in CB_SNAT_PORT for tail_nodeport_fwd. */
SEC("tc")
int tail_nodeport_snat(struct __sk_buff *ctx)
{
	struct pkt4 p = {};
	__u32 hdr_len = 0;
	__be16 port = 0;
	int ret;

	if (host_parse4(ctx, &p, &hdr_len) || !p.proto)
		return send_drop(ctx, DROP_INVALID, METRIC_INGRESS);
	ret = snat_v4_mapping(&p, node_ipv4, true, &port);
	if (ret)
		return send_drop(ctx, ret, METRIC_INGRESS);
	ctx->cb[CB_SNAT_PORT] = port;
	return tail_call_or_drop(ctx, cilium_calls_host, CL_CALL_HOST_NODEPORT_FWD, METRIC_INGRESS);
}

/* Tail call CL_CALL_HOST_NODEPORT_FWD of tail_nodeport_snat: source :=
 * node_ipv4:CB_SNAT_PORT, then out to the backend (nodeport_fwd). */
SEC("tc")
int tail_nodeport_fwd(struct __sk_buff *ctx)
{
	__be16 port = (__be16)ctx->cb[CB_SNAT_PORT];
	struct pkt4 p = {};
	__u32 hdr_len = 0;
	int ret;

	if (host_parse4(ctx, &p, &hdr_len) || !p.proto)
		return send_drop(ctx, DROP_INVALID, METRIC_INGRESS);
	ret = pkt4_snat(ctx, &p, node_ipv4, port);
	if (ret)
		return send_drop(ctx, ret, METRIC_INGRESS);
	return nodeport_fwd(ctx, &p);
}

/* ICMP errors to node_ipv4 about connections this node translated (Cilium
 * snat_v4_rev_nat with the inner tuple of ICMP_DEST_UNREACH /
 * ICMP_TIME_EXCEEDED, and the related CT lookup). The quote is a packet
 * this node sent with its own address as source, so it is one of:
 *
 *   a. a request this node source-NATed (masquerade, NodePort SNAT to a
 *      remote backend): quoted node_ipv4:P -> server. The reply tuple of the
 *      quote has a TUPLE_F_IN entry -> the original source; the quoted
 *      source and the outer destination := it. NodePort (connection entry
 *      CT_F_NODE_PORT): the quoted destination (the backend) := the
 *      frontend, an outer source that is the backend := the frontend, and
 *      the error is routed to the outside client; masquerade: delivered to
 *      the pod. E.g. the request was too big between this node and the
 *      remote backend.
 *   b. a reply this node reverse-DNATed (NodePort to a local or remote
 *      backend, SNAT or DSR): quoted frontend -> client. The CT service
 *      entry of the client's connection (keyed client -> frontend, the
 *      quote's reply) names the backend: quoted source and outer
 *      destination := the backend; a NodePort SNAT mapping of the request
 *      (TUPLE_F_OUT entry of client -> backend) also restores the quoted
 *      destination to node_ipv4:P, as the backend sent its reply. The error
 *      goes to the backend pod: delivered here or forwarded like the
 *      connection's requests. E.g. a router between this node and the client
 *      cannot take the reply's size: the backend's TCP must see the
 *      frag-needed to lower its MSS (path MTU discovery through NodePort).
 *
 * Tail call CL_CALL_HOST_ICMP_ERR of cil_from_netdev, for every ICMP error
 * to node_ipv4 (a program of its own: its stack and paths are apart from
 * the NodePort ones). Anything else - not such an error after all, a quote
 * of no translated connection - goes to the stack unchanged, where
 * cil_from_netdev would have sent it (an ICMP message to a host IP). */
SEC("tc")
int tail_icmp_err_from_netdev(struct __sk_buff *ctx)
{
	struct icmp_err4 e = {};
	struct ipv4_ct_tuple t = {};
	struct ipv4_nat_entry *ne;
	struct endpoint_info *ep;
	struct ct_entry *ce;
	struct lb4_backend *be;
	__be32 to_addr, peer;
	__be16 to_port;
	int ret;

	if (!node_ipv4 || icmp4_err_parse(ctx, ETH_HLEN, &e))
		return pass_to_stack(ctx);
	if (e.out.daddr != node_ipv4 || e.in.saddr != node_ipv4)
		return pass_to_stack(ctx);

	/* a. The reply of the quote would be reverse-SNATed. */
	if (snat_port_in_range(e.in.sport)) {
		nat_tuple(&t, e.in.daddr, e.in.saddr, e.in.dport, e.in.sport, e.in.proto, TUPLE_F_IN);
		ne = snat_lookup(&t);
		if (ne) {
			struct lb4_reverse_nat *rn = NULL;
			__be16 idx = 0;

			to_addr = ne->to_addr;
			to_port = ne->to_port;
			peer = e.in.daddr;
			ret = icmp4_err_in_snat(ctx, &e, to_addr, to_port);
			if (!ret)
				ret = pkt4_set_daddr(ctx, &e.out, to_addr);
			if (ret)
				return send_drop(ctx, ret, METRIC_INGRESS);
			/* The quote is now the request as the client sent it
			 * after DNAT: client -> backend. */
			ct_tuple_orig(&t, &e.in, TUPLE_F_OUT);
			ce = ct_lookup(&t);
			if (ce && (ce->flags & CT_F_NODE_PORT) && ce->rev_nat_index) {
				idx = ce->rev_nat_index;
				rn = bpf_map_lookup_elem(&cilium_lb4_reverse_nat, &idx);
				if (!rn)
					return send_drop(ctx, DROP_NAT_NO_MAPPING, METRIC_INGRESS);
				to_addr = rn->address;
				to_port = rn->port;
				ret = icmp4_err_in_dnat(ctx, &e, to_addr, to_port);
				if (!ret && e.out.saddr == peer)
					ret = pkt4_set_saddr(ctx, &e.out, to_addr);
				if (ret)
					return send_drop(ctx, ret, METRIC_INGRESS);
				return nodeport_fwd(ctx, &e.out);
			}
			goto deliver;
		}
	}

	/* b. The quote is a NodePort reply: the client's service entry. */
	ct_tuple_reply(&t, &e.in, TUPLE_F_SERVICE);
	ce = ct_lookup(&t);
	if (!ce)
		return pass_to_stack(ctx);
	be = lb4_lookup_backend((__u32)ce->backend_id);
	if (!be)
		return pass_to_stack(ctx);
	to_addr = be->address;
	to_port = be->port;
	/* The request as the backend received it: client -> backend, maybe
	 * source-NATed to node_ipv4:P (NodePort SNAT, remote backend). */
	nat_tuple(&t, e.in.daddr, to_addr, e.in.dport, to_port, e.in.proto, TUPLE_F_OUT);
	ne = snat_lookup(&t);
	ret = icmp4_err_in_snat(ctx, &e, to_addr, to_port);
	if (!ret && ne)
		ret = icmp4_err_in_dnat(ctx, &e, ne->to_addr, ne->to_port);
	if (!ret)
		ret = pkt4_set_daddr(ctx, &e.out, to_addr);
	if (ret)
		return send_drop(ctx, ret, METRIC_INGRESS);
	ep = lookup_ip4_endpoint(to_addr);
	if (!ep)
		return nodeport_fwd(ctx, &e.out);

deliver:
	ep = lookup_ip4_endpoint(e.out.daddr);
	if (!ep || (ep->flags & ENDPOINT_F_HOST))
		return pass_to_stack(ctx);
	return ipv4_local_delivery(ctx, ETH_HLEN, ep, METRIC_INGRESS, false);
}

static __always_inline int handle_ipv4(struct __sk_buff *ctx)
{
	const __u32 l3_off = ETH_HLEN;
	struct lb4_service *svc, svc_copy;
	struct endpoint_info *ep;
	struct lb4_key key = {};
	struct pkt4 p = {};
	struct iphdr *ip4;
	__u32 hdr_len = 0;
	bool snat_hit = false;
	__u16 ct_seen = 0;
	__be32 daddr;
	int ret;

	/* Not for us at L2 (another host's MAC on a shared segment): the
	 * stack drops it; so do not deliver it either. */
	if (ctx->pkt_type != PACKET_HOST)
		return pass_to_stack(ctx);

	/* Malformed IPv4 is the stack's business on the underlay. */
	if (ipv4_validate(ctx, l3_off, &hdr_len))
		return pass_to_stack(ctx);
	if (pkt4_extract(ctx, l3_off, hdr_len, &p))
		return pass_to_stack(ctx);
	if (!p.proto && enable_masquerade)
		pkt4_extract_icmp_echo(ctx, &p);

	/* 0. ICMP errors to us, maybe about connections we translated
	 * (tail_icmp_err_from_netdev). */
	if (!p.proto && node_ipv4 && p.daddr == node_ipv4 && icmp4_is_err(ctx, l3_off, hdr_len))
		return tail_call_or_drop(ctx, cilium_calls_host, CL_CALL_HOST_ICMP_ERR, METRIC_INGRESS);

	if (p.proto) {
		/* 1. Replies to connections we source-NATed. */
		if (node_ipv4 && p.daddr == node_ipv4) {
			__u16 ct_flags = 0;

			ret = snat_v4_rev_nat(ctx, &p, &snat_hit);
			if (ret)
				return send_drop(ctx, ret, METRIC_INGRESS);
			if (snat_hit) {
				ret = lb4_rev_nat_reply(ctx, &p, 0, &ct_flags);
				if (ret)
					return send_drop(ctx, ret, METRIC_INGRESS);
				if (ct_flags & CT_F_NODE_PORT)
					return nodeport_fwd(ctx, &p);
				/* Masqueraded pod connection: deliver below. */
				goto deliver;
			}
		}

		/* 2. NodePort / LoadBalancer frontends. */
		key.address = p.daddr;
		key.dport = p.dport;
		key.proto = p.proto;
		svc = lb4_lookup_service(&key, false);
		if (svc) {
			if (!(svc->flags & SVC_FLAG_ROUTABLE))
				return send_drop(ctx, DROP_IS_CLUSTER_IP, METRIC_INGRESS);
			svc_copy = *svc;
			if (!svc_copy.count)
				return send_drop(ctx, DROP_NO_SERVICE, METRIC_INGRESS);
			return nodeport_lb4(ctx, &p, &key, &svc_copy);
		}
	}

deliver:
	ip4 = ipv4_hdr(ctx, l3_off);
	if (!ip4)
		return pass_to_stack(ctx);
	daddr = ip4->daddr;
	ep = lookup_ip4_endpoint(daddr);
	if (!ep || (ep->flags & ENDPOINT_F_HOST))
		return pass_to_stack(ctx);

	/* 3. DSR backend node: a trusted option installs the reverse NAT
	 * that cil_to_netdev applies to the pod's replies. */
	if (snat_hit)
		return ipv4_local_delivery(ctx, l3_off, ep, METRIC_INGRESS, false);
	if (lb_mode != LB_MODE_SNAT && p.proto && p.proto != IPPROTO_ICMP) {
		ret = dsr_ingress(ctx, &p, hdr_len);
		if (ret)
			return send_drop(ctx, ret, METRIC_INGRESS);
	}

	/* Reply of a service connection this node translated (client pod
	 * here, backend elsewhere): source back to the frontend. Its
	 * reply-tuple lookup also tells policy whether this is a reply. */
	ret = lb4_rev_nat_related_at_delivery(ctx, l3_off, hdr_len, &ct_seen);
	if (ret)
		return send_drop(ctx, ret, METRIC_INGRESS);
	/* Native routing: the source's identity from the ipcache (Cilium's
	 * resolve_srcid_ipv4), then the receiving pod's ingress policy. */
	if (enable_policy && !(ct_seen & CT_F_REPLY_SEEN)) {	/* replies: never checked */
		ret = policy_ingress_from_network(ctx, l3_off, hdr_len, ep,
						  ipcache_lookup_identity(p.saddr), ct_seen);
		if (ret)
			return send_drop(ctx, ret, METRIC_INGRESS);
	}
	return ipv4_local_delivery(ctx, l3_off, ep, METRIC_INGRESS, false);
}

/* ---- cil_to_netdev ---------------------------------------------------- */

/* Should pod traffic @p leave the cluster masqueraded (enable_masquerade)?
 * Source in this node's pod CIDR; destination not in native_cidr (when one
 * is set), not in the pod CIDR, not a cluster node (cilium_node_map). */
static __always_inline bool masq_wanted(const struct pkt4 *p)
{
	__be32 daddr = p->daddr;

	if (!enable_masquerade || !node_ipv4 || !pod_cidr_mask)
		return false;
	if ((p->saddr & pod_cidr_mask) != pod_cidr)
		return false;
	if ((daddr & pod_cidr_mask) == pod_cidr)
		return false;
	if (native_cidr_mask && (daddr & native_cidr_mask) == native_cidr)
		return false;
	/* An ICMP echo reply (pkt4_extract_icmp_echo: sport 0, the id in
	 * dport) answers a ping that reached the pod itself: it leaves
	 * untouched, as Cilium's snat_v4_nat punts it to the stack. A mapping
	 * would rewrite the id as a source port with the checksum updated
	 * from sport 0, not from the id (found by the fuzzer). */
	if (p->proto == IPPROTO_ICMP && !p->sport)
		return false;
	return !bpf_map_lookup_elem(&cilium_node_map, &daddr);
}

/* Egress of the underlay (Cilium handle_nat_fwd / nodeport_rev_dnat_fwd_ipv4
 * / snat_v4_nat):
 *   1. the packet-order tuple has a TUPLE_F_OUT entry in
 *      cilium_snat_v4_external -> source := to_addr:to_port: DSR replies on
 *      the backend node (entry from dsr_ingress) and established masquerade
 *      mappings (their CT entry is refreshed);
 *   2. the reply of a NodePort connection to a host-network backend (CT
 *      entry with CT_F_NODE_PORT) -> source := the frontend;
 *   3. masq_wanted() (TCP, UDP, ICMP echo) -> new mapping to node_ipv4 with a
 *      port from snat_port_min..max (nat.h), plus a connection entry (flags
 *      0, rev_nat_index 0) for Python's NAT GC; exhaustion ->
 *      DROP_NAT_NO_MAPPING;
 *   4. everything else leaves untouched (REASON_TO_NETDEV).
 * Translated packets count REASON_NAT_EGRESS. ICMP errors a pod sends about
 * DSR and masqueraded connections: icmp4_err_to_netdev. */
/* An ICMP error leaving the underlay from a pod of this node about a
 * connection whose replies leave source-NATed (Cilium snat_v4_nat with the
 * inner tuple): the quote is a packet the pod received, server -> pod, and
 * the quote's reply (pod -> server, packet order) has a TUPLE_F_OUT entry:
 * a DSR connection on the backend node (-> the frontend the client used)
 * or a masqueraded one (-> node_ipv4:P). Quoted destination := to_addr:
 * to_port, and the outer source, which is the pod, := to_addr. Then the
 * server (the DSR client, the masqueraded flow's peer) matches it to its
 * socket. E.g. a backend pod's port unreachable for a DSR UDP flow.
 * Returns a tc verdict or CL_ICMP_ERR_PASS. A global function. */
__attribute__((noinline)) int icmp4_err_to_netdev(struct __sk_buff *ctx)
{
	struct icmp_err4 e = {};
	struct ipv4_ct_tuple t = {};
	struct ipv4_nat_entry *ne;
	__be32 to_addr, pod;
	__be16 to_port;
	int ret;

	if (!ctx || icmp4_err_parse(ctx, ETH_HLEN, &e))
		return CL_ICMP_ERR_PASS;
	nat_tuple(&t, e.in.daddr, e.in.saddr, e.in.dport, e.in.sport, e.in.proto, TUPLE_F_OUT);
	ne = snat_lookup(&t);
	if (!ne)
		return CL_ICMP_ERR_PASS;
	to_addr = ne->to_addr;
	to_port = ne->to_port;
	pod = e.in.daddr;
	ret = icmp4_err_in_dnat(ctx, &e, to_addr, to_port);
	if (!ret && e.out.saddr == pod)
		ret = pkt4_set_saddr(ctx, &e.out, to_addr);
	if (ret)
		return send_drop(ctx, ret, METRIC_EGRESS);
	return send_nat_egress(ctx);
}

static __always_inline int to_netdev_ipv4(struct __sk_buff *ctx)
{
	struct ipv4_nat_entry *e;
	struct ipv4_ct_tuple t = {};
	struct pkt4 p = {};
	__u32 hdr_len = 0;
	__be32 addr;
	__be16 port;
	int ret;

	if (host_parse4(ctx, &p, &hdr_len))
		return send_to_stack_egress(ctx);
	if (!p.proto) {
		ret = icmp4_err_to_netdev(ctx);
		return ret != CL_ICMP_ERR_PASS ? ret : send_to_stack_egress(ctx);
	}

	nat_tuple(&t, p.saddr, p.daddr, p.sport, p.dport, p.proto, TUPLE_F_OUT);
	e = snat_lookup(&t);
	if (e) {
		struct ct_entry *ce;
		struct ipv4_ct_tuple ct = {};

		addr = e->to_addr;
		port = e->to_port;
		/* Keep the connection entry alive for GC: reply direction of
		 * a DSR connection, or original direction of a masqueraded
		 * one. */
		ct_tuple_reply(&ct, &p, TUPLE_F_OUT);
		ce = ct_lookup(&ct);
		if (ce && (ce->flags & CT_F_DSR_INTERNAL)) {
			ct_update(ce, &ct, &p, CT_DIR_RX, ctx->len);
		} else {
			ct_tuple_orig(&ct, &p, TUPLE_F_OUT);
			ce = ct_lookup(&ct);
			if (ce)
				ct_update(ce, &ct, &p, CT_DIR_TX, ctx->len);
		}
		ret = pkt4_snat(ctx, &p, addr, port);
		if (ret)
			return send_drop(ctx, ret, METRIC_EGRESS);
		return send_nat_egress(ctx);
	}

	/* Reply of a NodePort connection whose backend is this node itself
	 * (host network; nodeport_lb4 handed it to the stack): source back to
	 * the frontend (Cilium nodeport_rev_dnat_fwd_ipv4). */
	{
		struct ipv4_ct_tuple ct = {};
		struct ct_entry *ce;
		__u16 ct_flags = 0;

		ct_tuple_reply(&ct, &p, TUPLE_F_OUT);
		ce = ct_lookup(&ct);
		if (ce && (ce->flags & CT_F_NODE_PORT) && ce->rev_nat_index) {
			ret = lb4_rev_nat_reply(ctx, &p, 0, &ct_flags);
			if (ret)
				return send_drop(ctx, ret, METRIC_EGRESS);
			return send_nat_egress(ctx);
		}
	}

	/* A new mapping (the port search) is verified apart: tail_masq_new. */
	if (masq_wanted(&p))
		return tail_call_or_drop(ctx, cilium_calls_host, CL_CALL_HOST_MASQ_NEW, METRIC_EGRESS);
	return send_to_stack_egress(ctx);
}

/* Tail call CL_CALL_HOST_MASQ_NEW of cil_to_netdev: pod traffic leaving the
 * cluster that masq_wanted() and that has no mapping yet: connection entry
 * (flags 0, for Python's NAT GC) and a new mapping to node_ipv4 with a port
 * from snat_port_min..max (nat.h); exhaustion -> DROP_NAT_NO_MAPPING. The
 * port search is the costliest code to verify (each of its
 * SNAT_COLLISION_RETRIES exits is a path), so the rewrite that follows is a
 * tail call of its own (tail_masq_rewrite), port in CB_SNAT_PORT. */
SEC("tc")
int tail_masq_new(struct __sk_buff *ctx)
{
	struct ipv4_ct_tuple ct = {};
	struct pkt4 p = {};
	__u32 hdr_len = 0;
	__be16 port = 0;
	int ret;

	/* cil_to_netdev parsed this unchanged packet: a failure is a bug,
	 * and the packet leaves untouched as it would have before. */
	if (host_parse4(ctx, &p, &hdr_len) || !p.proto)
		return send_to_stack_egress(ctx);
	ct_tuple_orig(&ct, &p, TUPLE_F_OUT);
	ret = ct_create(&ct, &p, ctx->len, 0, 0, 0, 0, ctx->ifindex);
	if (!ret)
		ret = snat_v4_mapping(&p, node_ipv4, true, &port);
	if (ret)
		return send_drop(ctx, ret, METRIC_EGRESS);
	ctx->cb[CB_SNAT_PORT] = port;
	return tail_call_or_drop(ctx, cilium_calls_host, CL_CALL_HOST_MASQ_REWRITE, METRIC_EGRESS);
}

/* Tail call CL_CALL_HOST_MASQ_REWRITE of tail_masq_new: source :=
 * node_ipv4:CB_SNAT_PORT, counted REASON_NAT_EGRESS. */
SEC("tc")
int tail_masq_rewrite(struct __sk_buff *ctx)
{
	__be16 port = (__be16)ctx->cb[CB_SNAT_PORT];
	struct pkt4 p = {};
	__u32 hdr_len = 0;
	int ret;

	if (host_parse4(ctx, &p, &hdr_len) || !p.proto)
		return send_to_stack_egress(ctx);
	ret = pkt4_snat(ctx, &p, node_ipv4, port);
	if (ret)
		return send_drop(ctx, ret, METRIC_EGRESS);
	return send_nat_egress(ctx);
}

SEC("tc")
int cil_to_netdev(struct __sk_buff *ctx)
{
	struct ethhdr *eth = eth_hdr(ctx);

	if (eth && eth->h_proto == bpf_htons(ETH_P_IP))
		return to_netdev_ipv4(ctx);
	return send_to_stack_egress(ctx);
}

SEC("tc")
int cil_from_netdev(struct __sk_buff *ctx)
{
	struct ethhdr *eth;

	send_trace_notify(ctx, TRACE_FROM_NETWORK, 0, METRIC_INGRESS, 0);

	eth = eth_hdr(ctx);
	if (!eth)
		return pass_to_stack(ctx);

	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return handle_ipv4(ctx);

	/* ARP, IPv6, LLDP, ...: the node's own business. */
	return pass_to_stack(ctx);
}

char _license[] SEC("license") = "Dual BSD/GPL";
