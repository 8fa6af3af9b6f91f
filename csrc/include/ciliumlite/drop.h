/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: the one place a packet is dropped.
 *
 *   return send_drop(ctx, reason, dir);
 *
 * counts the drop in cilium_metrics (reason = a DROP_* from reasons.h, line and
 * file of the call site), sends a drop event to the cilium_events ring buffer
 * (struct drop_notify, trace.h; unless drop_events = 0, rate limited) and
 * evaluates to the context's drop verdict (TC_ACT_SHOT for tc). Every drop
 * site must go through this macro, so every drop shows in `ciliumlite
 * monitor`.
 */
#ifndef __CILIUMLITE_DROP_H
#define __CILIUMLITE_DROP_H

#include "compiler.h"
#include "ctx.h"
#include "metrics.h"
#include "reasons.h"
#include "trace.h"

static __always_inline int
__send_drop_skb(struct __sk_buff *ctx, __u8 reason, __u8 dir, __u16 line, __u8 file)
{
	__update_metrics(ctx_full_len_skb(ctx), dir, reason, line, file);
	__send_drop_notify(ctx, reason, dir, line, file);
	return TC_ACT_SHOT;
}

static __always_inline int
__send_drop_xdp(struct xdp_md *ctx, __u8 reason, __u8 dir, __u16 line, __u8 file)
{
	__update_metrics(ctx_full_len_xdp(ctx), dir, reason, line, file);
	__send_drop_notify(ctx, reason, dir, line, file);	/* no-op: no XDP events yet */
	return XDP_DROP;
}

#define send_drop(ctx, reason, dir)					\
	_Generic((ctx),							\
		struct __sk_buff *: __send_drop_skb,			\
		struct xdp_md *: __send_drop_xdp)			\
	((ctx), (reason), (dir), __MAGIC_LINE__, __MAGIC_FILE__)

#endif /* __CILIUMLITE_DROP_H */
