/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: node-wide load-time configuration (.rodata).
 *
 * Objects are built once and configured at load: Python writes these
 * `const volatile` globals into the object's .rodata map before
 * bpf_object__load(), and the verifier then sees them as constants and prunes
 * disabled branches. Nothing here is per endpoint (that lives in maps).
 *
 * Every object that includes this header (bpf_lxc.o, bpf_overlay.o,
 * bpf_host.o) declares ALL of these variables in its own .rodata, whether it
 * reads them or not. Python should set the same values in every object of a
 * node.
 *
 *   name                type    default        meaning
 *   ------------------  ------  -------------  ---------------------------------
 *   node_ipv4           __be32  0              node's primary IPv4 (SNAT / tunnel
 *                                              source / NodePort later; read by
 *                                              nothing yet)
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

#endif /* __CILIUMLITE_CONFIG_H */
