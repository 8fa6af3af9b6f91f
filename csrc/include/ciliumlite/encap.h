/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: VXLAN encapsulation through a collect-md tunnel device
 * (Cilium lib/encap.h encap_and_redirect_lxc + ctx_set_encap_info).
 *
 * BPF does not build outer headers. It attaches tunnel metadata to the skb
 * with bpf_skb_set_tunnel_key() and redirects the inner frame to the egress
 * of cilium_vxlan, a kernel VXLAN device in "external" (collect_md) mode.
 * That device routes the outer packet in the node netns and builds
 * Eth/IPv4/UDP(dstport of the device, 8472)/VXLAN(VNI = tunnel_id).
 *
 *   tunnel_id   = the SOURCE endpoint's security identity (the VNI), as in
 *                 Cilium; the receiver reads it back in cil_from_overlay.
 *                 VXLAN carries 24 bits, so identities > 0xffffff are dropped
 *                 (DROP_INVALID_IDENTITY) instead of being silently truncated.
 *   remote_ipv4 = remote node IP in HOST byte order (the helper's ABI).
 *   ttl 64, flags BPF_F_ZERO_CSUM_TX (outer UDP checksum 0, Cilium §7.3),
 *   no local_ipv4: the outer source is chosen by the node's routing.
 *
 * The inner frame keeps its MACs (pod MAC -> lxc MAC); the receiving node
 * rewrites them on delivery. No TTL decrement here: the receiver's
 * ipv4_local_delivery() does it (one hop, as in Cilium).
 *
 * The tunnel device does no MTU check on a bpf_redirect()ed skb: pod MTU must
 * be <= underlay MTU - 50.
 */
#ifndef __CILIUMLITE_ENCAP_H
#define __CILIUMLITE_ENCAP_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "compiler.h"
#include "config.h"
#include "ctx.h"
#include "drop.h"
#include "metrics.h"
#include "reasons.h"
#include "trace.h"

#define TUNNEL_TTL		64
#define TUNNEL_MAX_VNI		0xffffff

/* The bpf_tunnel_key without local_ipv{4,6}: every kernel accepts this size
 * (it is the full struct before 6.0, a compat size after), and leaving the
 * source out lets the kernel pick it (Cilium TUNNEL_KEY_WITHOUT_SRC_IP). */
#define TUNNEL_KEY_SIZE		__builtin_offsetof(struct bpf_tunnel_key, local_ipv4)

/* Encapsulate the frame in @ctx towards the node @remote_node (network byte
 * order) with VNI @sec_identity and redirect it to cilium_vxlan
 * (tunnel_ifindex). @dir is the metrics direction of the calling program.
 * Counts REASON_ENCAPSULATED or the drop; returns the tc verdict
 * (TC_ACT_REDIRECT or TC_ACT_SHOT). */
static __always_inline int
encap_and_redirect(struct __sk_buff *ctx, __be32 remote_node, __u32 sec_identity, __u8 dir)
{
	struct bpf_tunnel_key key = {};

	/* No device or no remote node: a configuration / map bug. */
	if (!tunnel_ifindex || !remote_node)
		return send_drop(ctx, DROP_NO_TUNNEL_ENDPOINT, dir);
	if (sec_identity > TUNNEL_MAX_VNI)
		return send_drop(ctx, DROP_INVALID_IDENTITY, dir);

	key.tunnel_id = sec_identity;
	key.remote_ipv4 = bpf_ntohl(remote_node);
	key.tunnel_ttl = TUNNEL_TTL;

	if (bpf_skb_set_tunnel_key(ctx, &key, TUNNEL_KEY_SIZE, BPF_F_ZERO_CSUM_TX) < 0)
		return send_drop(ctx, DROP_WRITE_ERROR, dir);

	update_metrics(ctx, dir, REASON_ENCAPSULATED);
	send_trace_notify(ctx, TRACE_TO_OVERLAY, REASON_ENCAPSULATED, dir, tunnel_ifindex);
	return bpf_redirect(tunnel_ifindex, 0);
}

#endif /* __CILIUMLITE_ENCAP_H */
