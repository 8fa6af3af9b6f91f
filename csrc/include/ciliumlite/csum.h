/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: checksum helpers.
 *
 * Header rewrites update checksums incrementally through the kernel helpers
 * (bpf_l3_csum_replace / bpf_l4_csum_replace), never recompute them, and never
 * validate incoming checksums (Cilium does the same: the receiving stack
 * drops bad ones). Both helpers take the *old and new values as they sit in
 * memory* (network order for header fields), so callers pass raw loads.
 *
 * Helpers return 0 or a DROP_* reason (reasons.h).
 *
 * XDP has neither helper: ctx_l3_csum_replace / ctx_l4_csum_replace are the
 * kernel helpers in tc and, with CL_XDP, the same RFC 1624 update done on
 * the packet directly (csum_replace_by_diff). An XDP frame carries no
 * CHECKSUM_PARTIAL state, so its L4 checksum is taken to be complete (a
 * sender with TX checksum offload on a veth hands XDP a partial one: see
 * docs/xdp.md). Flags as the helpers': the field size (2 or 4; 0 = @to is a
 * ready bpf_csum_diff result), BPF_F_MARK_MANGLED_0 (UDP: 0 = no checksum
 * stays 0, a result of 0 is written 0xffff); BPF_F_PSEUDO_HDR changes
 * nothing for a complete checksum.
 */
#ifndef __CILIUMLITE_CSUM_H
#define __CILIUMLITE_CSUM_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "compiler.h"
#include "ctx.h"
#include "reasons.h"

/* Replace a 16-bit word covered by the IP header checksum at @csum_off. */
static __always_inline int ctx_l3_csum_replace(struct __ctx_buff *ctx, __u32 csum_off,
					       __u64 from, __u64 to, __u64 flags);

static __always_inline int
l3_csum_replace16(struct __ctx_buff *ctx, __u32 csum_off, __u16 from, __u16 to)
{
	if (ctx_l3_csum_replace(ctx, csum_off, from, to, sizeof(__u16)) < 0)
		return DROP_CSUM_L3;
	return 0;
}

/* Replace a 32-bit word covered by the IP header checksum at @csum_off. */
static __always_inline int
l3_csum_replace32(struct __ctx_buff *ctx, __u32 csum_off, __u32 from, __u32 to)
{
	if (ctx_l3_csum_replace(ctx, csum_off, from, to, sizeof(__u32)) < 0)
		return DROP_CSUM_L3;
	return 0;
}

/* Fold a 32-bit one's-complement sum to 16 bits (not inverted). */
static __always_inline __u16 csum_fold_sum(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* One's-complement 32-bit add with end-around carry. */
static __always_inline __u32 csum_add32(__u32 a, __u32 b)
{
	a += b;
	return a + (a < b);
}

#ifdef CL_XDP
static __always_inline int
__xdp_csum_replace(struct xdp_md *ctx, __u32 csum_off, __u64 from, __u64 to, __u64 flags)
{
	__u32 size = flags & BPF_F_HDR_FIELD_MASK;
	void *data, *end;
	__u16 *sum;
	__u32 diff;
	__u16 cur, res;

	/* A bounded offset, or the verifier cannot prove the access inside
	 * the frame when @csum_off comes from memory (a global function's
	 * struct pkt4). XDP frames here are single pages. */
	if (csum_off > 4096)
		return -1;
	barrier_data(csum_off);
	data = ctx_data(ctx);
	end = ctx_data_end(ctx);
	sum = data + csum_off;
	if ((void *)(sum + 1) > end)
		return -1;
	if (size == 4)
		diff = csum_add32(~(__u32)from, (__u32)to);
	else if (size == 2)
		diff = csum_add32((__u16)~(__u16)from, (__u16)to);
	else if (size == 0)
		diff = (__u32)to;
	else
		return -1;
	cur = *sum;
	if ((flags & BPF_F_MARK_MANGLED_0) && !cur)
		return 0;
	res = ~csum_fold_sum(csum_add32(diff, (__u16)~cur));
	if ((flags & BPF_F_MARK_MANGLED_0) && !res)
		res = 0xffff;
	*sum = res;
	return 0;
}
#endif

/* bpf_l3_csum_replace / bpf_l4_csum_replace for either context type. */
static __always_inline int
ctx_l3_csum_replace(struct __ctx_buff *ctx, __u32 csum_off, __u64 from, __u64 to, __u64 flags)
{
#ifdef CL_XDP
	return __xdp_csum_replace(ctx, csum_off, from, to, flags);
#else
	return bpf_l3_csum_replace(ctx, csum_off, from, to, flags);
#endif
}

static __always_inline int
ctx_l4_csum_replace(struct __ctx_buff *ctx, __u32 csum_off, __u64 from, __u64 to, __u64 flags)
{
#ifdef CL_XDP
	return __xdp_csum_replace(ctx, csum_off, from, to, flags);
#else
	return bpf_l4_csum_replace(ctx, csum_off, from, to, flags);
#endif
}

#endif /* __CILIUMLITE_CSUM_H */
