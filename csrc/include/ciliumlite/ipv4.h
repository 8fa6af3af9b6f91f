/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: IPv4 header parsing and rewriting.
 *
 * ipv4_validate() is the single bounded parse every program does before it
 * trusts an IPv4 header: version 4, IHL >= 5, the whole header (options
 * included, IHL up to 15 = 60 bytes) inside the frame and linear, and
 * IHL*4 <= tot_len <= frame length - l3_off (trailing Ethernet padding is
 * allowed). Checksums are not validated (the receiving stack does).
 * Fragments are accepted: nothing here looks at L4 yet.
 *
 * Helpers return 0 or a DROP_* reason (reasons.h). Helpers that may call a
 * bpf_skb_* function invalidate all packet pointers: re-derive with
 * ipv4_hdr() afterwards.
 */
#ifndef __CILIUMLITE_IPV4_H
#define __CILIUMLITE_IPV4_H

#include <linux/types.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>

#include "compiler.h"
#include "ctx.h"
#include "csum.h"
#include "reasons.h"

#define IPV4_MIN_HLEN	20
#define IPV4_MAX_HLEN	60

/* Fixed 20-byte IPv4 header at @l3_off, or NULL if not in the linear area.
 * Only valid after ipv4_validate() succeeded for the same frame. */
static __always_inline struct iphdr *ipv4_hdr(struct __ctx_buff *ctx, __u32 l3_off)
{
	struct iphdr *ip4 = ctx_data(ctx) + l3_off;

	if ((void *)(ip4 + 1) > ctx_data_end(ctx))
		return NULL;
	return ip4;
}

/* Validate the IPv4 header at @l3_off; on success *hdr_len = IHL * 4 and the
 * whole header is linear. Returns 0 or DROP_INVALID. May pull. */
static __always_inline int
ipv4_validate(struct __ctx_buff *ctx, __u32 l3_off, __u32 *hdr_len)
{
	struct iphdr *ip4;
	__u32 ihl, tot_len;

	if (!ctx_pull(ctx, l3_off + IPV4_MIN_HLEN))
		return DROP_INVALID;
	ip4 = ipv4_hdr(ctx, l3_off);
	if (!ip4)
		return DROP_INVALID;
	if (ip4->version != 4)
		return DROP_INVALID;
	ihl = (__u32)ip4->ihl * 4;
	if (ihl < IPV4_MIN_HLEN)
		return DROP_INVALID;
	tot_len = bpf_ntohs(ip4->tot_len);
	if (tot_len < ihl || tot_len > ctx_full_len(ctx) - l3_off)
		return DROP_INVALID;
	if (ihl > IPV4_MIN_HLEN && !ctx_pull(ctx, l3_off + ihl))
		return DROP_INVALID;
	*hdr_len = ihl;
	return 0;
}

/* Decrement the TTL of @ip4 (at @l3_off) and fix the header checksum
 * incrementally. Returns 0, DROP_TTL_EXCEEDED (TTL <= 1; packet untouched) or
 * DROP_CSUM_L3. Invalidates packet pointers. */
static __always_inline int
ipv4_dec_ttl(struct __ctx_buff *ctx, __u32 l3_off, struct iphdr *ip4)
{
	/* TTL and protocol form one 16-bit word of the checksummed header;
	 * hand the helper that word before and after, exactly as in memory. */
	__u16 *word = (__u16 *)&ip4->ttl;
	__u16 from, to;

	if (ip4->ttl <= 1)
		return DROP_TTL_EXCEEDED;
	from = *word;
	ip4->ttl--;
	to = *word;
	return l3_csum_replace16(ctx, l3_off + offsetof(struct iphdr, check), from, to);
}

#endif /* __CILIUMLITE_IPV4_H */
