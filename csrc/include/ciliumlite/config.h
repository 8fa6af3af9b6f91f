/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: node-wide load-time configuration (.rodata).
 *
 * Objects are built once and configured at load: Python writes these
 * `const volatile` globals into the object's .rodata map before
 * bpf_object__load(), and the verifier then sees them as constants and prunes
 * disabled branches. Nothing here is per endpoint (that lives in maps).
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

/* The node's primary IPv4 address (network byte order). 0 = unset.
 * Reserved for SNAT / tunnel source / NodePort; bpf_lxc does not read it yet. */
const volatile __be32 node_ipv4 = 0;

#endif /* __CILIUMLITE_CONFIG_H */
