/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: per-CPU packet/byte metrics (cilium_metrics).
 *
 *   update_metrics(ctx, dir, reason)
 *
 * counts one packet of ctx_full_len(ctx) bytes under the key
 * {reason, dir, __LINE__, file id of the calling source file}. It is a macro
 * so line and file are those of the call site, as in Cilium.
 *
 * File ids (metrics_key.file) are derived at compile time from __FILE_NAME__
 * (Cilium's __MAGIC_FILE__ trick); they are mirrored in
 * ciliumlite/datapath/reasons.py (SOURCE_FILES). Append only, never renumber.
 */
#ifndef __CILIUMLITE_METRICS_H
#define __CILIUMLITE_METRICS_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

#include "compiler.h"
#include "ctx.h"
#include "maps.h"
#include "reasons.h"

#define __cl_file_case(id, name)				\
	do {							\
		if (!__builtin_strcmp(file_name, name))		\
			return id;				\
	} while (0)

/* Folded to a constant by clang at -O2 (file_name is a literal). */
static __always_inline __u8 __cl_file_id(const char *const file_name)
{
	/* objects */
	__cl_file_case(1, "bpf_lxc.c");
	__cl_file_case(2, "bpf_overlay.c");
	__cl_file_case(3, "bpf_host.c");
	__cl_file_case(4, "bpf_sock.c");
	__cl_file_case(5, "bpf_xdp.c");
	/* headers */
	__cl_file_case(101, "eth.h");
	__cl_file_case(102, "ipv4.h");
	__cl_file_case(103, "arp.h");
	__cl_file_case(104, "l3.h");
	__cl_file_case(105, "csum.h");
	__cl_file_case(106, "drop.h");
	__cl_file_case(107, "lb.h");
	__cl_file_case(108, "ct.h");
	__cl_file_case(109, "nat.h");
	__cl_file_case(110, "dsr.h");
	__cl_file_case(111, "encap.h");
	__cl_file_case(112, "trace.h");
	__cl_file_case(113, "fib.h");
	__cl_file_case(114, "l4.h");
	__cl_file_case(115, "icmp.h");
	__cl_file_case(116, "policy.h");
	return 0;	/* unknown */
}

#define __MAGIC_FILE__	__cl_file_id(__FILE_NAME__)
#define __MAGIC_LINE__	__LINE__

static __always_inline void
__update_metrics(__u64 bytes, __u8 dir, __u8 reason, __u16 line, __u8 file)
{
	struct metrics_key key = {};
	struct metrics_value *entry;

	key.reason = reason;
	key.dir = dir;
	key.line = line;
	key.file = file;

	/* Per-CPU value: plain increments are race free. */
	entry = bpf_map_lookup_elem(&cilium_metrics, &key);
	if (likely(entry)) {
		entry->count += 1;
		entry->bytes += bytes;
	} else {
		struct metrics_value fresh = {
			.count = 1,
			.bytes = bytes,
		};

		/* May fail when the map is full: metrics are best effort. */
		bpf_map_update_elem(&cilium_metrics, &key, &fresh, BPF_ANY);
	}
}

#define update_metrics(ctx, dir, reason)				\
	__update_metrics(ctx_full_len(ctx), (dir), (reason),		\
			 __MAGIC_LINE__, __MAGIC_FILE__)

/* send_to_stack(ctx, dir) lives in trace.h (it also sends a trace event). */

#endif /* __CILIUMLITE_METRICS_H */
