/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: program-context helpers (packet pointers, linearisation, length,
 * verdicts).
 *
 * The same headers serve tc programs (struct __sk_buff) and, later, the XDP
 * object (struct xdp_md); the few places that differ dispatch with _Generic so
 * callers write ctx_*() once.
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
	return ctx->data_end - ctx->data;
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

#endif /* __CILIUMLITE_CTX_H */
