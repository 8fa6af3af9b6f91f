// SPDX-License-Identifier: GPL-2.0
/*
 * test_bad.c - compiles cleanly but the verifier MUST reject it: it reads
 * packet data without checking it against data_end. Used to test that load
 * errors carry the verifier log ("invalid access to packet").
 *
 * Kept alone in its own object: one rejected program fails the whole object.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

SEC("tc")
int tc_out_of_bounds(struct __sk_buff *skb)
{
	struct ethhdr *eth = (void *)(long)skb->data;

	/* No "if ((void *)(eth + 1) > data_end)" here: that is the bug. */
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
