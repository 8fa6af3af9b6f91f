// SPDX-License-Identifier: GPL-2.0
/*
 * test_migrate_v2.c - the new build of test_migrate_v1.c (tests/bpf/test_migrate.py): the
 * same pinned maps, each changed in one way (see the comments of test_migrate_v1.c).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct mig_value {
	__u64 x;
	__u32 y;
	__u32 z;
	__u64 w;	/* appended in v2 */
};

struct mig_slot {
	__u64 n;
	__u32 m;	/* appended in v2 */
};

/* v2: the value gains a field at its end, max_entries 64 -> 128. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 128);
	__type(key, __u32);
	__type(value, struct mig_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mig_grow SEC(".maps");

/* v2: the per-CPU value gains a field, max_entries 4 -> 8. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, struct mig_slot);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mig_pcpu SEC(".maps");

/* v2: max_entries 64 -> 8 (copied when at most 8 entries are used). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mig_shrink SEC(".maps");

/* v2: the key becomes a __u64 (copied only through a converter). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u64);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mig_key SEC(".maps");

/* v2: unchanged (its pin is reused as it is). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mig_same SEC(".maps");

struct mig_prefix {
	__u32 prefixlen;
	__u32 addr;
};

/* v2: max_entries 16 -> 32 (an LPM trie has no batch updates: copied entry by entry). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 32);
	__type(key, struct mig_prefix);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mig_lpm SEC(".maps");

/* Counts packets in mig_grow[0], so the maps belong to a program. */
SEC("tc")
int tc_mig_count(struct __sk_buff *skb)
{
	__u32 k = 0;
	struct mig_value *v = bpf_map_lookup_elem(&mig_grow, &k);

	if (v)
		__sync_fetch_and_add(&v->x, 1);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
