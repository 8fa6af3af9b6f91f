// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* bpf_sockops.o - socket send/recv acceleration between pods of one node
 * (Cilium's bpf_sockops.c + bpf_redir.c of 1.4..1.13; reference anchors-next §4).
 * EXPERIMENTAL and off by default (DatapathConfig.sockops_acceleration).
 *
 * Programs
 *   cil_sockops  SEC("sockops")  on the node's own cgroup v2 directory (never
 *                                the root). At ACTIVE/PASSIVE_ESTABLISHED, a
 *                                TCP/IPv4 socket whose BOTH ends are local pods
 *                                (cilium_lxc, without ENDPOINT_F_HOST) goes into
 *                                cilium_sock_ops, keyed by its 4-tuple, with a
 *                                sock_state recording both endpoints, unless
 *                                a port of it is in cilium_sock_exc.
 *   cil_sk_msg   SEC("sk_msg")   attached to cilium_sock_ops: runs for every
 *                                sendmsg()/sendfile()/splice() chunk of those
 *                                sockets and hands it to the peer socket's
 *                                receive queue (bpf_msg_redirect_hash,
 *                                BPF_F_INGRESS): no TCP segment, no veth, no tc
 *                                program, no backlog.
 *
 * Ordering rule (why there is a per-socket mode): the receiver reads its
 * redirected queue (psock->ingress_msg) BEFORE its TCP receive queue
 * (tcp_bpf_recvmsg). So a direction that ever sent a byte through TCP/IP must
 * never redirect afterwards, or later bytes would overtake earlier ones. The
 * decision is made at the socket's FIRST message and only ever moves from
 * REDIRECT to PASS:
 *   UNDECIDED --peer in the map--> REDIRECT --(any reason below)--> PASS
 *   UNDECIDED --peer not in map--> PASS (the peer's ESTABLISHED came late)
 * REDIRECT -> PASS is safe: the peer drains the redirected (older) bytes
 * first, then the TCP (newer) ones. Reasons to fall back for good:
 *   - the switch is off (cilium_sock_cfg[0].enabled == 0): disabling under
 *     traffic moves live connections to TCP/IP without a byte out of order;
 *   - an end's endpoint is gone or was re-made (its id or ifindex changed):
 *     a deleted or moved pod is no shortcut any more, the normal path decides;
 *   - the peer left the map (it was closed).
 * Sockets leave cilium_sock_ops when they are closed (the kernel's
 * sock_map_close / sock_map_destroy; TCP state changes do not remove them).
 *
 * Load-time configuration (.rodata): config.h (declared, none read).
 *
 * Maps
 *   cilium_lxc       read (maps.h)
 *   cilium_sock_ops  read/write (sockops.h): the sockhash
 *   cilium_sock_sk   read/write: per-socket sock_state (SK_STORAGE)
 *   cilium_sock_cfg  read: the runtime switch
 *   cilium_sock_exc  read: ports never accelerated (splice readers)
 *   cilium_sock_ctr  write: counters (SOCKOPS_C_*)
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ciliumlite/compiler.h"
#include "ciliumlite/config.h"
#include "ciliumlite/maps.h"
#include "ciliumlite/sockops.h"

#ifndef AF_INET
# define AF_INET	2
#endif

static __always_inline struct endpoint_info *pod_endpoint(__be32 ip4)
{
	struct endpoint_info *ep = lookup_ip4_endpoint(ip4);

	if (!ep || (ep->flags & ENDPOINT_F_HOST))
		return NULL;
	return ep;
}

/* The endpoint recorded at ESTABLISHED is still the one that owns @ip4. */
static __always_inline bool same_endpoint(__be32 ip4, __u16 lxc_id, __u32 ifindex)
{
	struct endpoint_info *ep = pod_endpoint(ip4);

	return ep && ep->lxc_id == lxc_id && ep->ifindex == ifindex;
}

static __always_inline void sockops_track(struct bpf_sock_ops *skops)
{
	struct endpoint_info *local, *remote;
	struct sock_state *st;
	struct sock_key key = {};
	struct bpf_sock *sk;

	if (skops->family != AF_INET || !sockops_enabled())
		return;
	local = pod_endpoint(skops->local_ip4);
	remote = pod_endpoint(skops->remote_ip4);
	if (!local || !remote) {
		sockops_count(SOCKOPS_C_SOCK_NOT_LOCAL, 0);
		return;
	}
	key.local_ip4 = skops->local_ip4;
	key.remote_ip4 = skops->remote_ip4;
	key.local_port = (__u16)skops->local_port;
	key.remote_port = (__u16)bpf_ntohl(skops->remote_port);
	if (bpf_map_lookup_elem(&cilium_sock_exc, &key.local_port) ||
	    bpf_map_lookup_elem(&cilium_sock_exc, &key.remote_port)) {
		sockops_count(SOCKOPS_C_SOCK_EXCLUDED, 0);
		return;
	}
	sk = skops->sk;
	if (!sk)
		return;
	st = bpf_sk_storage_get(&cilium_sock_sk, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st) {
		sockops_count(SOCKOPS_C_SOCK_ADD_FAILED, 0);
		return;
	}
	st->mode = SOCK_MODE_UNDECIDED;
	st->pass_reason = 0;
	st->local_lxc_id = local->lxc_id;
	st->remote_lxc_id = remote->lxc_id;
	st->local_ifindex = local->ifindex;
	st->remote_ifindex = remote->ifindex;

	/* BPF_NOEXIST: replacing a live entry would drop that socket's psock
	 * and with it any bytes still queued for its reader. */
	if (bpf_sock_hash_update(skops, &cilium_sock_ops, &key, BPF_NOEXIST) < 0) {
		st->mode = SOCK_MODE_PASS;
		st->pass_reason = SOCKOPS_C_SOCK_ADD_FAILED;
		sockops_count(SOCKOPS_C_SOCK_ADD_FAILED, 0);
		return;
	}
	/* State changes are only counted (the kernel removes the socket at close). */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	sockops_count(SOCKOPS_C_SOCK_ADDED, 0);
}

SEC("sockops")
int cil_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		sockops_track(skops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE)
			sockops_count(SOCKOPS_C_SOCK_CLOSED, 0);
		break;
	default:
		break;
	}
	return 1;
}

static __always_inline int msg_pass(struct sock_state *st, __u8 reason, __u32 size)
{
	if (st && st->mode != SOCK_MODE_PASS) {
		st->mode = SOCK_MODE_PASS;	/* for good: see the ordering rule */
		st->pass_reason = reason;
	}
	if (reason)
		sockops_count(reason, size);
	sockops_count(SOCKOPS_C_MSG_PASS, size);
	return SK_PASS;
}

SEC("sk_msg")
int cil_sk_msg(struct sk_msg_md *msg)
{
	struct sock_key peer = {};
	struct sock_state *st;
	struct bpf_sock *sk = msg->sk;
	__u32 size = msg->size;

	if (!sk)
		return msg_pass(NULL, 0, size);
	st = bpf_sk_storage_get(&cilium_sock_sk, sk, 0, 0);
	if (!st)
		return msg_pass(NULL, SOCKOPS_C_PASS_NO_STATE, size);
	if (st->mode == SOCK_MODE_PASS)
		return msg_pass(st, 0, size);
	if (!sockops_enabled())
		return msg_pass(st, SOCKOPS_C_PASS_DISABLED, size);
	if (!same_endpoint(msg->local_ip4, st->local_lxc_id, st->local_ifindex) ||
	    !same_endpoint(msg->remote_ip4, st->remote_lxc_id, st->remote_ifindex))
		return msg_pass(st, SOCKOPS_C_PASS_ENDPOINT, size);

	peer.local_ip4 = msg->remote_ip4;
	peer.remote_ip4 = msg->local_ip4;
	peer.local_port = (__u16)bpf_ntohl(msg->remote_port);
	peer.remote_port = (__u16)msg->local_port;
	/* On a miss the helper returns SK_DROP and sets no target: the
	 * message then goes through TCP/IP (returning SK_DROP would fail the
	 * sendmsg with EACCES). */
	if (bpf_msg_redirect_hash(msg, &cilium_sock_ops, &peer, BPF_F_INGRESS) != SK_PASS)
		return msg_pass(st, st->mode == SOCK_MODE_UNDECIDED ? SOCKOPS_C_PASS_NO_PEER :
				SOCKOPS_C_PASS_PEER_GONE, size);
	st->mode = SOCK_MODE_REDIRECT;
	sockops_count(SOCKOPS_C_MSG_REDIRECT, size);
	return SK_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
