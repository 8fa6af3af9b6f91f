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
 */
#ifndef __CILIUMLITE_CSUM_H
#define __CILIUMLITE_CSUM_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "compiler.h"
#include "reasons.h"

/* Replace a 16-bit word covered by the IP header checksum at @csum_off. */
static __always_inline int
l3_csum_replace16(struct __sk_buff *ctx, __u32 csum_off, __u16 from, __u16 to)
{
	if (bpf_l3_csum_replace(ctx, csum_off, from, to, sizeof(__u16)) < 0)
		return DROP_CSUM_L3;
	return 0;
}

/* Replace a 32-bit word covered by the IP header checksum at @csum_off. */
static __always_inline int
l3_csum_replace32(struct __sk_buff *ctx, __u32 csum_off, __u32 from, __u32 to)
{
	if (bpf_l3_csum_replace(ctx, csum_off, from, to, sizeof(__u32)) < 0)
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

#endif /* __CILIUMLITE_CSUM_H */
