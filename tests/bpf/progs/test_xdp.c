// SPDX-License-Identifier: GPL-2.0
/*
 * test_xdp.c - small XDP programs for attach and test_run tests.
 *
 * xdp_counters slots (struct counter each):
 *   0  XDP_SLOT_PASS  let through by xdp_drop_udp_port
 *   1  XDP_SLOT_DROP  dropped by xdp_drop_udp_port
 *   2  XDP_SLOT_SEEN  seen by xdp_pass (so attach tests can see traffic)
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
	XDP_SLOT_PASS = 0,
	XDP_SLOT_DROP = 1,
	XDP_SLOT_SEEN = 2,
	XDP_SLOT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XDP_SLOT_MAX);
	__type(key, __u32);
	__type(value, struct counter);
} xdp_counters SEC(".maps");

/* UDP destination port to drop, host byte order. */
const volatile __u16 xdp_drop_port = 0;

static __always_inline void count(__u32 slot, __u64 bytes)
{
	struct counter *c = bpf_map_lookup_elem(&xdp_counters, &slot);

	if (!c)
		return;
	__sync_fetch_and_add(&c->packets, 1);
	__sync_fetch_and_add(&c->bytes, bytes);
}

SEC("xdp")
int xdp_drop_udp_port(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 len = data_end - data;
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
	if (iph->frag_off & bpf_htons(0x1fff))
		goto pass;
	ihl_bytes = iph->ihl * 4;
	udph = (void *)iph + ihl_bytes;
	if ((void *)(udph + 1) > data_end)
		goto pass;
	if (udph->dest != bpf_htons(xdp_drop_port))
		goto pass;

	count(XDP_SLOT_DROP, len);
	return XDP_DROP;
pass:
	count(XDP_SLOT_PASS, len);
	return XDP_PASS;
}

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	count(XDP_SLOT_SEEN, (__u64)(ctx->data_end - ctx->data));
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
