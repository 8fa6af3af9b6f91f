/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: proxy-ARP (Cilium lib/arp.h, bpf_lxc.c tail_handle_arp).
 *
 * Only the packet side lives here: bounded parsing of an Ethernet/IPv4 ARP
 * frame and the in-place rewrite of a request into its reply. Who may ask and
 * what to answer (endpoint lookup, anti-spoofing) is the program's business.
 *
 * Frame: 14 B Ethernet + 28 B ARP (8 B fixed header + sha/sip/tha/tip) = 42 B;
 * anything after that (Ethernet padding to 60 B) is kept as is.
 */
#ifndef __CILIUMLITE_ARP_H
#define __CILIUMLITE_ARP_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>

#include "compiler.h"
#include "ctx.h"
#include "eth.h"
#include "reasons.h"

/* <linux/if_arp.h> pulls in <linux/netdevice.h> -> <sys/socket.h> (glibc),
 * which does not build for -target bpf (gnu/stubs-32.h); the three constants
 * we need are stable UAPI values. */
#ifndef ARPHRD_ETHER
# define ARPHRD_ETHER	1
#endif
#ifndef ARPOP_REQUEST
# define ARPOP_REQUEST	1
#endif
#ifndef ARPOP_REPLY
# define ARPOP_REPLY	2
#endif

/* ARP for hardware type Ethernet and protocol IPv4 (RFC 826). */
struct arp_eth_ipv4 {
	__be16	ar_hrd;		/* ARPHRD_ETHER */
	__be16	ar_pro;		/* ETH_P_IP */
	__u8	ar_hln;		/* 6 */
	__u8	ar_pln;		/* 4 */
	__be16	ar_op;		/* ARPOP_REQUEST / ARPOP_REPLY */
	__u8	ar_sha[ETH_ALEN];
	__be32	ar_sip;
	__u8	ar_tha[ETH_ALEN];
	__be32	ar_tip;
} __packed;

CL_STATIC_ASSERT(sizeof(struct arp_eth_ipv4) == 28, "ARP Ethernet/IPv4 body is 28 bytes");

#define ARP_FRAME_LEN	(ETH_HLEN + sizeof(struct arp_eth_ipv4))	/* 42 */

/* Parse the ARP frame in @ctx. Returns 0 with *eth / *arp set, or DROP_INVALID
 * when the frame is truncated or is not Ethernet/IPv4 ARP (hrd 1, pro 0x0800,
 * hln 6, pln 4) - on an Ethernet veth anything else is malformed. May pull;
 * the returned pointers are valid until the next bpf_skb_* call. */
static __always_inline int
arp_load(struct __sk_buff *ctx, struct ethhdr **eth, struct arp_eth_ipv4 **arp)
{
	void *data, *data_end;
	struct arp_eth_ipv4 *a;

	if (!ctx_pull_skb(ctx, ARP_FRAME_LEN))
		return DROP_INVALID;
	data = ctx_data(ctx);
	data_end = ctx_data_end(ctx);
	if (data + ARP_FRAME_LEN > data_end)
		return DROP_INVALID;
	a = data + ETH_HLEN;
	if (a->ar_hrd != bpf_htons(ARPHRD_ETHER) ||
	    a->ar_pro != bpf_htons(ETH_P_IP) ||
	    a->ar_hln != ETH_ALEN || a->ar_pln != 4)
		return DROP_INVALID;
	*eth = data;
	*arp = a;
	return 0;
}

/* Cilium arp_check(): Ethernet destination is broadcast or @node_mac. */
static __always_inline bool
arp_dst_is_us(const struct ethhdr *eth, const __u64 *node_mac)
{
	return eth_is_bcast(eth->h_dest) || eth_addr_eq_mac(eth->h_dest, node_mac);
}

/* Rewrite the request in place into the reply "tip is-at node_mac"
 * (Cilium arp_prepare_response):
 *   eth src = node_mac, eth dst = requester MAC (@req_mac),
 *   op = 2, sha = node_mac, sip = requested IP, tha = req_mac, tip = requester IP.
 * The frame length is unchanged; no checksum is involved. */
static __always_inline void
arp_prepare_reply(struct ethhdr *eth, struct arp_eth_ipv4 *arp,
		  const __u64 *node_mac, const __u64 *req_mac)
{
	__be32 req_ip = arp->ar_sip;
	__be32 wanted_ip = arp->ar_tip;

	eth_store_mac(eth->h_dest, req_mac);
	eth_store_mac(eth->h_source, node_mac);

	arp->ar_op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(arp->ar_sha, node_mac, ETH_ALEN);
	arp->ar_sip = wanted_ip;
	__builtin_memcpy(arp->ar_tha, req_mac, ETH_ALEN);
	arp->ar_tip = req_ip;
}

#endif /* __CILIUMLITE_ARP_H */
