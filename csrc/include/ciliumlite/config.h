/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: node-wide load-time configuration (.rodata).
 *
 * Objects are built once and configured at load: Python writes these
 * `const volatile` globals into the object's .rodata map before
 * bpf_object__load(), and the verifier then sees them as constants and prunes
 * disabled branches. Nothing here is per endpoint (that lives in maps).
 *
 * Every object that includes this header (bpf_lxc.o, bpf_overlay.o,
 * bpf_host.o, bpf_sock.o) declares ALL of these variables in its own
 * .rodata, whether it reads them or not. Python should set the same values in
 * every object of a node.
 *
 *   name                type    default        meaning
 *   ------------------  ------  -------------  ---------------------------------
 *   node_ipv4           __be32  0              node's primary IPv4: NodePort SNAT
 *                                              and masquerade source, socket LB
 *                                              wildcard NodePort address
 *   routing_mode        __u8    0 (NONE)       where cil_from_container sends a
 *                                              packet that is not for a local
 *                                              endpoint: ROUTING_MODE_NONE (0) =
 *                                              to the stack; _TUNNEL (1) = VXLAN
 *                                              via cilium_tunnel_map; _NATIVE (2)
 *                                              = bpf_fib_lookup + redirect for
 *                                              destinations in native_cidr
 *   tunnel_ifindex      __u32   0              ifindex of the collect-md
 *                                              ("external") VXLAN device
 *                                              cilium_vxlan in the node netns;
 *                                              required when routing_mode = 1
 *   native_ifindex      __u32   0              ifindex of the node's underlay
 *                                              device; used only as the fallback
 *                                              output device when a FIB lookup
 *                                              returns NO_NEIGH without one
 *                                              (kernels < 6.4); 0 = no fallback
 *   native_cidr         __be32  0              ipv4-native-routing-cidr network;
 *   native_cidr_mask    __be32  0              ... and its netmask. In mode 2 a
 *                                              destination d is FIB-routed iff
 *                                              (d & mask) == cidr; 0/0 = every
 *                                              non-local destination
 *   tunnel_prefix_mask  __be32  255.255.255.0  netmask of one node's pod CIDR:
 *                                              cilium_tunnel_map keys are
 *                                              daddr & tunnel_prefix_mask
 *   pod_cidr            __be32  0              this node's pod CIDR network ...
 *   pod_cidr_mask       __be32  0              ... and netmask (masquerade source
 *                                              match; 0/0 = masquerade nothing)
 *
 *   Load balancing / NAT (lb.h ct.h nat.h dsr.h):
 *   enable_socket_lb    __u8    1              bpf_sock translates at connect/
 *                                              sendmsg (only bpf_sock reads it)
 *   enable_per_packet_lb __u8   0              cil_from_container: 1 = DNAT pod
 *                                              packets whose daddr:dport is a
 *                                              frontend (socket LB did not see
 *                                              them: raw socket, pre-existing
 *                                              socket, socket LB off); 0 = no
 *                                              frontend lookup, socket LB only
 *   lb_mode             __u8    0 (SNAT)       NodePort to a remote backend:
 *                                              LB_MODE_SNAT 0, LB_MODE_DSR 1,
 *                                              LB_MODE_HYBRID 2 (DSR for TCP,
 *                                              SNAT for UDP). DSR needs
 *                                              routing_mode NATIVE (else SNAT)
 *   nodeport_min        __u16   30000          NodePort range (socket LB wildcard
 *   nodeport_max        __u16   32767          lookup for node IP / loopback)
 *   enable_masquerade   __u8    0              cil_to_netdev SNATs pod traffic
 *                                              leaving the cluster to node_ipv4
 *   snat_port_min       __u16   32768          source ports for NodePort SNAT and
 *   snat_port_max       __u16   65535          masquerade (Cilium: nodeport_max+1
 *                                              .. 65535)
 *   maglev_table_size   __u32   1021           M of cilium_lb4_maglev (prime)
 *   maglev_seed         __u32   0              jhash seed of the Maglev index
 *   native_mtu          __u32   1500           underlay MTU: DSR frag-needed check
 *   host_netns_cookie   __u64   0              netns cookie of the node's host
 *                                              netns (bpf_sock: loopback wildcard
 *                                              only from there); 0 = init_net's
 *
 *   Network policy (policy.h, docs/policy.md):
 *   enable_policy       __u8    0              1: bpf_lxc / bpf_overlay / bpf_host
 *                                              enforce each endpoint's policy map
 *                                              (cilium_policy) and track every
 *                                              connection for it; 0: the verifier
 *                                              prunes all of it (no policy, no cost)
 *
 *   Monitoring (trace.h, ring buffer cilium_events):
 *   drop_events         __u8    1              every send_drop() sends a
 *                                              drop_notify event
 *   trace_events        __u8    0              trace_notify events at every
 *                                              forward decision and program
 *                                              entry; 0 = the verifier removes
 *                                              them (set at load time only:
 *                                              DatapathConfig(monitor_trace=True))
 *   events_per_sec      __u32   1000           token bucket per CPU for both
 *                                              kinds (burst = the rate); 0 =
 *                                              no limit. Over the limit: counted
 *                                              REASON_EVENT_LOST_RATE_LIMIT
 *
 * Byte order: __be32 values are network order *in memory*. The bpf SDK writes
 * .rodata integers little-endian, so from Python pass
 *     int.from_bytes(ipaddress.IPv4Address(a).packed, "little")
 * (e.g. 255.255.255.0 -> 0x00ffffff), not int(IPv4Address(a)).
 *
 * Rules:
 *   - lowercase snake_case names, fixed-width types, a default that is safe;
 *   - addresses in network byte order (__be32), flags as __u8 0/1;
 *   - knobs used by several objects live here, object-specific knobs at the
 *     top of their .c file (each object has its own .rodata; Python sets every
 *     name the object's BTF declares).
 */
#ifndef __CILIUMLITE_CONFIG_H
#define __CILIUMLITE_CONFIG_H

#include <linux/types.h>
#include <bpf/bpf_endian.h>

/* routing_mode values */
#define ROUTING_MODE_NONE	0	/* remote traffic to the stack */
#define ROUTING_MODE_TUNNEL	1	/* VXLAN (collect-md device) */
#define ROUTING_MODE_NATIVE	2	/* FIB lookup + redirect */

const volatile __be32 node_ipv4 = 0;
const volatile __u8 routing_mode = ROUTING_MODE_NONE;
const volatile __u32 tunnel_ifindex = 0;
const volatile __u32 native_ifindex = 0;
const volatile __be32 native_cidr = 0;
const volatile __be32 native_cidr_mask = 0;
const volatile __be32 tunnel_prefix_mask = bpf_htonl(0xffffff00);	/* /24 */
const volatile __be32 pod_cidr = 0;
const volatile __be32 pod_cidr_mask = 0;

/* lb_mode values */
#define LB_MODE_SNAT		0
#define LB_MODE_DSR		1
#define LB_MODE_HYBRID		2	/* DSR for TCP, SNAT for UDP */

const volatile __u8 enable_socket_lb = 1;
const volatile __u8 enable_per_packet_lb = 0;
const volatile __u8 lb_mode = LB_MODE_SNAT;
const volatile __u16 nodeport_min = 30000;
const volatile __u16 nodeport_max = 32767;
const volatile __u8 enable_masquerade = 0;
const volatile __u16 snat_port_min = 32768;
const volatile __u16 snat_port_max = 65535;
const volatile __u32 maglev_table_size = 1021;
const volatile __u32 maglev_seed = 0;
const volatile __u32 native_mtu = 1500;
const volatile __u64 host_netns_cookie = 0;

const volatile __u8 enable_policy = 0;

const volatile __u8 drop_events = 1;
const volatile __u8 trace_events = 0;
const volatile __u32 events_per_sec = 1000;

#endif /* __CILIUMLITE_CONFIG_H */
