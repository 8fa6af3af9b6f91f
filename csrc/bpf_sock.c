// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* bpf_sock.o - socket-level load balancing (Cilium bpf_sock.c, reference §4).
 *
 * ONE object per node, loaded with the node's pin root (it shares the LB maps
 * with the tc objects) and attached to the node's own cgroup v2 directory
 * (never the cgroup root: every program attached above a process runs for
 * its sockets, whatever netns they live in).
 *
 * Programs
 *   cil_sock4_connect      SEC("cgroup/connect4")   TCP connect(), UDP
 *                                                    connect(): forward xlate
 *   cil_sock4_sendmsg      SEC("cgroup/sendmsg4")   unconnected UDP sendmsg():
 *                                                    forward xlate
 *   cil_sock4_recvmsg      SEC("cgroup/recvmsg4")   UDP recvmsg()/recvfrom():
 *                                                    peer backend -> service
 *   cil_sock4_getpeername  SEC("cgroup/getpeername4") getpeername(): same
 *
 * Forward translation (connect4 / sendmsg4), for TCP and UDP only:
 *   1. key {user_ip4, user_port, proto = ctx->protocol}; scope EXT, then INT
 *      if the row has TWO_SCOPES (in-cluster clients see every backend).
 *   2. miss, port in nodeport_min..nodeport_max, and user_ip4 is node_ipv4,
 *      any cluster node IP (cilium_node_map; Cilium's include_remote_hosts),
 *      or (in the host netns only) 127.0.0.0/8: the wildcard frontend
 *      {0.0.0.0, port, proto} (Cilium's surrogate NodePort frontend), INT
 *      scope for two-scope rows. So a NodePort of ANOTHER node is load
 *      balanced at connect() from this node's rows: the connection goes
 *      straight to the backend (with DSR, a reply to a client pod on the
 *      backend's own node would otherwise never pass a cil_to_netdev).
 *   3. miss -> the socket is left alone.
 *   4. frontend with count == 0 -> the call fails at once with ECONNREFUSED
 *      (bpf_set_retval(-ECONNREFUSED) + reject; Cilium uses EHOSTUNREACH).
 *   5. backend: affinity by netns cookie (SVC_FLAG_AFFINITY), else slot
 *      (random % count) + 1 for TCP, (socket cookie % count) + 1 for UDP, so
 *      every datagram of one socket goes to the same backend. Never Maglev.
 *   6. cilium_lb4_reverse_sk[{socket cookie, backend ip, backend port}] =
 *      {user ip, user port, rev_nat_index}; failure -> ENOMEM (as Cilium);
 *      then user_ip4/user_port := backend.
 * Reverse translation (recvmsg4 / getpeername4): {cookie, user_ip4,
 *   user_port} in cilium_lb4_reverse_sk -> the frontend must still exist
 *   (same lookup as above) with the same rev_nat_index and count > 0, else the
 *   entry is deleted (REASON_LB_REVNAT_STALE) and nothing is rewritten;
 *   otherwise user_ip4/user_port := the service address the app used.
 *
 * Load-time configuration (.rodata): config.h; read here: enable_socket_lb
 * (0 = every program returns "proceed" untouched), node_ipv4,
 * nodeport_min/max, host_netns_cookie.
 *
 * Also read: cilium_node_map (cluster node IPs, for the wildcard).
 *
 * Maps (maps.h, pinned by name)
 *   cilium_lb4_services_v2 / _backends_v3   read
 *   cilium_lb4_reverse_sk                   read/write
 *   cilium_lb4_affinity                     read/write
 *   cilium_metrics                          write (per socket operation,
 *                                           0 bytes, dir METRIC_SERVICE)
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ciliumlite/compiler.h"
#include "ciliumlite/config.h"
#include "ciliumlite/reasons.h"
#include "ciliumlite/maps.h"
#include "ciliumlite/metrics.h"
#include "ciliumlite/lb.h"

#define SYS_REJECT	0
#define SYS_PROCEED	1

#ifndef ECONNREFUSED
# define ECONNREFUSED	111
#endif
#ifndef ENOMEM
# define ENOMEM		12
#endif
#ifndef ENOENT
# define ENOENT		2
#endif

/* Socket operations are not packets: count them with 0 bytes. */
#define update_sock_metrics(reason)					\
	__update_metrics(0, METRIC_SERVICE, (reason), __MAGIC_LINE__, __MAGIC_FILE__)

static __always_inline bool sock_in_hostns(struct bpf_sock_addr *ctx)
{
	__u64 own = bpf_get_netns_cookie(ctx);

	if (host_netns_cookie)
		return own == host_netns_cookie;
	return own == bpf_get_netns_cookie(NULL);
}

static __always_inline bool ipv4_is_loopback(__be32 addr)
{
	return (addr & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000);
}

/* Frontend row for {addr, port, proto} as a socket sees it (direct, then the
 * NodePort wildcard); @key is left at the row found. */
static __always_inline struct lb4_service *
sock4_lookup_service(struct bpf_sock_addr *ctx, struct lb4_key *key)
{
	struct lb4_service *svc;
	__u16 port;

	svc = lb4_lookup_service(key, true);
	if (svc)
		return svc;

	port = bpf_ntohs(key->dport);
	if (port < nodeport_min || port > nodeport_max)
		return NULL;
	if (!(node_ipv4 && key->address == node_ipv4) &&
	    !(ipv4_is_loopback(key->address) && sock_in_hostns(ctx)) &&
	    !bpf_map_lookup_elem(&cilium_node_map, &key->address))
		return NULL;
	key->address = 0;
	return lb4_lookup_service(key, true);
}

/* 0 = proceed (translated or not ours), else a negative errno for the call. */
static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx, bool udp_only)
{
	struct ipv4_revnat_tuple rkey = {};
	struct ipv4_revnat_entry rval = {};
	struct lb4_service *svc, svc_copy;
	struct lb4_backend *be;
	struct lb4_key key = {};
	__u8 proto = ctx->protocol;
	__be32 orig_addr = ctx->user_ip4;
	__be16 orig_port = (__be16)ctx->user_port;
	__u64 cookie;
	__u32 id, hash;
	__be32 be_addr;
	__be16 be_port;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	if (udp_only && proto != IPPROTO_UDP)
		return 0;

	key.address = orig_addr;
	key.dport = orig_port;
	key.proto = proto;
	svc = sock4_lookup_service(ctx, &key);
	if (!svc)
		return 0;
	svc_copy = *svc;
	if (!svc_copy.count) {
		update_sock_metrics(REASON_LB_SOCK_REFUSED);
		return -ECONNREFUSED;
	}

	cookie = bpf_get_socket_cookie(ctx);
	hash = proto == IPPROTO_UDP ? (__u32)cookie : bpf_get_prandom_u32();
	id = lb4_select_backend_id(&key, &svc_copy, bpf_get_netns_cookie(ctx), true,
				   hash, false);
	if (!id)
		return 0;
	be = lb4_lookup_backend(id);
	if (!be)
		return 0;
	be_addr = be->address;
	be_port = be->port;

	rkey.cookie = cookie;
	rkey.address = be_addr;
	rkey.port = be_port;
	rval.address = orig_addr;
	rval.port = orig_port;
	rval.rev_nat_index = svc_copy.rev_nat_index;
	if (bpf_map_update_elem(&cilium_lb4_reverse_sk, &rkey, &rval, BPF_ANY) < 0)
		return -ENOMEM;

	ctx->user_ip4 = be_addr;
	ctx->user_port = (__u32)be_port;
	update_sock_metrics(REASON_LB_SOCK_XLATE);
	return 0;
}

static __always_inline int sock4_xlate_rev(struct bpf_sock_addr *ctx)
{
	struct ipv4_revnat_tuple rkey = {};
	struct ipv4_revnat_entry *rval;
	struct lb4_service *svc;
	struct lb4_key key = {};
	__u8 proto = ctx->protocol;
	__be32 addr;
	__be16 port;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;
	rkey.cookie = bpf_get_socket_cookie(ctx);
	rkey.address = ctx->user_ip4;
	rkey.port = (__be16)ctx->user_port;
	rval = bpf_map_lookup_elem(&cilium_lb4_reverse_sk, &rkey);
	if (!rval)
		return 0;
	addr = rval->address;
	port = rval->port;

	key.address = addr;
	key.dport = port;
	key.proto = proto;
	svc = sock4_lookup_service(ctx, &key);
	if (!svc || svc->rev_nat_index != rval->rev_nat_index || !svc->count) {
		bpf_map_delete_elem(&cilium_lb4_reverse_sk, &rkey);
		update_sock_metrics(REASON_LB_REVNAT_STALE);
		return -ENOENT;
	}

	ctx->user_ip4 = addr;
	ctx->user_port = (__u32)port;
	update_sock_metrics(REASON_LB_SOCK_REVXLATE);
	return 0;
}

static __always_inline int sock4_verdict(int err)
{
	if (err == -ECONNREFUSED || err == -ENOMEM) {
		/* The errno connect()/sendmsg() returns instead of EPERM. */
		bpf_set_retval(err);
		return SYS_REJECT;
	}
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int cil_sock4_connect(struct bpf_sock_addr *ctx)
{
	if (!enable_socket_lb)
		return SYS_PROCEED;
	return sock4_verdict(sock4_xlate_fwd(ctx, false));
}

SEC("cgroup/sendmsg4")
int cil_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	if (!enable_socket_lb)
		return SYS_PROCEED;
	return sock4_verdict(sock4_xlate_fwd(ctx, true));
}

SEC("cgroup/recvmsg4")
int cil_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	if (enable_socket_lb)
		sock4_xlate_rev(ctx);
	return SYS_PROCEED;	/* recvmsg4 must return 1 */
}

SEC("cgroup/getpeername4")
int cil_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	if (enable_socket_lb)
		sock4_xlate_rev(ctx);
	return SYS_PROCEED;	/* getpeername4 must return 1 */
}

char _license[] SEC("license") = "Dual BSD/GPL";
