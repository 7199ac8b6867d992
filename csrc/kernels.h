/* The compiled kernels' shared parts: the table entry every kernel file exports, and float32
 * arithmetic as `bce_audit/ftz.py` defines it (one definition, mirrored op for op).
 *
 * Every kernel is the C twin of a numpy model's float32 core: the same inputs give the same
 * bits, NaN payloads included (tests/test_compiled.py compares the two). Built with
 * -ffp-contract=off: no multiply is fused into an add unless the code says fmaf. */
#ifndef BCE_AUDIT_KERNELS_H
#define BCE_AUDIT_KERNELS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* One kernel: `n` elements of `nin` float32 inputs in, `nout` float32 outputs out. */
typedef void (*kernel_fn)(const float *const *in, float *const *out, ptrdiff_t n);

struct kernel {
    const char *name;
    int nin, nout;
    kernel_fn fn;
};

/* Whether loops may be built twice or more for the CPU to pick at load time (target_clones):
 * GCC 11 or later (for the x86-64-v3 and -v4 names) on x86-64 with glibc (its ifunc picks).
 * -DBCE_NO_CLONES builds the plain loops only, to test them where the CPU would pick others. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && \
    defined(__GLIBC__) && !defined(BCE_NO_CLONES)
#define BCE_CLONES 1
#else
#define BCE_CLONES 0
#endif

#define TINY32 0x1p-126f /* float32's smallest normal */

/* A kernel that maps `fn` over one input, element by element; `attrs`: the loop's attributes
 * (its target clones and optimisation, as each file builds them). */
#define MAP_KERNEL(attrs, name, fn)                                          \
    attrs static void name(const float *const *in, float *const *out, ptrdiff_t n) { \
        const float *x = in[0];                                              \
        float *y = out[0];                                                   \
        for (ptrdiff_t i = 0; i < n; i++) y[i] = fn(x[i]);                   \
    }

/* Inlined into every caller, whatever its own target and optimisation attributes (a call left
 * in a loop stops GCC vectorising it). */
#if defined(__GNUC__)
#define ALWAYS static inline __attribute__((always_inline))
#else
#define ALWAYS static inline
#endif

ALWAYS uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
ALWAYS float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* A NaN as x86 arithmetic (and numpy's float32 ops) pass it on: quieted, payload kept. */
ALWAYS float quiet(float a) { return u2f(f2u(a) | 0x00400000u); }

/* `c ? a : b` on the bits (an integer mask): GCC if-converts it, where a float `?:` whose sides
 * hold float ops is sunk into branches (ops that may trap) and stops the loop vectorising. */
ALWAYS float sel(int c, float a, float b) {
    uint32_t m = -(uint32_t)(c != 0);
    return u2f((f2u(a) & m) | (f2u(b) & ~m));
}

/* ftz.flush for float32: a subnormal as a zero of its sign (a * 0, as numpy's model does). */
static inline float flush32(float a) { return fabsf(a) < TINY32 ? a * 0.0f : a; }

/* ftz.round_f32: float64 -> float32 under FTZ, tininess detected after rounding with an
 * unbounded exponent (x86). */
static inline float round_f32(double v) {
    float r = (float)v;
    float mag = fabsf(r);
    if (!(mag <= TINY32)) return r; /* NaN too */
    int tiny = mag < TINY32 || fabsf((float)(v * 0x1p100)) < 0x1p-26f;
    return tiny ? copysignf(0.0f, r) : r;
}

/* ftz.op: one float32 operation under FTZ. The float32 result, or where it is a nonzero value
 * at or below the smallest normal, the exact (or innocuously rounded) float64 one, `round_f32`'d. */
#define FTZ_OP(name, op)                                                  \
    static inline float name(float a, float b) {                          \
        float r = a op b;                                                 \
        if (r != 0.0f && fabsf(r) <= TINY32) r = round_f32((double)a op (double)b); \
        return r;                                                         \
    }
FTZ_OP(ftz_add, +)
FTZ_OP(ftz_sub, -)
FTZ_OP(ftz_mul, *)
FTZ_OP(ftz_div, /)
#undef FTZ_OP

/* ftz.fma: a*b + c rounded once to float32 (fmaf is correctly rounded); `ftz`: a subnormal
 * result flushed to a zero of its sign. */
static inline float fma32(float a, float b, float c, int ftz) {
    float r = fmaf(a, b, c);
    return ftz ? flush32(r) : r;
}

#endif
