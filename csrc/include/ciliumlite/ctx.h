/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: program-context helpers (packet pointers, linearisation, length,
 * verdicts).
 *
 * The same headers serve tc programs (struct __sk_buff) and the XDP object
 * (struct xdp_md). Two mechanisms, as in Cilium:
 *   - _Generic dispatch (ctx_data, ctx_full_len, send_drop, ...) where a
 *     macro sees the caller's type;
 *   - struct __ctx_buff, the context type of the object being compiled:
 *     struct xdp_md when the source defines CL_XDP before any include
 *     (csrc/bpf_xdp.c), struct __sk_buff otherwise. Helpers that both kinds
 *     of object share (l4.h, lb.h, nat.h, dsr.h, ipv4.h) take a
 *     struct __ctx_buff * and touch the packet only through the ctx_*()
 *     functions below, so they are written once and compiled for either.
 * One object is never both: the type is fixed per translation unit.
 */
#ifndef __CILIUMLITE_CTX_H
#define __CILIUMLITE_CTX_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "compiler.h"

/* Packet pointers are loaded with inline asm, not `(void *)(long)ctx->data`:
 * with -mcpu=v3 (alu32) clang otherwise knows the pointer is a zero-extended
 * u32 and, after merging the paths around a bpf_skb_pull_data(), may move it
 * with a 32-bit `w` register op, which the verifier then sees as a scalar
 * ("R7 invalid mem access 'scalar'"). volatile: every call reloads, so a
 * pointer is never reused across a helper that changes packet data. */
static __always_inline void *ctx_data_skb(const struct __sk_buff *ctx)
{
	void *ptr;

	asm volatile("%0 = *(u32 *)(%1 + %2)"
		     : "=r"(ptr)
		     : "r"(ctx), "i"(__builtin_offsetof(struct __sk_buff, data)));
	return ptr;
}

static __always_inline void *ctx_data_end_skb(const struct __sk_buff *ctx)
{
	void *ptr;

	asm volatile("%0 = *(u32 *)(%1 + %2)"
		     : "=r"(ptr)
		     : "r"(ctx), "i"(__builtin_offsetof(struct __sk_buff, data_end)));
	return ptr;
}

static __always_inline __u64 ctx_full_len_skb(const struct __sk_buff *ctx)
{
	return ctx->len;	/* whole frame incl. non-linear part */
}

static __always_inline void *ctx_data_xdp(const struct xdp_md *ctx)
{
	void *ptr;

	asm volatile("%0 = *(u32 *)(%1 + %2)"
		     : "=r"(ptr)
		     : "r"(ctx), "i"(__builtin_offsetof(struct xdp_md, data)));
	return ptr;
}

static __always_inline void *ctx_data_end_xdp(const struct xdp_md *ctx)
{
	void *ptr;

	asm volatile("%0 = *(u32 *)(%1 + %2)"
		     : "=r"(ptr)
		     : "r"(ctx), "i"(__builtin_offsetof(struct xdp_md, data_end)));
	return ptr;
}

static __always_inline __u64 ctx_full_len_xdp(const struct xdp_md *ctx)
{
	/* Pointer difference, not the u32 fields: the verifier turns each field
	 * load into a packet pointer, whose 32-bit halves mean nothing. XDP
	 * frames here are single-buffer (no BPF_F_XDP_HAS_FRAGS). */
	return ctx_data_end_xdp(ctx) - ctx_data_xdp(ctx);
}

#define ctx_data(ctx)						\
	_Generic((ctx),						\
		struct __sk_buff *: ctx_data_skb,		\
		struct xdp_md *: ctx_data_xdp)(ctx)

#define ctx_data_end(ctx)					\
	_Generic((ctx),						\
		struct __sk_buff *: ctx_data_end_skb,		\
		struct xdp_md *: ctx_data_end_xdp)(ctx)

/* Length of the whole frame in bytes (what metrics count). */
#define ctx_full_len(ctx)					\
	_Generic((ctx),						\
		struct __sk_buff *: ctx_full_len_skb,		\
		struct xdp_md *: ctx_full_len_xdp)(ctx)

/* Verdicts. */
#define CTX_ACT_OK_SKB		TC_ACT_OK
#define CTX_ACT_DROP_SKB	TC_ACT_SHOT

#define ctx_act_ok(ctx)						\
	_Generic((ctx), struct __sk_buff *: TC_ACT_OK,		\
			struct xdp_md *: XDP_PASS)
#define ctx_act_drop(ctx)					\
	_Generic((ctx), struct __sk_buff *: TC_ACT_SHOT,	\
			struct xdp_md *: XDP_DROP)

#ifdef CL_XDP
# define __ctx_buff	xdp_md
#else
# define __ctx_buff	__sk_buff
#endif

/* Copy @len bytes at @off out of / into the frame (works on non-linear
 * skbs; XDP frames here are always single-buffer). 0 or a negative errno. */
static __always_inline int
ctx_load_bytes(struct __ctx_buff *ctx, __u32 off, void *to, __u32 len)
{
#ifdef CL_XDP
	return bpf_xdp_load_bytes(ctx, off, to, len);
#else
	return bpf_skb_load_bytes(ctx, off, to, len);
#endif
}

static __always_inline int
ctx_store_bytes(struct __ctx_buff *ctx, __u32 off, const void *from, __u32 len, __u64 flags)
{
#ifdef CL_XDP
	(void)flags;	/* no checksum offload state to keep in XDP */
	return bpf_xdp_store_bytes(ctx, off, (void *)from, len);
#else
	return bpf_skb_store_bytes(ctx, off, from, len, flags);
#endif
}

/* The device the program runs on (tc: the skb's device; XDP: the receiving
 * device). */
static __always_inline __u32 ctx_ifindex(struct __ctx_buff *ctx)
{
#ifdef CL_XDP
	return ctx->ingress_ifindex;
#else
	return ctx->ifindex;
#endif
}

/* GSO segment size (0: not a GSO packet; XDP frames never are). */
static __always_inline __u32 ctx_gso_size(struct __ctx_buff *ctx)
{
#ifdef CL_XDP
	(void)ctx;
	return 0;
#else
	return ctx->gso_size;
#endif
}

/* Make the first @len bytes of an skb directly readable (linear).
 *
 * Returns true when data + len <= data_end afterwards. Never pulls beyond the
 * frame (bpf_skb_pull_data would fail), so a short frame just returns false.
 * Invalidates every packet pointer the caller holds: re-derive them from
 * ctx_data()/ctx_data_end() afterwards (Cilium: revalidate_data_pull).
 */
static __always_inline bool ctx_pull_skb(struct __sk_buff *ctx, __u32 len)
{
	void *data = ctx_data_skb(ctx);
	void *data_end = ctx_data_end_skb(ctx);

	if (likely(data + len <= data_end))
		return true;
	if (len > ctx->len)
		return false;
	if (bpf_skb_pull_data(ctx, len) < 0)
		return false;
	data = ctx_data_skb(ctx);
	data_end = ctx_data_end_skb(ctx);
	return data + len <= data_end;
}

/* Are the first @len bytes directly readable (pulling them in for an skb)?
 * Invalidates packet pointers (tc). */
static __always_inline bool ctx_pull(struct __ctx_buff *ctx, __u32 len)
{
#ifdef CL_XDP
	return ctx_data_xdp(ctx) + len <= ctx_data_end_xdp(ctx);
#else
	return ctx_pull_skb(ctx, len);
#endif
}

#endif /* __CILIUMLITE_CTX_H */
