// SPDX-License-Identifier: GPL-2.0
/*
 * test_tc.c - small tc (cls_bpf direct-action / tcx) programs for attach and
 * test_run tests.
 *
 * tc_counters slots (struct counter each):
 *   0  TC_SLOT_INGRESS  packets/bytes seen by tc_count on ingress
 *   1  TC_SLOT_DROP     packets/bytes dropped by tc_drop_udp_port
 *   2  TC_SLOT_EGRESS   packets/bytes seen by tc_count on egress
 *   3  TC_SLOT_PASS     packets/bytes let through by tc_drop_udp_port
 *
 * Direction: a packet is "ingress" when skb->ingress_ifindex is set and equals
 * skb->ifindex (the kernel sets ingress_ifindex when the device receives it).
 * Under BPF_PROG_TEST_RUN pass a __sk_buff ctx with ingress_ifindex = ifindex
 * = 1 to count as ingress; an empty ctx counts as egress.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct counter {
	__u64 packets;
	__u64 bytes;
};

enum {
	TC_SLOT_INGRESS = 0,
	TC_SLOT_DROP = 1,
	TC_SLOT_EGRESS = 2,
	TC_SLOT_PASS = 3,
	TC_SLOT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, TC_SLOT_MAX);
	__type(key, __u32);
	__type(value, struct counter);
} tc_counters SEC(".maps");

/* UDP destination port to drop, host byte order. 0 drops UDP to port 0. */
const volatile __u16 drop_port = 0;

static __always_inline void count(__u32 slot, __u64 bytes)
{
	struct counter *c = bpf_map_lookup_elem(&tc_counters, &slot);

	if (!c)
		return;
	__sync_fetch_and_add(&c->packets, 1);
	__sync_fetch_and_add(&c->bytes, bytes);
}

SEC("tc")
int tc_count(struct __sk_buff *skb)
{
	int ingress = skb->ingress_ifindex != 0 && skb->ingress_ifindex == skb->ifindex;

	count(ingress ? TC_SLOT_INGRESS : TC_SLOT_EGRESS, skb->len);
	return TC_ACT_OK;
}

SEC("tc")
int tc_drop_udp_port(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph;
	struct udphdr *udph;
	__u32 ihl_bytes;

	if ((void *)(eth + 1) > data_end)
		goto pass;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		goto pass;
	iph = (void *)(eth + 1);
	if ((void *)(iph + 1) > data_end)
		goto pass;
	if (iph->version != 4 || iph->ihl < 5 || iph->protocol != IPPROTO_UDP)
		goto pass;
	/* Non-first fragments carry no UDP header. */
	if (iph->frag_off & bpf_htons(0x1fff))
		goto pass;
	ihl_bytes = iph->ihl * 4;
	udph = (void *)iph + ihl_bytes;
	if ((void *)(udph + 1) > data_end)
		goto pass;
	if (udph->dest != bpf_htons(drop_port))
		goto pass;

	count(TC_SLOT_DROP, skb->len);
	return TC_ACT_SHOT;
pass:
	count(TC_SLOT_PASS, skb->len);
	return TC_ACT_OK;
}

/* Swap Ethernet source and destination; for test_run output-frame tests. */
SEC("tc")
int tc_swap_macs(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	unsigned char tmp[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return TC_ACT_OK;
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
