/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: the L4 view LB / CT / NAT need, and header rewrites with
 * incremental checksum updates (Cilium lb4_xlate / lb4_rev_nat / snat_v4_rewrite).
 *
 *   pkt4_extract(ctx, l3_off, hdr_len, &p)
 *
 * fills struct pkt4 from an ipv4_validate()d packet: addresses, ports (packet
 * order, network byte order), protocol, TCP flags, L4 offset. Only TCP and UDP
 * first-and-only fragments are "translatable" (p.proto != 0); ICMP, other
 * protocols and every IP fragment leave p.proto == 0 (masquerade opts in to
 * ICMP echo with pkt4_extract_icmp_echo()) (Cilium has no fragment
 * tracking for NAT either, §7.1 #11180), so LB/NAT never touch them.
 *
 * Rewrites (pkt4_set_{saddr,daddr,sport,dport}) store the new value, fix the
 * IP header checksum (addresses) and the L4 checksum (pseudo header for
 * addresses, the word itself for ports) through the kernel helpers, which
 * handle CHECKSUM_PARTIAL skbs. A UDP checksum of 0 (none) stays 0
 * (BPF_F_MARK_MANGLED_0). They update @p too. Each returns 0 or a DROP_*
 * and invalidates packet pointers.
 */
#ifndef __CILIUMLITE_L4_H
#define __CILIUMLITE_L4_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "compiler.h"
#include "ctx.h"
#include "csum.h"
#include "reasons.h"

#ifndef IP_MF
# define IP_MF		0x2000
#endif
#ifndef IP_OFFSET
# define IP_OFFSET	0x1fff
#endif

/* TCP flag bits (byte 13 of the TCP header). */
#define TCP_FLAG_FIN	0x01
#define TCP_FLAG_SYN	0x02
#define TCP_FLAG_RST	0x04
#define TCP_FLAG_PSH	0x08
#define TCP_FLAG_ACK	0x10

#define TCP_CSUM_OFF	16
#define UDP_CSUM_OFF	6

struct pkt4 {
	__be32	saddr;
	__be32	daddr;
	__be16	sport;		/* packet order: the header's source port */
	__be16	dport;
	__u8	proto;		/* IPPROTO_TCP / IPPROTO_UDP; 0 = not translatable */
	__u8	tcp_flags;	/* byte 13 of the TCP header; 0 for UDP */
	__u16	l4_off;		/* from the start of the frame */
	__u32	l3_off;
};

/* Fill @p. Returns 0 (check p->proto) or DROP_CT_INVALID_HDR when a TCP/UDP
 * header is truncated. */
static __always_inline int
pkt4_extract(struct __ctx_buff *ctx, __u32 l3_off, __u32 hdr_len, struct pkt4 *p)
{
	struct iphdr *ip4;
	__u8 proto;
	__u32 l4_off = l3_off + hdr_len;
	__be16 ports[2];

	p->proto = 0;
	p->tcp_flags = 0;
	p->l3_off = l3_off;
	p->l4_off = l4_off;

	ip4 = ctx_data(ctx) + l3_off;
	if ((void *)(ip4 + 1) > ctx_data_end(ctx))
		return DROP_INVALID;
	p->saddr = ip4->saddr;
	p->daddr = ip4->daddr;
	proto = ip4->protocol;
	p->sport = 0;
	p->dport = 0;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	if (ip4->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return 0;

	if (ctx_load_bytes(ctx, l4_off, ports, sizeof(ports)) < 0)
		return DROP_CT_INVALID_HDR;
	if (proto == IPPROTO_TCP) {
		__u8 flags;

		if (ctx_full_len(ctx) < l4_off + sizeof(struct tcphdr))
			return DROP_CT_INVALID_HDR;
		if (ctx_load_bytes(ctx, l4_off + 13, &flags, 1) < 0)
			return DROP_CT_INVALID_HDR;
		p->tcp_flags = flags;
	} else if (ctx_full_len(ctx) < l4_off + sizeof(struct udphdr)) {
		return DROP_CT_INVALID_HDR;
	}
	p->sport = ports[0];
	p->dport = ports[1];
	p->proto = proto;
	return 0;
}

#define ICMP_ECHOREPLY_TYPE	0
#define ICMP_ECHO_TYPE		8
#define ICMP_CSUM_OFF		2
#define ICMP_ID_OFF		4

/* Masquerade only: after pkt4_extract() left p->proto == 0, make an ICMP
 * echo request / reply translatable with its identifier as the "port"
 * (request: sport = id, dport = 0; reply: sport = 0, dport = id - Cilium's
 * convention). Other ICMP stays untranslatable. */
static __always_inline void
pkt4_extract_icmp_echo(struct __ctx_buff *ctx, struct pkt4 *p)
{
	struct iphdr *ip4;
	__u8 type;
	__be16 id;

	ip4 = ctx_data(ctx) + p->l3_off;
	if ((void *)(ip4 + 1) > ctx_data_end(ctx))
		return;
	if (ip4->protocol != IPPROTO_ICMP || (ip4->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return;
	if (ctx_full_len(ctx) < p->l4_off + 8)
		return;
	if (ctx_load_bytes(ctx, p->l4_off, &type, 1) < 0 ||
	    ctx_load_bytes(ctx, p->l4_off + ICMP_ID_OFF, &id, 2) < 0)
		return;
	if (type == ICMP_ECHO_TYPE) {
		p->sport = id;
		p->dport = 0;
	} else if (type == ICMP_ECHOREPLY_TYPE) {
		p->sport = 0;
		p->dport = id;
	} else {
		return;
	}
	p->proto = IPPROTO_ICMP;
}

static __always_inline bool pkt4_is_tcp_syn(const struct pkt4 *p)
{
	return p->proto == IPPROTO_TCP &&
	       (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

static __always_inline __u32 pkt4_csum_off(const struct pkt4 *p)
{
	if (p->proto == IPPROTO_TCP)
		return p->l4_off + TCP_CSUM_OFF;
	if (p->proto == IPPROTO_ICMP)
		return p->l4_off + ICMP_CSUM_OFF;
	return p->l4_off + UDP_CSUM_OFF;
}

static __always_inline __u64 pkt4_l4_csum_flags(const struct pkt4 *p)
{
	return p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/* Rewrite the 4-byte address at @addr_off (offset in the IP header). */
static __always_inline int
__pkt4_set_addr(struct __ctx_buff *ctx, const struct pkt4 *p, __u32 addr_off,
		__be32 old, __be32 new)
{
	if (old == new)
		return 0;
	/* ICMP has no pseudo header. */
	if (p->proto && p->proto != IPPROTO_ICMP &&
	    ctx_l4_csum_replace(ctx, pkt4_csum_off(p), old, new,
				pkt4_l4_csum_flags(p) | BPF_F_PSEUDO_HDR | sizeof(new)) < 0)
		return DROP_CSUM_L4;
	if (ctx_l3_csum_replace(ctx, p->l3_off + offsetof(struct iphdr, check),
				old, new, sizeof(new)) < 0)
		return DROP_CSUM_L3;
	if (ctx_store_bytes(ctx, p->l3_off + addr_off, &new, sizeof(new), 0) < 0)
		return DROP_WRITE_ERROR;
	return 0;
}

/* Rewrite the 2-byte port at @port_off (0 = source, 2 = destination; for an
 * ICMP echo both mean its identifier). */
static __always_inline int
__pkt4_set_port(struct __ctx_buff *ctx, const struct pkt4 *p, __u32 port_off,
		__be16 old, __be16 new)
{
	if (old == new)
		return 0;
	if (p->proto == IPPROTO_ICMP)
		port_off = ICMP_ID_OFF;
	if (ctx_l4_csum_replace(ctx, pkt4_csum_off(p), old, new,
				pkt4_l4_csum_flags(p) | sizeof(new)) < 0)
		return DROP_CSUM_L4;
	if (ctx_store_bytes(ctx, p->l4_off + port_off, &new, sizeof(new), 0) < 0)
		return DROP_WRITE_ERROR;
	return 0;
}

static __always_inline int
pkt4_set_saddr(struct __ctx_buff *ctx, struct pkt4 *p, __be32 addr)
{
	int ret = __pkt4_set_addr(ctx, p, offsetof(struct iphdr, saddr), p->saddr, addr);

	if (!ret)
		p->saddr = addr;
	return ret;
}

static __always_inline int
pkt4_set_daddr(struct __ctx_buff *ctx, struct pkt4 *p, __be32 addr)
{
	int ret = __pkt4_set_addr(ctx, p, offsetof(struct iphdr, daddr), p->daddr, addr);

	if (!ret)
		p->daddr = addr;
	return ret;
}

static __always_inline int
pkt4_set_sport(struct __ctx_buff *ctx, struct pkt4 *p, __be16 port)
{
	int ret = __pkt4_set_port(ctx, p, 0, p->sport, port);

	if (!ret)
		p->sport = port;
	return ret;
}

static __always_inline int
pkt4_set_dport(struct __ctx_buff *ctx, struct pkt4 *p, __be16 port)
{
	int ret = __pkt4_set_port(ctx, p, 2, p->dport, port);

	if (!ret)
		p->dport = port;
	return ret;
}

/* DNAT: destination := @addr:@port. */
static __always_inline int
pkt4_dnat(struct __ctx_buff *ctx, struct pkt4 *p, __be32 addr, __be16 port)
{
	int ret = pkt4_set_daddr(ctx, p, addr);

	if (ret)
		return ret;
	return pkt4_set_dport(ctx, p, port);
}

/* SNAT: source := @addr:@port. */
static __always_inline int
pkt4_snat(struct __ctx_buff *ctx, struct pkt4 *p, __be32 addr, __be16 port)
{
	int ret = pkt4_set_saddr(ctx, p, addr);

	if (ret)
		return ret;
	return pkt4_set_sport(ctx, p, port);
}

#endif /* __CILIUMLITE_L4_H */
