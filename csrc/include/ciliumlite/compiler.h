/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* ciliumlite: compiler helpers shared by every BPF object.
 *
 * Everything in csrc/ is built with clang -O2 -target bpf -mcpu=v3 against UAPI
 * headers only (no vmlinux.h), so the usual kernel-side conveniences live here.
 */
#ifndef __CILIUMLITE_COMPILER_H
#define __CILIUMLITE_COMPILER_H

#include <stdbool.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>	/* SEC, __uint, __type, __always_inline */

#ifndef __always_inline
# define __always_inline	inline __attribute__((always_inline))
#endif

#ifndef likely
# define likely(x)		__builtin_expect(!!(x), 1)
#endif
#ifndef unlikely
# define unlikely(x)		__builtin_expect(!!(x), 0)
#endif

#ifndef __packed
# define __packed		__attribute__((packed))
#endif

#ifndef __aligned
# define __aligned(x)		__attribute__((aligned(x)))
#endif

/* bpf_helpers.h defines offsetof() as the classic null-pointer cast, which is
 * not a constant expression for _Static_assert; use __builtin_offsetof there. */
#ifndef offsetof
# define offsetof(type, member)	__builtin_offsetof(type, member)
#endif

#ifndef ARRAY_SIZE
# define ARRAY_SIZE(a)		(sizeof(a) / sizeof((a)[0]))
#endif

/* Compile-time layout assertion: a struct that Python mirrors byte for byte
 * must not change size silently. */
#define CL_STATIC_ASSERT(expr, msg)	_Static_assert(expr, msg)

/* Keep the compiler from merging or reordering a value the verifier must see as
 * bounded in a specific register (same trick as Cilium's barrier_data()). */
#define barrier_data(ptr)	asm volatile("" : : "r"(ptr) : "memory")

#endif /* __CILIUMLITE_COMPILER_H */
