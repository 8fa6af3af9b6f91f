/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: metric / drop reasons (the `reason` byte of struct metrics_key).
 *
 * Numbering follows Cilium (bpf/lib/common.h + pkg/monitor/api/drop.go):
 *   - 0 .. 129   forward / statistics reasons (REASON_*), never a drop;
 *   - 130 .. 255 drop reasons (DROP_*), the *positive* value of Cilium's
 *                negative DROP_* error codes.
 * Values marked "ciliumlite" are not in Cilium; they sit in 100..127, which
 * Cilium does not use for metrics.
 *
 * Only reasons ciliumlite emits or is about to emit (lb/ct/nat/dsr/encap) are
 * listed; every number is Cilium's, so new ones can be added from Cilium's
 * table without renumbering. NEVER renumber: the values are stored in pinned
 * maps that outlive a controller restart.
 *
 * ciliumlite/datapath/reasons.py mirrors this file exactly (C REASON_X <->
 * Python X, C DROP_X <-> Python DROP_X); tests/unit/test_reasons.py checks it.
 *
 * Convention inside csrc/: a helper that can fail returns 0 on success and a
 * positive enum cl_reason (a DROP_*) on failure; the caller turns that into
 * send_drop(ctx, reason, dir).
 */
#ifndef __CILIUMLITE_REASONS_H
#define __CILIUMLITE_REASONS_H

enum cl_reason {
	/* Forward / statistics reasons (never drops). */
	REASON_FORWARDED		= 0,	/* "Forwarded" (redirected to its destination by BPF) */
	REASON_TO_STACK			= 100,	/* "Passed to the kernel stack" (ciliumlite) */
	REASON_ARP_REPLY		= 101,	/* "Proxy-ARP reply sent" (ciliumlite) */
	REASON_ENCAPSULATED		= 102,	/* "Encapsulated to a remote node" (ciliumlite) */
	REASON_FIB_REDIRECT		= 103,	/* "Routed by FIB lookup" (ciliumlite) */
	REASON_LB_SOCK_XLATE		= 104,	/* "Socket LB: translated to a backend" (ciliumlite) */
	REASON_LB_SOCK_REVXLATE		= 105,	/* "Socket LB: peer translated back to the service" (ciliumlite) */
	REASON_LB_SOCK_REFUSED		= 106,	/* "Socket LB: service without backends, refused" (ciliumlite) */
	REASON_LB_REVNAT_STALE		= 107,	/* "Socket LB: stale reverse entry removed" (ciliumlite) */
	REASON_TO_NETDEV		= 108,	/* "Passed to the network device" (ciliumlite) */
	REASON_NAT_EGRESS		= 109,	/* "Source translated on egress" (ciliumlite) */
	/* Monitoring (trace.h): an event was not sent; the packet is counted
	 * under its own reason as well. Not packets: never a drop. */
	REASON_EVENT_LOST_RATE_LIMIT	= 110,	/* "Event lost (rate limit)" (ciliumlite) */
	REASON_EVENT_LOST_RING_FULL	= 111,	/* "Event lost (ring buffer full)" (ciliumlite) */
	REASON_XDP_FORWARDED		= 120,	/* "Forwarded by XDP (NodePort acceleration)" (ciliumlite) */

	/* Drop reasons (Cilium's -DROP_* values, made positive). */
	DROP_INVALID_SMAC		= 130,	/* "Invalid source mac" (unused in Cilium today) */
	DROP_INVALID_DMAC		= 131,	/* "Invalid destination mac" (unused in Cilium today) */
	DROP_INVALID_SIP		= 132,	/* "Invalid source ip" */
	DROP_POLICY			= 133,	/* "Policy denied" */
	DROP_INVALID			= 134,	/* "Invalid packet" */
	DROP_CT_INVALID_HDR		= 135,	/* "CT: Truncated or invalid header" */
	DROP_FRAG_NEEDED		= 136,	/* "Fragmentation needed" */
	DROP_CT_UNKNOWN_PROTO		= 137,	/* "CT: Unknown L4 protocol" */
	DROP_UNKNOWN_L3			= 139,	/* "Unsupported L3 protocol" */
	DROP_MISSED_TAIL_CALL		= 140,	/* "Missed tail call" */
	DROP_WRITE_ERROR		= 141,	/* "Error writing to packet" */
	DROP_UNKNOWN_L4			= 142,	/* "Unknown L4 protocol" */
	DROP_NO_TUNNEL_KEY		= 147,	/* "Error retrieving tunnel key" */
	DROP_UNROUTABLE			= 151,	/* "Stale or unroutable IP" */
	DROP_CSUM_L3			= 153,	/* "Error while correcting L3 checksum" */
	DROP_CSUM_L4			= 154,	/* "Error while correcting L4 checksum" */
	DROP_CT_CREATE_FAILED		= 155,	/* "CT: Map insertion failed" */
	DROP_FRAG_NOSUPPORT		= 157,	/* "IP fragmentation not supported" */
	DROP_NO_SERVICE			= 158,	/* "Service backend not found" */
	DROP_NO_TUNNEL_ENDPOINT		= 160,	/* "No tunnel/encapsulation endpoint (datapath BUG!)" */
	DROP_HOST_UNREACHABLE		= 164,	/* "Local host is unreachable" */
	DROP_UNSUPPORTED_L2		= 166,	/* "Unsupported L2 protocol" */
	DROP_NAT_NO_MAPPING		= 167,	/* "No mapping for NAT masquerade" */
	DROP_NAT_UNSUPP_PROTO		= 168,	/* "Unsupported protocol for NAT masquerade" */
	DROP_NO_FIB			= 169,	/* "FIB lookup failed" */
	DROP_ENCAP_PROHIBITED		= 170,	/* "Encapsulation traffic is prohibited" */
	DROP_INVALID_IDENTITY		= 171,	/* "Invalid identity" */
	DROP_IS_CLUSTER_IP		= 174,	/* "Is a ClusterIP" */
	DROP_NOT_IN_SRC_RANGE		= 177,	/* "Denied by LB src range check" */
	DROP_POLICY_DENY		= 181,	/* "Policy denied by denylist" */
	DROP_INVALID_VNI		= 183,	/* "Incorrect VNI from VTEP" */
	DROP_DSR_ENCAP_UNSUPP_PROTO	= 193,	/* "Unsupported packet protocol for DSR encapsulation" */
	DROP_TTL_EXCEEDED		= 196,	/* "TTL exceeded" */
	/* ciliumlite's own drops, far above Cilium's numbers (Cilium's XDP
	 * prefilter drops without counting). */
	DROP_PREFILTER			= 220,	/* "Denied by the XDP prefilter" (ciliumlite) */
};

/* A reason >= DROP_MIN is a drop. */
#define DROP_MIN	130

/* Direction byte of struct metrics_key (Cilium enum metric_dir). */
enum cl_metric_dir {
	METRIC_INGRESS	= 1,	/* towards the endpoint / node */
	METRIC_EGRESS	= 2,	/* leaving the endpoint (e.g. cil_from_container) */
	METRIC_SERVICE	= 3,	/* service translation */
};

#endif /* __CILIUMLITE_REASONS_H */
