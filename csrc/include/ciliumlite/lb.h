/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: service load balancing shared by bpf_sock (socket LB), bpf_lxc
 * (per-packet LB, revNAT) and bpf_host / bpf_overlay (NodePort, revNAT at
 * delivery). Cilium bpf/lib/lb.h.
 *
 *   lb4_lookup_service(key, scope_switch)  frontend row (slot 0) or NULL.
 *       Looks up scope EXT; if the row has TWO_SCOPES and @scope_switch
 *       (in-cluster callers: bpf_sock, bpf_lxc), the INT row instead. bpf_host
 *       passes false: external traffic sees the EXT row, which under
 *       externalTrafficPolicy=Local lists only node-local backends. @key is
 *       left pointing at the row used (scope set, slot 0).
 *   lb4_select_backend_id(key, svc, client, hash, maglev)
 *       session affinity (SVC_FLAG_AFFINITY) first, else Maglev (N-S callers
 *       with SVC_FLAG2_MAGLEV) else slot (hash % count) + 1.
 *   lb4_local(ctx, key, svc, p, maglev, &sel)
 *       per-packet service translation decision with a CT service entry
 *       (ct.h) that pins the backend for the connection.
 *   lb4_rev_nat_reply(ctx, p, &flags)
 *       reverse NAT of a reply that hits a connection entry.
 *
 * Maglev index (ciliumlite, Cilium's hash_from_tuple_v4 inputs):
 *     jhash_3words(saddr, ((u32)sport << 16) | dport, proto, maglev_seed)
 *         % maglev_table_size
 * where saddr/sport/dport are the packet's raw network-order values loaded as
 * little-endian u32/u16 (e.g. 10.0.0.1 -> 0x0100000a, port 80 -> 0x5000). The
 * destination address is excluded, so a client maps to the same backend
 * through every node.
 */
#ifndef __CILIUMLITE_LB_H
#define __CILIUMLITE_LB_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "compiler.h"
#include "config.h"
#include "maps.h"
#include "l4.h"
#include "ct.h"
#include "reasons.h"

/* Source of hairpin connections (pod -> own service -> itself), Cilium's
 * IPV4_LOOPBACK. */
#define IPV4_LOOPBACK		bpf_htonl(0xa9fe2a01)	/* 169.254.42.1 */

/* Internal marker in lb4_rev_nat_reply()'s flags output, never stored
 * (with ct.h's CT_F_REPLY_SEEN / CT_F_REPLY_NONE). */
#define CT_F_REVNAT_DONE	0x8000

/* ---- jhash (Bob Jenkins' lookup3, as the kernel's / Cilium's jhash.h) ---- */
#define JHASH_INITVAL		0xdeadbeef

static __always_inline __u32 rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> ((-shift) & 31));
}

#define __jhash_final(a, b, c)			\
{						\
	c ^= b; c -= rol32(b, 14);		\
	a ^= c; a -= rol32(c, 11);		\
	b ^= a; b -= rol32(a, 25);		\
	c ^= b; c -= rol32(b, 16);		\
	a ^= c; a -= rol32(c, 4);		\
	b ^= a; b -= rol32(a, 14);		\
	c ^= b; c -= rol32(b, 24);		\
}

static __always_inline __u32 jhash_3words(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	initval += JHASH_INITVAL + (3 << 2);
	a += initval;
	b += initval;
	c += initval;
	__jhash_final(a, b, c);
	return c;
}

static __always_inline __u32 lb4_maglev_hash(const struct pkt4 *p)
{
	return jhash_3words(p->saddr, ((__u32)p->sport << 16) | p->dport, p->proto,
			    maglev_seed);
}

/* ---- lookups --------------------------------------------------------------- */

static __always_inline struct lb4_service *
lb4_lookup_service(struct lb4_key *key, bool scope_switch)
{
	struct lb4_service *svc;

	key->backend_slot = 0;
	key->scope = LB_LOOKUP_SCOPE_EXT;
	svc = bpf_map_lookup_elem(&cilium_lb4_services_v2, key);
	if (svc && scope_switch && (svc->flags2 & SVC_FLAG2_TWO_SCOPES)) {
		key->scope = LB_LOOKUP_SCOPE_INT;
		svc = bpf_map_lookup_elem(&cilium_lb4_services_v2, key);
	}
	return svc;
}

static __always_inline struct lb4_backend *lb4_lookup_backend(__u32 backend_id)
{
	return bpf_map_lookup_elem(&cilium_lb4_backends_v3, &backend_id);
}

/* Backend id in slot @slot (1..count) of the frontend @key, or 0. */
static __always_inline __u32 lb4_slot_backend_id(struct lb4_key *key, __u16 slot)
{
	struct lb4_service *s;
	__u32 id = 0;

	key->backend_slot = slot;
	s = bpf_map_lookup_elem(&cilium_lb4_services_v2, key);
	if (s)
		id = s->backend_id;
	key->backend_slot = 0;
	return id;
}

static __always_inline __u32 lb4_maglev_backend_id(__be16 rev_nat_index, __u32 hash)
{
	struct lb4_maglev_key k = {};
	__u32 *id;

	if (!maglev_table_size)
		return 0;
	k.rev_nat_index = bpf_ntohs(rev_nat_index);
	k.index = hash % maglev_table_size;
	id = bpf_map_lookup_elem(&cilium_lb4_maglev, &k);
	return id ? *id : 0;
}

/* ---- session affinity ------------------------------------------------------ */

static __always_inline void
lb4_affinity_key_init(struct lb4_affinity_key *k, __u64 client_id, bool netns_cookie,
		      __be16 rev_nat_index)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->client_id = client_id;
	k->rev_nat_id = rev_nat_index;
	k->netns_cookie = netns_cookie;
}

/* Affinity backend still usable (exists, active, not expired), or 0. */
static __always_inline __u32
lb4_affinity_backend_id(const struct lb4_service *svc, __u64 client_id, bool netns_cookie)
{
	struct lb4_affinity_key k;
	struct lb_affinity_val *v;
	struct lb4_backend *be;
	__u32 id;

	lb4_affinity_key_init(&k, client_id, netns_cookie, svc->rev_nat_index);
	v = bpf_map_lookup_elem(&cilium_lb4_affinity, &k);
	if (!v)
		return 0;
	if (v->last_used + svc->backend_id < bpf_mono_sec()) {
		bpf_map_delete_elem(&cilium_lb4_affinity, &k);
		return 0;
	}
	id = v->backend_id;
	be = lb4_lookup_backend(id);
	if (!be || be->flags != BE_STATE_ACTIVE) {
		bpf_map_delete_elem(&cilium_lb4_affinity, &k);
		return 0;
	}
	return id;
}

static __always_inline void
lb4_update_affinity(const struct lb4_service *svc, __u64 client_id, bool netns_cookie,
		    __u32 backend_id)
{
	struct lb4_affinity_key k;
	struct lb_affinity_val v = {};

	lb4_affinity_key_init(&k, client_id, netns_cookie, svc->rev_nat_index);
	v.last_used = bpf_mono_sec();
	v.backend_id = backend_id;
	bpf_map_update_elem(&cilium_lb4_affinity, &k, &v, BPF_ANY);
}

/* Backend id for a new connection to the frontend row @svc (@key: its key).
 * @client_id/@netns_cookie: affinity client. @hash: random or cookie value
 * for the slot choice, or the Maglev hash when @maglev. 0 = none. */
static __always_inline __u32
lb4_select_backend_id(struct lb4_key *key, const struct lb4_service *svc,
		      __u64 client_id, bool netns_cookie, __u32 hash, bool maglev)
{
	__u32 id = 0;

	if (!svc->count)
		return 0;
	if (svc->flags & SVC_FLAG_AFFINITY) {
		id = lb4_affinity_backend_id(svc, client_id, netns_cookie);
		if (id)
			goto out;
	}
	if (maglev && (svc->flags2 & SVC_FLAG2_MAGLEV))
		id = lb4_maglev_backend_id(svc->rev_nat_index, hash);
	if (!id)
		id = lb4_slot_backend_id(key, (__u16)(hash % svc->count) + 1);
out:
	if (id && (svc->flags & SVC_FLAG_AFFINITY))
		lb4_update_affinity(svc, client_id, netns_cookie, id);
	return id;
}

/* ---- per-packet translation ------------------------------------------------ */

struct lb4_selected {
	__u32	backend_id;
	__be32	address;
	__be16	port;
	__be16	rev_nat_index;
};

/* Choose the backend for packet @p (client -> frontend @key/@svc, svc is a
 * copy of the frontend row): reuse the one pinned by the connection's CT
 * service entry if it still exists (a removed or non-active backend keeps
 * draining non-SYN packets; a SYN reselects), else select (affinity by
 * client IP, Maglev when @maglev, else random) and (re)create the service
 * entry. Returns 0 and fills @sel, or DROP_NO_SERVICE /
 * DROP_CT_CREATE_FAILED. Does not touch the packet. */
static __always_inline int
lb4_local(struct __ctx_buff *ctx, struct lb4_key *key, const struct lb4_service *svc,
	  const struct pkt4 *p, bool maglev, struct lb4_selected *sel)
{
	struct ipv4_ct_tuple t = {};
	struct lb4_backend *be = NULL;
	struct ct_entry *e;
	__u32 id = 0;
	__u32 hash;
	int ret;

	ct_tuple_orig(&t, p, TUPLE_F_SERVICE);
	e = ct_lookup(&t);
	if (e && e->rev_nat_index == svc->rev_nat_index) {
		id = (__u32)e->backend_id;
		be = lb4_lookup_backend(id);
		if (be && (be->flags == BE_STATE_ACTIVE || !pkt4_is_tcp_syn(p)))
			ct_update(e, &t, p, CT_DIR_TX, ctx_full_len(ctx));
		else
			be = NULL;
	}
	if (!be) {
		hash = maglev && (svc->flags2 & SVC_FLAG2_MAGLEV) ?
		       lb4_maglev_hash(p) : bpf_get_prandom_u32();
		id = lb4_select_backend_id(key, svc, (__u64)p->saddr, false, hash, maglev);
		if (!id)
			return DROP_NO_SERVICE;
		be = lb4_lookup_backend(id);
		if (!be)
			return DROP_NO_SERVICE;
		sel->address = be->address;
		sel->port = be->port;
		ret = ct_create(&t, p, ctx_full_len(ctx), 0, svc->rev_nat_index, id, 0, ctx_ifindex(ctx));
		if (ret)
			return ret;
	} else {
		sel->address = be->address;
		sel->port = be->port;
	}
	sel->backend_id = id;
	sel->rev_nat_index = svc->rev_nat_index;
	return 0;
}

/* Create or refresh the connection entry of an already DNATed (and maybe
 * SNATed) packet @p in its original direction. */
static __always_inline int
lb4_ct_conn(struct __ctx_buff *ctx, const struct pkt4 *p, __u16 flags,
	    __be16 rev_nat_index, __u32 backend_id, __u32 src_sec_id)
{
	struct ipv4_ct_tuple t = {};
	struct ct_entry *e;

	ct_tuple_orig(&t, p, TUPLE_F_OUT);
	e = ct_lookup(&t);
	if (e && e->rev_nat_index == rev_nat_index &&
	    (e->flags & (CT_F_NODE_PORT | CT_F_LB_LOOPBACK | CT_F_DSR_INTERNAL)) == flags) {
		ct_update(e, &t, p, CT_DIR_TX, ctx_full_len(ctx));
		return 0;
	}
	return ct_create(&t, p, ctx_full_len(ctx), flags, rev_nat_index, backend_id, src_sec_id,
			 ctx_ifindex(ctx));
}

/* A packet @p that no service translated, in its original direction from a
 * pod: a flow straight to a server. Its tuple can be the translated tuple of
 * an earlier service connection when the client reuses that connection's port
 * towards the backend itself (a connection entry client:P -> backend with a
 * rev_nat_index, closing or still within its lifetime). That entry would
 * reverse-translate this flow's replies to the frontend, and the client would
 * never see them. So the first packet of a new flow (a TCP SYN; any UDP
 * datagram, UDP having no first packet to tell) that meets an entry with a
 * rev_nat_index starts a fresh entry without one, the choice Cilium makes for
 * a connection that lands on a stale entry of another service ("recreate").
 * Other packets, and flows that meet no entry, cost one lookup at most and
 * create nothing; a later service connection on the tuple recreates its own
 * entry the same way (lb4_ct_conn). From-container (tc) only. Returns 0 or
 * DROP_CT_CREATE_FAILED. */
static __always_inline int
lb4_ct_untranslated(struct __sk_buff *ctx, const struct pkt4 *p, __u32 src_sec_id)
{
	struct ipv4_ct_tuple t = {};
	struct ct_entry *e;

	if (p->proto == IPPROTO_TCP && !pkt4_is_tcp_syn(p))
		return 0;
	ct_tuple_orig(&t, p, TUPLE_F_OUT);
	e = ct_lookup(&t);
	if (!e || !e->rev_nat_index)
		return 0;
	return ct_create(&t, p, ctx_full_len(ctx), 0, 0, 0, src_sec_id, ctx->ifindex);
}

/* Reverse NAT of a reply: if @p (backend -> client') hits a connection entry,
 * account it (rx) and, when the entry has a rev_nat_index, rewrite the source
 * to the frontend from cilium_lb4_reverse_nat (and, for a hairpin entry, the
 * destination 169.254.42.1 back to the pod). Entries with any of
 * @skip_flags are left alone (not even accounted).
 * *@flags_out = the entry's flags | CT_F_REPLY_SEEN | CT_F_REVNAT_DONE when
 * translated, the entry's flags | CT_F_REPLY_SEEN when hit but not translated
 * (DSR, direct connections), CT_F_REPLY_SEEN alone for an entry @skip_flags
 * left alone, CT_F_REPLY_NONE on a miss, 0 when nothing was looked up.
 * Returns 0 or a DROP_* (DROP_NAT_NO_MAPPING: revNAT entry missing). */
static __always_inline int
lb4_rev_nat_reply(struct __ctx_buff *ctx, struct pkt4 *p, __u16 skip_flags,
		  __u16 *flags_out)
{
	struct ipv4_ct_tuple t = {};
	struct lb4_reverse_nat *rn;
	struct ct_entry *e;
	__be16 idx;
	__be32 addr;
	__be16 port;
	__u16 flags;
	int ret;

	*flags_out = 0;
	if (!p->proto)
		return 0;
	ct_tuple_reply(&t, p, TUPLE_F_OUT);
	e = ct_lookup(&t);
	if (!e) {
		*flags_out = CT_F_REPLY_NONE;
		return 0;
	}
	flags = e->flags;
	if (flags & skip_flags) {
		*flags_out = CT_F_REPLY_SEEN;
		return 0;
	}
	idx = e->rev_nat_index;
	ct_update(e, &t, p, CT_DIR_RX, ctx_full_len(ctx));
	flags |= CT_F_REPLY_SEEN;
	*flags_out = flags;
	if (!idx)
		return 0;

	rn = bpf_map_lookup_elem(&cilium_lb4_reverse_nat, &idx);
	if (!rn)
		return DROP_NAT_NO_MAPPING;
	addr = rn->address;
	port = rn->port;

	if (flags & CT_F_LB_LOOPBACK) {
		/* Hairpin: the client is the backend pod itself. */
		ret = pkt4_set_daddr(ctx, p, p->saddr);
		if (ret)
			return ret;
	}
	ret = pkt4_snat(ctx, p, addr, port);
	if (ret)
		return ret;
	*flags_out = flags | CT_F_REVNAT_DONE;
	return 0;
}

/* Reverse NAT of a packet about to be delivered to a local pod from the
 * network (cil_from_overlay, cil_from_netdev): the reply of a per-packet
 * translated connection whose client is that pod and whose backend is on
 * another node (the connection entry lives here, on the client's node).
 * NodePort entries are not matched here. Malformed L4 is left to the pod's
 * stack. *@flags: lb4_rev_nat_reply's (0 when nothing was looked up).
 * Returns 0 or a DROP_*. */
static __always_inline int
lb4_rev_nat_at_delivery(struct __ctx_buff *ctx, __u32 l3_off, __u32 hdr_len, __u16 *flags)
{
	struct pkt4 p = {};

	*flags = 0;
	if (pkt4_extract(ctx, l3_off, hdr_len, &p) || !p.proto)
		return 0;
	return lb4_rev_nat_reply(ctx, &p, CT_F_NODE_PORT, flags);
}

#endif /* __CILIUMLITE_LB_H */
