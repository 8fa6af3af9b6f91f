// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* xdp_bench.bpf.c - the helper programs of benchmarks/suites/xdp.py (compiled at run time).
 *
 *   xdp_gen       the packet generator: run with BPF_PROG_TEST_RUN and
 *                 BPF_F_TEST_XDP_LIVE_FRAMES on the node's wire peer, it
 *                 writes the frame in gen_frame over every live frame and
 *                 returns XDP_TX, which test_run turns into a redirect out
 *                 of that device: the frame arrives on the node's eth0.
 *                 The rewrite is needed because live frames are recycled
 *                 without being reset ("if a program rewrites the packet
 *                 contents, it has to be prepared to see either the
 *                 original or the modified packet contents", bpf_prog_run
 *                 docs), and the node under test rewrites them (NodePort).
 *                 Paced when gen_pace's interval_ns is set: each frame
 *                 waits (a bounded bpf_loop on the clock) until its due
 *                 time, one interval after the previous frame's, so the
 *                 node sees a steady rate instead of 64-frame bursts at
 *                 the generator's full speed; a generator that fell more
 *                 than a batch behind restarts from now rather than
 *                 bursting to catch up.
 *   xdp_sink      on the wire peer: counts and drops the frames the node
 *                 forwarded (UDP to port sink_dport from sink_saddr: after
 *                 DNAT and SNAT), passes everything else (ARP, pings)
 *                 to the lab's bridge. Its presence also gives the peer
 *                 NAPI, which veth needs to receive XDP_TX / redirected
 *                 frames at all.
 *   xdp_pass      XDP_PASS only: on the eth0 of the arms without XDP, so
 *                 that every arm receives through veth's NAPI (an attached
 *                 XDP program is what switches a veth to it), perf.md
 *                 §7.1: "give the non-XDP arm the same NAPI setting".
 *   xdp_drop      XDP_DROP and count: the veth pps ceiling (perf.md E3).
 *   xdp_read_drop one read of the packet, XDP_DROP: the floor of any
 *                 program that looks at the frame (bounds the prefilter).
 *   xdp_fwd_static the NodePort translation fixed at load time, XDP_TX:
 *                 the floor of any XDP forwarder (bounds NodePort at XDP).
 *   tc_prefilter  the prefilter as a tc ingress program: the same lookup as
 *                 prefilter.h's prefilter_denied (a /32 hash, then an LPM
 *                 trie, same key, sizes and flags; here unpinned, so it
 *                 never meets a node's maps), TC_ACT_SHOT and a count.
 *
 * Counters: bench_count, per CPU, slot COUNT_*.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define FRAME_LEN 60	/* a 64-byte frame on the wire, without its FCS */

enum {
	COUNT_HIT = 0,	/* sink: forwarded frames; drop: drops; tc_prefilter: drops */
	COUNT_OTHER = 1,	/* sink: UDP to sink_dport that did not match */
	COUNT_MAX,
};

struct frame {
	__u8 bytes[FRAME_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct frame);
} gen_frame SEC(".maps");

struct pace {
	__u64 interval_ns;	/* 0: not paced */
	__u64 next_ns;		/* due time of the next frame (0: the first) */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pace);
} gen_pace SEC(".maps");

#define PACE_MAX_SPINS	(1 << 20)	/* bounds one wait (~25 ns a spin) */
#define PACE_SLACK	64		/* intervals a frame may be late and still catch up (BATCH) */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} bench_count SEC(".maps");

/* prefilter.h's maps, unpinned. */
struct cidr4_key {
	__u32 prefixlen;
	__be32 addr;
};

struct cidr4_value {
	__u8 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct cidr4_key);
	__type(value, struct cidr4_value);
	__uint(max_entries, 8192);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} bench_cidr_fix SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct cidr4_key);
	__type(value, struct cidr4_value);
	__uint(max_entries, 8192);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} bench_cidr_dyn SEC(".maps");

const volatile __be32 sink_saddr = 0;
const volatile __be16 sink_dport = 0;

static __always_inline void count(__u32 slot)
{
	__u64 *c = bpf_map_lookup_elem(&bench_count, &slot);

	if (c)
		*c += 1;
}

static long pace_due(__u64 i, void *ctx)
{
	const __u64 *due = ctx;

	return bpf_ktime_get_ns() >= *due;	/* 1 ends the loop */
}

static __always_inline void pace(void)
{
	__u32 k = 0;
	struct pace *p = bpf_map_lookup_elem(&gen_pace, &k);
	__u64 now, due;

	if (!p || !p->interval_ns)
		return;
	now = bpf_ktime_get_ns();
	due = p->next_ns;
	/* Behind by more than one live-frames batch (the first frame, or a
	 * stall): restart from now, no catch-up burst. Within a batch's worth
	 * the frames catch up: test_run transmits each batch of 64 at once,
	 * and that time must not be lost from the rate. */
	if (due + PACE_SLACK * p->interval_ns < now)
		p->next_ns = now;
	else if (now < due)
		bpf_loop(PACE_MAX_SPINS, pace_due, &due, 0);	/* the callback's ctx must be on the stack */
	p->next_ns += p->interval_ns;
}

SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 k = 0;
	struct frame *f = bpf_map_lookup_elem(&gen_frame, &k);

	if (!f || data + FRAME_LEN > end)
		return XDP_ABORTED;
	pace();
	__builtin_memcpy(data, f->bytes, FRAME_LEN);
	return XDP_TX;
}

SEC("xdp")
int xdp_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)(ip + 1);

	if ((void *)(udp + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != IPPROTO_UDP ||
	    ip->ihl != 5 || udp->dest != sink_dport)
		return XDP_PASS;
	if (ip->saddr == sink_saddr) {
		count(COUNT_HIT);
		return XDP_DROP;
	}
	count(COUNT_OTHER);
	return XDP_DROP;
}

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp")
int xdp_drop(struct xdp_md *ctx)
{
	count(COUNT_HIT);
	return XDP_DROP;
}

/* The cheapest program that looks at the packet: one read of the source
 * address (the frame's first cache line), then XDP_DROP. No prefilter can
 * cost less, so (this ÷ iptables) bounds what any XDP prefilter can reach
 * here. */
SEC("xdp")
int xdp_read_drop(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + sizeof(struct ethhdr);

	if ((void *)(ip + 1) > end)
		return XDP_PASS;
	count(ip->saddr ? COUNT_HIT : COUNT_OTHER);
	return XDP_DROP;
}

const volatile __be32 fwd_saddr = 0;	/* the node's address (SNAT) */
const volatile __be32 fwd_daddr = 0;	/* the backend's (DNAT) */
const volatile __be16 fwd_dport = 0;	/* the backend's port */

/* The cheapest program that forwards the NodePort flow as bpf_xdp does:
 * no lookup at all, the translation fixed at load time (SNAT + DNAT, TTL-1,
 * the header checksum recomputed, UDP checksum 0, MACs swapped) and
 * XDP_TX. (this ÷ tc NodePort) bounds what any XDP NodePort can reach. */
SEC("xdp")
int xdp_fwd_static(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct udphdr *udp = (void *)(ip + 1);
	unsigned char mac[ETH_ALEN];
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;

	if ((void *)(udp + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	ip->saddr = fwd_saddr;
	ip->daddr = fwd_daddr;
	ip->ttl--;
	ip->check = 0;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	ip->check = (__u16)~sum;
	udp->dest = fwd_dport;
	udp->check = 0;
	count(COUNT_HIT);
	return XDP_TX;
}

SEC("tc")
int tc_prefilter(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct cidr4_key key = { .prefixlen = 32 };

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->version != 4 || ip->ihl < 5)
		return TC_ACT_OK;
	key.addr = ip->saddr;
	if (bpf_map_lookup_elem(&bench_cidr_fix, &key) || bpf_map_lookup_elem(&bench_cidr_dyn, &key)) {
		count(COUNT_HIT);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

char _license[] SEC("license") = "Dual BSD/GPL";
