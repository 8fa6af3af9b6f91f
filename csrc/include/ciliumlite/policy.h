/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: identity-based L3/L4 policy (Cilium bpf/lib/policy.h,
 * lib/eps.h's ipcache, lib/policy_log.h) - docs/policy.md is the contract.
 *
 * Maps (pinned by name; declared by bpf_lxc.o, bpf_overlay.o, bpf_host.o):
 *
 *   cilium_ipcache      LPM_TRIE       ipcache_key -> remote_endpoint_info
 *                       every pod IP of the cluster, every node IP, every
 *                       CIDR a policy names; a miss is WORLD (2). Python
 *                       (ciliumlite/node/policy.py) writes it.
 *   cilium_policy       HASH_OF_MAPS   __u32 endpoint id -> inner LPM_TRIE
 *                       policy_key -> policy_entry, one per endpoint (Cilium's
 *                       cilium_policy_<EPID>, but found by the endpoint id:
 *                       one program for every endpoint). Python makes an inner
 *                       map the first time it gives an endpoint a MapState
 *                       (DatapathConfig.policy_map_size entries) and deletes it
 *                       with the endpoint.
 *   cilium_policystats  LRU_PERCPU_HASH policy_stats_key -> policy_stats_value
 *                       packets/bytes per matched entry (Cilium 1.18 moved the
 *                       counters out of the policy map too).
 *
 * Enforcement is off unless enable_policy (config.h) is 1: with 0 the
 * verifier prunes every line below from every program, so a node without
 * policy runs the exact code it ran before.
 *
 * An endpoint with NO inner map is not enforced: every packet to and from it
 * is allowed (and no verdict event is sent). That is the state of an
 * endpoint no MapState was ever given, so a node that turns enforcement on
 * keeps working until the engine has computed each endpoint's policy; the
 * engine gives every endpoint a MapState (an allow-all key per direction no
 * policy selects), so "not enforced" only lasts until then.
 *
 * Lookup (policy_can_access, Cilium's current __policy_can_access): key A =
 * {peer identity, dir, proto, dport}, key B = {0 (ANY), dir, proto, dport},
 * both with the full 64-bit prefix:
 *   - A is a deny                                  -> DROP_POLICY_DENY;
 *   - B is chosen if B is a deny, or A missed, or B's lpm_prefix_length is
 *     longer than A's; otherwise A (L3 beats L4 on a tie);
 *   - neither hit -> DROP_POLICY; the chosen entry is a deny -> DROP_POLICY_DENY.
 * lpm_prefix_length (in the value: the trie does not say which prefix it
 * matched) counts the protocol and port bits only: 0 any protocol, 8 the
 * protocol, 8 + n the protocol and the first n bits of the port.
 *
 * Connection tracking (policy_ct_classify): a packet whose tuple is the reply
 * of a known connection (ct.h, TUPLE_F_OUT entry) is a REPLY and never
 * checked; every other packet is checked, a NEW one (no entry, or a TCP SYN
 * without ACK) also sends an allow verdict event and, when allowed, creates
 * the connection's entry on this node (so the peer's replies are replies
 * here). Every forward packet of an ESTABLISHED connection is checked too, so
 * a revoked allow cuts it at its next packet. Packets the CT cannot track
 * (IP fragments, ICMP other than echo, protocols other than TCP/UDP/ICMP)
 * are checked every time and create nothing (port 0 in the key).
 */
#ifndef __CILIUMLITE_POLICY_H
#define __CILIUMLITE_POLICY_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "compiler.h"
#include "config.h"
#include "ctx.h"
#include "maps.h"
#include "metrics.h"
#include "reasons.h"
#include "trace.h"
#include "l4.h"
#include "ct.h"

/* Reserved identities (Cilium's pkg/identity numbers; ciliumlite.policy.identity). */
#define HOST_ID			1
#define WORLD_ID		2
#define REMOTE_NODE_ID		6

/* The VXLAN port of every node (ciliumlite.datapath.config.VXLAN_PORT). */
#define CL_VXLAN_PORT		8472

/* ---------------------------------------------------------------------------
 * cilium_ipcache
 * ------------------------------------------------------------------------ */

#define IPCACHE_MAP_SIZE	512000	/* Cilium's */
#define IPCACHE_FAMILY_IPV4	1
/* The 32 bits before the address (pad1, pad2, family) are always matched, so
 * an IPv4 /n is prefixlen 32 + n (a /32 is 64). */
#define IPCACHE_PREFIX_V4(n)	(32 + (n))

/* 12 bytes: Cilium's ipcache_key with a 4-byte address (IPv4 only).
 * pad1 is Cilium's cluster_id (0). */
struct ipcache_key {
	__u32	prefixlen;
	__u16	pad1;
	__u8	pad2;
	__u8	family;		/* IPCACHE_FAMILY_IPV4 */
	__be32	ip4;
};

/* remote_endpoint_info.flags */
#define IPCACHE_F_HAS_TUNNEL_EP	0x01	/* tunnel_endpoint is set */

/* 12 bytes. sec_identity host order; tunnel_endpoint network order (the
 * node that hosts the prefix, 0 = none / this node). */
struct remote_endpoint_info {
	__u32	sec_identity;
	__be32	tunnel_endpoint;
	__u8	flags;		/* IPCACHE_F_* */
	__u8	pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct remote_endpoint_info);
	__uint(max_entries, IPCACHE_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);	/* required for LPM tries */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_ipcache SEC(".maps");

/* ---------------------------------------------------------------------------
 * cilium_policy (outer) and the per-endpoint LPM tries (inner)
 * ------------------------------------------------------------------------ */

/* The template of the inner maps. Python makes each endpoint's inner map
 * with DatapathConfig.policy_map_size entries: a hash-of-maps accepts an
 * inner LPM trie of any size (only type, key/value size and flags must match
 * the template). */
#define POLICY_MAP_SIZE		16384
/* Endpoints with a policy map; not ENDPOINTS_MAP_SIZE, which a test build
 * changes (a new max_entries would have the outer map migrated). */
#define POLICY_ENDPOINTS_MAX	65535
#define POLICY_STATS_MAP_SIZE	65536	/* Cilium's --bpf-policy-stats-map-max */

/* sec_label (32) + egress (8): every key matches them exactly. */
#define POLICY_L3_PREFIX	40
#define POLICY_FULL_PREFIX	64
#define LPM_PROTO_PREFIX_BITS	8
#define LPM_FULL_PREFIX_BITS	24

/* 12 bytes: Cilium 1.14+'s LPM key. dport network order. */
struct policy_key {
	__u32	prefixlen;	/* POLICY_L3_PREFIX + proto/port bits */
	__u32	sec_label;	/* peer identity; 0 = any */
	__u8	egress;		/* 1 = egress, 0 = ingress (of the endpoint) */
	__u8	protocol;	/* IP protocol; 0 = any */
	__be16	dport;
};

/* policy_entry.flags: bit 0 deny, bits 3..7 lpm_prefix_length (Cilium's
 * bitfield {deny:1, reserved:2, lpm_prefix_length:5}). */
#define POLICY_F_DENY			0x01
#define POLICY_LPM_SHIFT		3
#define policy_entry_lpm_len(e)		((e)->flags >> POLICY_LPM_SHIFT)

/* 4 bytes. */
struct policy_entry {
	__u8	flags;
	__u8	pad0;
	__u16	pad1;
};

/* Sizes, not __type(): clang emits the key struct of a map that is only
 * reached through the outer map's __array as a forward declaration, which
 * libbpf cannot size. Python checks the inner maps' layouts by size. */
struct policy_inner {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(key_size, sizeof(struct policy_key));
	__uint(value_size, sizeof(struct policy_entry));
	__uint(max_entries, POLICY_MAP_SIZE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, POLICY_ENDPOINTS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct policy_inner);
} cilium_policy SEC(".maps");

/* 12 bytes: Cilium's policy_stats_key - the entry that matched: its
 * identity (0 for an L4-only/any entry), direction, and protocol/port masked
 * to its prefix (prefix_len = the entry's lpm_prefix_length). */
struct policy_stats_key {
	__u16	endpoint_id;
	__u8	pad1;
	__u8	prefix_len;
	__u32	sec_label;
	__u8	egress;
	__u8	protocol;
	__be16	dport;
};

struct policy_stats_value {
	__u64	packets;
	__u64	bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__type(key, struct policy_stats_key);
	__type(value, struct policy_stats_value);
	__uint(max_entries, POLICY_STATS_MAP_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_policystats SEC(".maps");

CL_STATIC_ASSERT(sizeof(struct ipcache_key) == 12, "ipcache_key must be 12 bytes");
CL_STATIC_ASSERT(sizeof(struct remote_endpoint_info) == 12, "remote_endpoint_info must be 12 bytes");
CL_STATIC_ASSERT(sizeof(struct policy_key) == 12, "policy_key must be 12 bytes");
CL_STATIC_ASSERT(sizeof(struct policy_entry) == 4, "policy_entry must be 4 bytes");
CL_STATIC_ASSERT(sizeof(struct policy_stats_key) == 12, "policy_stats_key must be 12 bytes");

/* ---------------------------------------------------------------------------
 * Policy verdict events (Cilium's PolicyVerdictNotify, pkg/monitor/datapath_policy.go)
 * ------------------------------------------------------------------------ */

#define CL_NOTIFY_POLICY_VERDICT	5	/* Cilium's MessageTypePolicyVerdict */
#define POLICY_VERDICT_VERSION		1

/* Match types (Cilium's POLICY_MATCH_*). */
#define POLICY_MATCH_NONE	0
#define POLICY_MATCH_L3_ONLY	1
#define POLICY_MATCH_L3_L4	2
#define POLICY_MATCH_L4_ONLY	3
#define POLICY_MATCH_ALL	4
#define POLICY_MATCH_L3_PROTO	5
#define POLICY_MATCH_PROTO_ONLY	6

/* policy_verdict_notify.flags */
#define PV_F_INGRESS		0x01
#define PV_F_EGRESS		0x02
#define PV_F_MATCH_SHIFT	3

/* 120 bytes, the size of every ciliumlite event. Offsets 0..31 are Cilium's
 * PolicyVerdictNotify header field for field (verdict: 0 allow, -DROP_*
 * deny; dst_port host order); 32.. are ciliumlite's (time, device, call
 * site), then the frame's first 64 bytes (the flow is read from them). */
struct policy_verdict_notify {
	__u8	type;		/* CL_NOTIFY_POLICY_VERDICT */
	__u8	subtype;	/* 0 */
	__u16	source;		/* local endpoint id */
	__u32	hash;		/* 0 */
	__u32	orig_len;
	__u16	cap_len;
	__u16	version;	/* POLICY_VERDICT_VERSION */
	__u32	remote_label;	/* the peer's identity */
	__s32	verdict;
	__u16	dst_port;
	__u8	proto;
	__u8	flags;		/* PV_F_* | match type << PV_F_MATCH_SHIFT */
	__u8	auth_type;	/* 0 */
	__u8	pad0;
	__u16	pad1;
	__u64	ktime_ns;
	__u32	ifindex;
	__u32	cpu;
	__u16	line;
	__u8	file;
	__u8	pad2;
	__u32	pad3;
	__u8	data[CL_NOTIFY_CAP_LEN];
};

CL_STATIC_ASSERT(sizeof(struct policy_verdict_notify) == 120, "policy_verdict_notify layout");
CL_STATIC_ASSERT(__builtin_offsetof(struct policy_verdict_notify, remote_label) == 16, "remote_label");
CL_STATIC_ASSERT(__builtin_offsetof(struct policy_verdict_notify, flags) == 27, "flags");
CL_STATIC_ASSERT(__builtin_offsetof(struct policy_verdict_notify, ktime_ns) == 32, "ktime_ns");
CL_STATIC_ASSERT(__builtin_offsetof(struct policy_verdict_notify, data) == 56, "data");

/* Build and submit one verdict event. a = endpoint id | flags << 16 |
 * proto << 24; b = remote label; c = reason (0 allow) | file << 8 | line << 16;
 * d = dst_port (host order). Global like cl_notify_skb: verified once. */
__attribute__((noinline)) int
cl_policy_verdict_skb(struct __sk_buff *ctx, __u32 a, __u32 b, __u32 c, __u32 d)
{
	struct policy_verdict_notify *e;
	__u8 dir = (a >> 16) & PV_F_INGRESS ? METRIC_INGRESS : METRIC_EGRESS;
	__u32 cap;

	if (!cl_events_take_token()) {
		cl_notify_lost(ctx, REASON_EVENT_LOST_RATE_LIMIT, dir);
		return 0;
	}
	e = bpf_ringbuf_reserve(&cilium_events, sizeof(*e), 0);
	if (!e) {
		cl_notify_lost(ctx, REASON_EVENT_LOST_RING_FULL, dir);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->type = CL_NOTIFY_POLICY_VERDICT;
	e->source = a & 0xffff;
	e->flags = (a >> 16) & 0xff;
	e->proto = (a >> 24) & 0xff;
	e->remote_label = b;
	e->verdict = -(__s32)(c & 0xff);
	e->file = (c >> 8) & 0xff;
	e->line = c >> 16;
	e->dst_port = d & 0xffff;
	e->version = POLICY_VERDICT_VERSION;
	e->orig_len = ctx->len;
	e->ktime_ns = bpf_ktime_get_ns();
	e->ifindex = ctx->ifindex;
	e->cpu = bpf_get_smp_processor_id();
	cap = ctx->len;
	if (cap > CL_NOTIFY_CAP_LEN)
		cap = CL_NOTIFY_CAP_LEN;
	if (cap > 0 && bpf_skb_load_bytes(ctx, 0, e->data, cap) == 0)
		e->cap_len = cap;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* ---------------------------------------------------------------------------
 * Lookups
 * ------------------------------------------------------------------------ */

/* The identity of @addr (network order): the longest ipcache prefix holding
 * it, WORLD when none does (Cilium's lookup_ip4_remote_endpoint + the
 * WORLD fallback). */
static __always_inline __u32 ipcache_lookup_identity(__be32 addr)
{
	struct remote_endpoint_info *info;
	struct ipcache_key key = {};

	key.prefixlen = IPCACHE_PREFIX_V4(32);
	key.family = IPCACHE_FAMILY_IPV4;
	key.ip4 = addr;
	info = bpf_map_lookup_elem(&cilium_ipcache, &key);
	return info ? info->sec_identity : WORLD_ID;
}

/* What policy needs of a packet: its tuple for CT (pp: TCP/UDP, or ICMP echo
 * with the identifier as the port, else proto 0 = untracked), the real IP
 * protocol and the destination port of the key (0 when untracked). */
struct policy_pkt {
	struct pkt4	pp;
	__u8		proto;
	__be16		dport;
};

static __always_inline void
policy_pkt_init(struct __ctx_buff *ctx, const struct pkt4 *p, struct policy_pkt *pk)
{
	struct iphdr *ip4;

	pk->pp = *p;
	pk->proto = p->proto;
	pk->dport = p->proto ? p->dport : 0;
	if (p->proto)
		return;
	ip4 = ctx_data(ctx) + p->l3_off;
	if ((void *)(ip4 + 1) > ctx_data_end(ctx))
		return;
	pk->proto = ip4->protocol;
	/* ICMP echo is tracked with its identifier as the port (ct.h works
	 * on pkt4); the policy key's port stays 0 (Cilium without
	 * enable_icmp_rule). */
	if (pk->proto == IPPROTO_ICMP)
		pkt4_extract_icmp_echo(ctx, &pk->pp);
}

/* CT classification of a packet for policy (see the top of the file). */
enum policy_ct {
	POLICY_CT_NEW		= 0,	/* first packet (or an untracked one: ct == NULL) */
	POLICY_CT_ESTABLISHED	= 1,
	POLICY_CT_REPLY		= 2,
};

/* @seen: what an earlier lookup of this same packet's reply tuple found
 * (CT_F_REPLY_SEEN / CT_F_REPLY_NONE, 0: not looked up), reused instead of a
 * second lookup of the same key. */
static __always_inline enum policy_ct
policy_ct_classify(const struct policy_pkt *pk, struct ct_entry **orig, __u16 seen)
{
	struct ipv4_ct_tuple t = {};
	struct ct_entry *e;

	*orig = NULL;
	if (!pk->pp.proto)
		return POLICY_CT_ESTABLISHED;	/* untracked: checked, creates nothing */
	if (seen & CT_F_REPLY_SEEN)
		return POLICY_CT_REPLY;
	if (!(seen & CT_F_REPLY_NONE)) {
		ct_tuple_reply(&t, &pk->pp, TUPLE_F_OUT);
		if (ct_lookup(&t))
			return POLICY_CT_REPLY;
	}
	ct_tuple_orig(&t, &pk->pp, TUPLE_F_OUT);
	e = ct_lookup(&t);
	*orig = e;
	if (!e || pkt4_is_tcp_syn(&pk->pp))
		return POLICY_CT_NEW;
	return POLICY_CT_ESTABLISHED;
}

/* After an allowed forward packet: create the connection's entry on this node
 * when there is none, else account the packet (lifetime, TCP flags). */
static __always_inline int
policy_ct_commit(struct __ctx_buff *ctx, const struct policy_pkt *pk, struct ct_entry *orig,
		 __u32 src_sec_id, bool account)
{
	struct ipv4_ct_tuple t = {};

	if (!pk->pp.proto)
		return 0;
	ct_tuple_orig(&t, &pk->pp, TUPLE_F_OUT);
	if (!orig)
		return ct_create(&t, &pk->pp, ctx_full_len(ctx), 0, 0, 0, src_sec_id, ctx_ifindex(ctx));
	if (account)
		ct_update(orig, &t, &pk->pp, CT_DIR_TX, ctx_full_len(ctx));
	return 0;
}

static __always_inline void
policy_account(__u16 ep_id, __u32 label, __u8 egress, __u8 proto, __be16 dport, __u8 lpm_len,
	       __u32 bytes)
{
	struct policy_stats_key key = {};
	struct policy_stats_value *v;
	__u16 port = bpf_ntohs(dport);

	key.endpoint_id = ep_id;
	key.prefix_len = lpm_len;
	key.sec_label = label;
	key.egress = egress;
	if (lpm_len >= LPM_PROTO_PREFIX_BITS) {
		__u8 bits = lpm_len - LPM_PROTO_PREFIX_BITS;

		key.protocol = proto;
		if (bits >= 16)
			key.dport = dport;
		else if (bits)
			key.dport = bpf_htons(port & (__u16)(0xffff << (16 - bits)));
	}
	v = bpf_map_lookup_elem(&cilium_policystats, &key);
	if (v) {
		v->packets += 1;
		v->bytes += bytes;
	} else {
		struct policy_stats_value fresh = { .packets = 1, .bytes = bytes };

		bpf_map_update_elem(&cilium_policystats, &key, &fresh, BPF_ANY);
	}
}

/* Endpoint @ep_id's policy map (the inner LPM trie), NULL when the endpoint
 * is not enforced. Callers look it up first so that an endpoint without one
 * skips everything else policy would compute (e.g. the peer's ipcache
 * lookup). */
static __always_inline void *policy_map_of(__u16 ep_id)
{
	__u32 ep = ep_id;

	return bpf_map_lookup_elem(&cilium_policy, &ep);
}

/* The verdict of endpoint @ep_id's policy map @inner (policy_map_of) for a
 * packet to (egress) or from (ingress) @peer: 0 allow, DROP_POLICY,
 * DROP_POLICY_DENY. *@match = POLICY_MATCH_*. */
static __always_inline int
policy_can_access(struct __ctx_buff *ctx, void *inner, __u16 ep_id, __u32 peer, __u8 egress,
		  __u8 proto, __be16 dport, __u8 *match)
{
	struct policy_entry *a, *b, *chosen;
	struct policy_key key = {};
	__u32 label;
	__u8 len;

	*match = POLICY_MATCH_NONE;

	key.prefixlen = POLICY_FULL_PREFIX;
	key.sec_label = peer;
	key.egress = egress;
	key.protocol = proto;
	key.dport = dport;
	a = bpf_map_lookup_elem(inner, &key);
	if (a && (a->flags & POLICY_F_DENY)) {
		chosen = a;
		label = peer;
	} else {
		key.sec_label = 0;
		b = bpf_map_lookup_elem(inner, &key);
		if (b && (!a || (b->flags & POLICY_F_DENY) ||
			  policy_entry_lpm_len(b) > policy_entry_lpm_len(a))) {
			chosen = b;
			label = 0;
		} else if (a) {
			chosen = a;
			label = peer;
		} else {
			return DROP_POLICY;
		}
	}
	len = policy_entry_lpm_len(chosen);
	if (label)
		*match = !len ? POLICY_MATCH_L3_ONLY :
			 len == LPM_PROTO_PREFIX_BITS ? POLICY_MATCH_L3_PROTO : POLICY_MATCH_L3_L4;
	else
		*match = !len ? POLICY_MATCH_ALL :
			 len == LPM_PROTO_PREFIX_BITS ? POLICY_MATCH_PROTO_ONLY : POLICY_MATCH_L4_ONLY;
	if (chosen->flags & POLICY_F_DENY)
		return DROP_POLICY_DENY;
	policy_account(ep_id, label, egress, proto, dport, len, ctx_full_len(ctx));
	return 0;
}

/* Enforce endpoint @ep_id's policy map @inner (policy_map_of; NULL: not
 * enforced, allowed) in direction @egress for @pk (peer @peer), sending the
 * verdict event Cilium sends (every deny; an allow of a NEW packet). Returns
 * 0 (allowed, or not enforced) or the DROP_* the caller passes to
 * send_drop(). A macro so the event names the caller's line. */
#define policy_check(ctx, inner, ep_id, peer, egress, pk, is_new)			\
	__policy_check((ctx), (inner), (ep_id), (peer), (egress), (pk), (is_new),	\
		       __MAGIC_LINE__, __MAGIC_FILE__)

static __always_inline int
__policy_check(struct __sk_buff *ctx, void *inner, __u16 ep_id, __u32 peer, __u8 egress,
	       const struct policy_pkt *pk, bool is_new, __u16 line, __u8 file)
{
	__u8 match = POLICY_MATCH_NONE;
	__u8 flags;
	int ret;

	if (!inner)
		return 0;	/* no policy map: not enforced */
	ret = policy_can_access(ctx, inner, ep_id, peer, egress, pk->proto, pk->dport, &match);
	if (ret || is_new) {
		flags = (egress ? PV_F_EGRESS : PV_F_INGRESS) | (match << PV_F_MATCH_SHIFT);
		cl_policy_verdict_skb(ctx, (__u32)ep_id | (__u32)flags << 16 | (__u32)pk->proto << 24,
				      peer, (__u32)ret | (__u32)file << 8 | (__u32)line << 16,
				      bpf_ntohs(pk->dport));
	}
	return ret;
}

/* Cilium's policy_can_egress check that blocks VNI spoofing: a pod may not
 * send UDP to the VXLAN port (its datagram would be decapsulated by a node
 * and claim any identity). */
static __always_inline bool policy_encap_prohibited(const struct pkt4 *p)
{
	return routing_mode == ROUTING_MODE_TUNNEL && p->proto == IPPROTO_UDP &&
	       p->dport == bpf_htons(CL_VXLAN_PORT);
}

/* Ingress of a local endpoint @ep for a packet arriving from the network
 * (bpf_overlay, bpf_host) with source identity @src_id: REPLY passes, a
 * forward packet is checked; an allowed NEW one gets its CT entry here.
 * @seen: lb4_rev_nat_at_delivery's flags for this packet (the reply-tuple
 * lookup it made; 0: none). Returns 0 or a DROP_*. */
static __always_inline int
policy_ingress_from_network(struct __sk_buff *ctx, __u32 l3_off, __u32 hdr_len,
			    const struct endpoint_info *ep, __u32 src_id, __u16 seen)
{
	struct policy_pkt pk = {};
	struct ct_entry *orig;
	enum policy_ct ct;
	struct pkt4 p = {};
	__u16 ep_id = ep->lxc_id;
	int ret;

	if (seen & CT_F_REPLY_SEEN)
		return 0;	/* a reply: never checked */
	ret = pkt4_extract(ctx, l3_off, hdr_len, &p);
	if (ret)
		return ret;
	policy_pkt_init(ctx, &p, &pk);
	ct = policy_ct_classify(&pk, &orig, seen);
	if (ct == POLICY_CT_REPLY)
		return 0;
	ret = policy_check(ctx, policy_map_of(ep_id), ep_id, src_id, 0, &pk, ct == POLICY_CT_NEW);
	if (ret)
		return ret;
	return policy_ct_commit(ctx, &pk, orig, src_id, true);
}

#endif /* __CILIUMLITE_POLICY_H */
