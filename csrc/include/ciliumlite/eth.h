/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: Ethernet header access and MAC helpers.
 *
 * MACs in maps are Cilium's mac_t (a __u64 whose first 6 bytes of memory are
 * the address in wire order, last 2 bytes zero). In packets they are 6 plain
 * bytes. union macaddr views either as {u32 p1, u16 p2} so a compare or copy is
 * two loads/stores instead of six (unaligned packet access is fine on the
 * 64-bit JITs ciliumlite targets, as in Cilium).
 */
#ifndef __CILIUMLITE_ETH_H
#define __CILIUMLITE_ETH_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>

#include "compiler.h"
#include "ctx.h"

#ifndef ETH_HLEN
# define ETH_HLEN	14
#endif

union macaddr {
	struct {
		__u32	p1;
		__u16	p2;
	};
	__u8	addr[6];
};

/* Is the 6-byte address at @a equal to the mac_t at @mac? */
static __always_inline bool eth_addr_eq_mac(const __u8 *a, const __u64 *mac)
{
	const union macaddr *x = (const union macaddr *)a;
	const union macaddr *y = (const union macaddr *)mac;

	return x->p1 == y->p1 && x->p2 == y->p2;
}

static __always_inline bool eth_is_bcast(const __u8 *a)
{
	const union macaddr *x = (const union macaddr *)a;

	return x->p1 == 0xffffffff && x->p2 == 0xffff;
}

/* Store the mac_t at @mac as 6 bytes at @dst (e.g. into a packet). */
static __always_inline void eth_store_mac(__u8 *dst, const __u64 *mac)
{
	union macaddr *d = (union macaddr *)dst;
	const union macaddr *s = (const union macaddr *)mac;

	d->p1 = s->p1;
	d->p2 = s->p2;
}

/* Load the 6 bytes at @src into a mac_t (last 2 bytes zero). */
static __always_inline __u64 eth_load_mac(const __u8 *src)
{
	const union macaddr *s = (const union macaddr *)src;
	union {
		union macaddr m;
		__u64 v;
	} out = { .v = 0 };

	out.m.p1 = s->p1;
	out.m.p2 = s->p2;
	return out.v;
}

/* Ethernet header of the frame (tc or XDP), or NULL if the frame is shorter than 14 B.
 * May pull (tc always has the MAC header linear, so in practice it does not);
 * re-derive other packet pointers afterwards. */
static __always_inline struct ethhdr *eth_hdr(struct __ctx_buff *ctx)
{
	struct ethhdr *eth;

	if (!ctx_pull(ctx, ETH_HLEN))
		return NULL;
	eth = ctx_data(ctx);
	if ((void *)(eth + 1) > ctx_data_end(ctx))
		return NULL;
	return eth;
}

#endif /* __CILIUMLITE_ETH_H */
