/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: tail calls (Cilium lib/tailcall.h, the cilium_calls_* maps).
 *
 * Why: the verifier walks every path of a program and stops at 1,000,000
 * processed instructions. A program that chains conntrack, NAT port search
 * and LB (cil_to_netdev with masquerade reached ~755k) is split at a point
 * where the packet carries everything the rest needs: the entry program
 * decides, then tail-calls a program that re-parses the packet and finishes.
 * Each program is verified on its own, so each has its own 1M budget.
 *
 * One BPF_MAP_TYPE_PROG_ARRAY per object ("calls map"), declared in the
 * object's .c with CL_CALLS_MAP(name, size) and NOT pinned by name: libbpf
 * must never reuse a pinned one, because a calls map that an older build's
 * programs still jump through cannot be refilled atomically (a packet would
 * run half old, half new code; cilium/cilium#20691, #28740). Instead each
 * load makes a fresh map and Python (ciliumlite/datapath/tailcalls.py) fills
 * it right after the load, before any program of the object is attached, and
 * pins it for the node (the pin keeps it filled when the process dies: the
 * kernel empties a prog array when its last user reference goes).
 *
 * Slot numbers are CL_CALL_* below; ciliumlite/datapath/tailcalls.py mirrors
 * them (slot -> program name) and tests/unit/test_tailcalls_table.py checks it.
 * NEVER reuse a number for another program within one object.
 *
 *   return tail_call_or_drop(ctx, cilium_calls_host, CL_CALL_HOST_X, dir);
 *
 * jumps to the slot's program and does not come back. If the slot is empty
 * (a loader bug, or the map emptied under a packet) the helper returns and
 * the packet is dropped and counted DROP_MISSED_TAIL_CALL at the call site.
 * A macro, so the drop's line and file are the caller's. The slot must be a
 * compile-time constant (bpf_tail_call_static: the JIT patches a direct jump).
 */
#ifndef __CILIUMLITE_TAILCALL_H
#define __CILIUMLITE_TAILCALL_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "drop.h"
#include "reasons.h"

/* bpf_host.o (cilium_calls_host) */
#define CL_CALL_HOST_MASQ_NEW		0	/* tail_masq_new: egress, new masquerade mapping */
#define CL_CALL_HOST_MASQ_REWRITE	1	/* tail_masq_rewrite: egress, source rewrite */
#define CL_CALL_HOST_NODEPORT_SNAT	2	/* tail_nodeport_snat: ingress, NodePort SNAT mapping */
#define CL_CALL_HOST_NODEPORT_FWD	3	/* tail_nodeport_fwd: ingress, rewrite + forward */
#define CL_CALL_HOST_ICMP_ERR		4	/* tail_icmp_err_from_netdev: ingress, ICMP errors to the node */
#define CL_CALLS_HOST_SIZE		5

/* A per-object prog array of @size slots (key: slot, value: program fd). */
#define CL_CALLS_MAP(name, size)					\
	struct {							\
		__uint(type, BPF_MAP_TYPE_PROG_ARRAY);			\
		__uint(max_entries, (size));				\
		__type(key, __u32);					\
		__type(value, __u32);					\
	} name SEC(".maps")

#define tail_call_or_drop(ctx, calls, slot, dir)			\
	({								\
		bpf_tail_call_static((ctx), &(calls), (slot));		\
		send_drop((ctx), DROP_MISSED_TAIL_CALL, (dir));		\
	})

#endif /* __CILIUMLITE_TAILCALL_H */
