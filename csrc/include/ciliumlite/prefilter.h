/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: the XDP prefilter's maps (Cilium bpf/bpf_xdp.c CIDR4_HMAP /
 * CIDR4_LMAP, pinned as cilium_cidr_v4_fix / cilium_cidr_v4_dyn).
 *
 * Source CIDRs whose traffic bpf_xdp.o drops before anything else looks at
 * it. Two maps with one key layout:
 *
 *   cilium_cidr_v4_fix  HASH      exact /32 entries (one hash lookup)
 *   cilium_cidr_v4_dyn  LPM_TRIE  every other prefix length (/0../31)
 *
 * Python (ciliumlite/node/prefilter.py) puts a /32 into the hash and every
 * other prefix into the trie, so a packet costs one hash and one trie
 * lookup whatever the list holds. Kept out of maps.h: only bpf_xdp.o
 * declares them. Python mirrors the structs (ciliumlite/datapath/records.py
 * PrefilterKey, PrefilterValue) and checks them against this BTF.
 */
#ifndef __CILIUMLITE_PREFILTER_H
#define __CILIUMLITE_PREFILTER_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "compiler.h"

#define CIDR4_HMAP_ELEMS	8192	/* Cilium's sizes */
#define CIDR4_LMAP_ELEMS	8192

/* 8 bytes: struct bpf_lpm_trie_key's layout (prefixlen, then the address
 * in network byte order). The hash uses it with prefixlen = 32. */
struct cidr4_key {
	__u32	prefixlen;
	__be32	addr;
};

/* 1 byte: nothing but presence matters (Cilium's struct lpm_val). */
struct cidr4_value {
	__u8	flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct cidr4_key);
	__type(value, struct cidr4_value);
	__uint(max_entries, CIDR4_HMAP_ELEMS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_cidr_v4_fix SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct cidr4_key);
	__type(value, struct cidr4_value);
	__uint(max_entries, CIDR4_LMAP_ELEMS);
	__uint(map_flags, BPF_F_NO_PREALLOC);	/* required for LPM tries */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cilium_cidr_v4_dyn SEC(".maps");

CL_STATIC_ASSERT(sizeof(struct cidr4_key) == 8, "cidr4_key layout");

/* Is @saddr in a denied CIDR? */
static __always_inline bool prefilter_denied(__be32 saddr)
{
	struct cidr4_key key = { .prefixlen = 32, .addr = saddr };

	if (bpf_map_lookup_elem(&cilium_cidr_v4_fix, &key))
		return true;
	return bpf_map_lookup_elem(&cilium_cidr_v4_dyn, &key) != NULL;
}

#endif /* __CILIUMLITE_PREFILTER_H */
