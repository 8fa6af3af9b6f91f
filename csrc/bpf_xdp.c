// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* bpf_xdp.o - XDP on the node's native (underlay) device (Cilium bpf_xdp.c).
 *
 * ONE object per node, loaded with the node's pin root: it shares every map
 * with bpf_host.o (LB, CT, NAT, metrics), so XDP and tc agree on every
 * connection whichever of them handled a packet, and adds the prefilter maps
 * (prefilter.h). Attached before bpf_host's cil_from_netdev sees the packet:
 * what XDP lets through (XDP_PASS) reaches tc unchanged.
 *
 * Program
 *   cil_xdp_entry  SEC("xdp"), native (driver) or generic mode.
 *
 * Decisions, in order:
 *   1. Not IPv4, a truncated Ethernet frame or an IPv4 header that does not
 *      validate (ipv4.h)                                -> XDP_PASS (tc and
 *      the stack decide, as bpf_host does for its underlay).
 *   2. Prefilter: the source address in cilium_cidr_v4_fix (/32) or
 *      cilium_cidr_v4_dyn (LPM)                          -> XDP_DROP, counted
 *      DROP_PREFILTER (file bpf_xdp.c, METRIC_INGRESS).
 *   3. NodePort acceleration (knob enable_xdp_nodeport, routing_mode NATIVE
 *      only), for frames addressed to this device's MAC (knob native_mac,
 *      when set):
 *      a. reply of a NodePort connection this node SNATed (daddr ==
 *         node_ipv4, dport in the SNAT range, a TUPLE_F_IN entry whose
 *         connection entry has CT_F_NODE_PORT): reverse SNAT, source :=
 *         the frontend, FIB to the client;
 *      b. a request to a NodePort / LoadBalancer frontend (EXTERNAL scope,
 *         routable, with backends) whose backend (lb4_local: CT service
 *         entry, affinity, Maglev or random, exactly as tc) is NOT a local
 *         endpoint: DNAT, then
 *           DSR (lb_mode DSR, or HYBRID and TCP): the IPv4 option on SYN /
 *             every datagram (dsr.h), no connection entry;
 *           SNAT: connection entry CT_F_NODE_PORT, SNAT to node_ipv4.
 *      Each is forwarded only when the FIB lookup for the translated
 *      addresses succeeds with a known neighbour, and that lookup happens
 *      BEFORE the packet is touched: anything else (no neighbour yet, MTU,
 *      no route) is XDP_PASS of the untouched frame, and tc does the same
 *      translation from the same CT / NAT entries (bpf_redirect_neigh).
 *      Forwarded frames leave with XDP_TX (egress = ingress device) or
 *      XDP_REDIRECT, counted REASON_XDP_FORWARDED.
 *      Everything else - local backends, ClusterIPs, frontends without
 *      backends, non-NodePort traffic, ICMP, fragments - is XDP_PASS,
 *      untouched, so tc keeps one place for those verdicts and drops.
 *
 * Load-time configuration (.rodata): config.h (node_ipv4, routing_mode,
 * lb_mode, native_mtu, snat_port_min/max, maglev_*), plus this object's
 * knobs below.
 *
 * Maps: prefilter.h (read); maps.h cilium_lxc, cilium_lb4_* (read),
 * cilium_lb4_affinity, cilium_ct4_global, cilium_ct_any4_global,
 * cilium_snat_v4_external, cilium_metrics (read/write).
 */
#define CL_XDP 1	/* before any include: struct __ctx_buff is xdp_md */

#include <linux/bpf.h>
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
#include "ciliumlite/eth.h"
#include "ciliumlite/ipv4.h"
#include "ciliumlite/fib.h"
#include "ciliumlite/l4.h"
#include "ciliumlite/ct.h"
#include "ciliumlite/lb.h"
#include "ciliumlite/nat.h"
#include "ciliumlite/dsr.h"
#include "ciliumlite/prefilter.h"

/* Knobs of this object (set by ciliumlite/datapath/loader.py load_xdp):
 *   enable_xdp_nodeport  1: NodePort acceleration (DatapathConfig.acceleration
 *                        != "disabled"); 0: prefilter only.
 *   native_mac           the device's MAC (mac_t); frames for another MAC
 *                        (flooded by a switch) are never translated. 0 = any. */
const volatile __u8 enable_xdp_nodeport = 0;
const volatile __u64 native_mac = 0;

#define WORLD_ID	2

/* The two paths that write NAT state are global functions, so the verifier
 * checks each once instead of once per path into it (snat_v4_mapping's
 * collision loop alone is thousands of instructions): without them
 * cil_xdp_entry took 743,508 verified instructions in SNAT mode, over the
 * 2x-headroom budget (tests/bpf/test_verifier_headroom.py). Their @p may be
 * NULL as far as the verifier knows. */

/* 3a. Reply of a NodePort connection whose backend is remote (SNAT mode). */
__attribute__((noinline)) int xdp_nodeport_reply(struct xdp_md *ctx, struct pkt4 *p, __u32 tos)
{
	struct ipv4_ct_tuple t = {}, ct = {};
	struct lb4_reverse_nat *rn;
	struct ipv4_nat_entry *e;
	struct bpf_fib_lookup fib;
	struct ct_entry *ce;
	struct pkt4 orig;
	__u16 ct_flags = 0;
	__be16 idx;
	bool hit = false;
	int ret;

	if (!p)
		return XDP_PASS;
	orig = *p;
	nat_tuple(&t, p->saddr, p->daddr, p->sport, p->dport, p->proto, TUPLE_F_IN);
	e = snat_lookup(&t);
	if (!e)
		return XDP_PASS;
	/* What the reply will be once reverse-SNATed: backend -> client. */
	orig.daddr = e->to_addr;
	orig.dport = e->to_port;
	ct_tuple_reply(&ct, &orig, TUPLE_F_OUT);
	ce = ct_lookup(&ct);
	if (!ce || !(ce->flags & CT_F_NODE_PORT) || !ce->rev_nat_index)
		return XDP_PASS;	/* a masqueraded pod connection: tc delivers */
	idx = ce->rev_nat_index;
	rn = bpf_map_lookup_elem(&cilium_lb4_reverse_nat, &idx);
	if (!rn)
		return XDP_PASS;	/* tc drops it with DROP_NAT_NO_MAPPING */
	if (fib_lookup4(ctx, &fib, rn->address, orig.daddr, tos, 0, ctx->ingress_ifindex) !=
	    BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_PASS;

	ret = snat_v4_rev_nat(ctx, p, &hit);
	if (!ret && hit)
		ret = lb4_rev_nat_reply(ctx, p, 0, &ct_flags);
	if (ret)
		return send_drop(ctx, ret, METRIC_INGRESS);
	if (!hit || !(ct_flags & CT_F_REVNAT_DONE))
		return send_drop(ctx, DROP_NAT_NO_MAPPING, METRIC_INGRESS);
	return fib_xdp_forward(ctx, ETH_HLEN, &fib, METRIC_INGRESS);
}

/* 3b, SNAT mode: DNAT to the remote backend @sel, connection entry, SNAT to
 * node_ipv4, out. */
__attribute__((noinline)) int
xdp_nodeport_snat(struct xdp_md *ctx, struct pkt4 *p, struct lb4_selected *sel, __u32 tos, __u32 tot_len)
{
	struct bpf_fib_lookup fib;
	int ret;

	if (!p || !sel)
		return XDP_PASS;
	if (fib_lookup4(ctx, &fib, node_ipv4, sel->address, tos, tot_len, ctx->ingress_ifindex) !=
	    BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_PASS;
	ret = pkt4_dnat(ctx, p, sel->address, sel->port);
	if (!ret)
		ret = lb4_ct_conn(ctx, p, CT_F_NODE_PORT, sel->rev_nat_index, sel->backend_id, WORLD_ID);
	if (!ret)
		ret = snat_v4_apply(ctx, p, node_ipv4, true);
	if (ret)
		return send_drop(ctx, ret, METRIC_INGRESS);
	return fib_xdp_forward(ctx, ETH_HLEN, &fib, METRIC_INGRESS);
}

/* 3b. A NodePort / LoadBalancer frontend hit. */
static __always_inline int
xdp_nodeport_lb4(struct xdp_md *ctx, struct pkt4 *p, struct lb4_key *key,
		 const struct lb4_service *svc, __u8 tos, __u16 tot_len)
{
	struct lb4_selected sel = {};
	struct bpf_fib_lookup fib;
	__be32 svc_addr = p->daddr;
	__be16 svc_port = p->dport;
	int ret;

	if (lb4_local(ctx, key, svc, p, true, &sel))
		return XDP_PASS;	/* tc selects again and drops with the reason */
	if (lookup_ip4_endpoint(sel.address))
		return XDP_PASS;	/* local backend (or this host): tc delivers it */

	if (lb_dsr_for(p->proto)) {
		bool opt = dsr_needs_opt(p);

		if (opt && dsr_too_big(ctx, ETH_HLEN))
			return XDP_PASS;	/* tc answers ICMP frag-needed */
		if (fib_lookup4(ctx, &fib, p->saddr, sel.address, tos,
				tot_len + (opt ? DSR_IPV4_OPT_LEN : 0), ctx->ingress_ifindex) !=
		    BPF_FIB_LKUP_RET_SUCCESS)
			return XDP_PASS;
		ret = pkt4_dnat(ctx, p, sel.address, sel.port);
		if (!ret && opt)
			ret = dsr_set_opt4(ctx, p, svc_addr, svc_port);
		if (ret)
			return send_drop(ctx, ret, METRIC_INGRESS);
		return fib_xdp_forward(ctx, ETH_HLEN, &fib, METRIC_INGRESS);
	}

	return xdp_nodeport_snat(ctx, p, &sel, tos, tot_len);
}

static __always_inline int xdp_nodeport(struct xdp_md *ctx, __u32 hdr_len)
{
	struct lb4_service *svc, svc_copy;
	struct lb4_key key = {};
	struct pkt4 p = {};
	struct ethhdr *eth;
	struct iphdr *ip4;
	__u16 tot_len;
	__u64 mac;
	__u8 tos;

	if (routing_mode != ROUTING_MODE_NATIVE || !node_ipv4)
		return XDP_PASS;
	eth = ctx_data(ctx);
	if ((void *)(eth + 1) > ctx_data_end(ctx))
		return XDP_PASS;
	/* A copy: through a pointer to the (volatile) global, clang would
	 * read its initializer instead of the value set at load. */
	mac = native_mac;
	if (mac && !eth_addr_eq_mac(eth->h_dest, &mac))
		return XDP_PASS;
	ip4 = ipv4_hdr(ctx, ETH_HLEN);
	if (!ip4)
		return XDP_PASS;
	tos = ip4->tos;
	tot_len = bpf_ntohs(ip4->tot_len);
	if (pkt4_extract(ctx, ETH_HLEN, hdr_len, &p) || !p.proto)
		return XDP_PASS;	/* truncated L4, ICMP, fragments: tc's */

	if (p.daddr == node_ipv4 && snat_port_in_range(p.dport) && lb_mode != LB_MODE_DSR) {
		int ret = xdp_nodeport_reply(ctx, &p, tos);

		if (ret != XDP_PASS)
			return ret;
	}

	key.address = p.daddr;
	key.dport = p.dport;
	key.proto = p.proto;
	svc = lb4_lookup_service(&key, false);
	if (!svc || !(svc->flags & SVC_FLAG_ROUTABLE) || !svc->count)
		return XDP_PASS;
	svc_copy = *svc;
	return xdp_nodeport_lb4(ctx, &p, &key, &svc_copy, tos, tot_len);
}

SEC("xdp")
int cil_xdp_entry(struct xdp_md *ctx)
{
	struct ethhdr *eth = ctx_data(ctx);
	struct iphdr *ip4;
	__u32 hdr_len = 0;

	if ((void *)(eth + 1) > ctx_data_end(ctx))
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	if (ipv4_validate(ctx, ETH_HLEN, &hdr_len))
		return XDP_PASS;
	ip4 = ipv4_hdr(ctx, ETH_HLEN);
	if (!ip4)
		return XDP_PASS;
	if (prefilter_denied(ip4->saddr))
		return send_drop(ctx, DROP_PREFILTER, METRIC_INGRESS);
	if (enable_xdp_nodeport)
		return xdp_nodeport(ctx, hdr_len);
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
