/* `bce_audit/xla.py`'s float32 cores in C, bit for bit (see kernels.h): XLA's exp, log and
 * log1p (Cephes polynomials with FMAs, under FTZ), and the float32 work of logistic, softplus
 * and optax's BCE built on them. `fma` is fmaz(a, b, c) and `_z(a op b)` z32(a op b): kernels.h's
 * fma32(a, b, c, 1) and flush32, as selects of bits (below). */
#include "kernels.h"

#define H(bits) u2f(bits##u) /* a float32 constant from its bit pattern, as xla.py's _h */
#define NAN32 u2f(0x7FC00000u) /* numpy's np.nan as float32 */

/* Each kernel twice, chosen at load time: for CPUs with FMA (fmaf one instruction, not a call:
 * the same results, fmaf being correctly rounded either way) and for any other (-DXLA_NO_CLONES:
 * the latter only, to test it). NaNs do not depend on which: where the compiler may reorder the
 * operands of an op on two NaNs, the NaN is chosen explicitly (mul_np, fma_np, logistic32).
 *
 * Branch-free, so that GCC vectorises the loops (O3 on them: -O2's cost model does not): every
 * choice is a select with both sides computed (`c ? a : b` of plain values, or `&`/`|` of
 * comparisons), int conversions only of values in range. The selects give the same bits as the
 * branches did: a side not chosen has no effect (no traps; flags are not looked at). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LOOP __attribute__((optimize("O3")))
#else
#define LOOP
#endif
#if BCE_CLONES && !defined(XLA_NO_CLONES)
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default"))) LOOP
#define INLINE static inline __attribute__((always_inline)) /* into each clone */
#else
#define INLINE static inline
#define CLONES LOOP
#endif

/* isnan and isinf as selects take them (no calls, no branches). */
INLINE int isnan32(float a) { return a != a; }
INLINE int isinf32(float a) { return fabsf(a) == INFINITY; }

/* flush32 on bits: a subnormal (or zero) to the zero of its sign by masking all but the sign,
 * which is flush32's a * 0 there; other values (NaNs too) kept. No branch for GCC to thread the
 * code after it through. */
INLINE float z32(float a) {
    uint32_t u = f2u(a);
    uint32_t keep = -(uint32_t)((u & 0x7FFFFFFFu) >= 0x00800000u); /* |a| >= TINY32, or NaN */
    return u2f(u & (keep | 0x80000000u));
}
INLINE float fmaz(float a, float b, float c) { return z32(fmaf(a, b, c)); }

/* floorf for exp's n (finite and small, or NaN), without a call: truncated, then one down below
 * zero; the sign of a zero kept; a NaN itself (converting 0 in its place). */
INLINE float floor32(float v) {
    float t = (float)(int32_t)sel(isnan32(v), 0.0f, v);
    float f = copysignf(t - sel(t > v, 1.0f, 0.0f), v); /* t - 0 is t, -0 too */
    return sel(isnan32(v), v, f);
}

/* _exp_parts: exp(x) = *p * *scale; scale = 2**n from exponent bits (0.0 for n = -127). */
INLINE void exp_parts(float x, float *p, float *scale) {
    x = sel(x < -87.8f, -87.8f, x);
    x = sel(x > 88.8f, 88.8f, x);
    float n = floor32(fmaz(x, H(0x3FB8AA3B), 0.5f)); /* log2(e) */
    n = sel(n < -127.0f, -127.0f, n);
    n = sel(n > 127.0f, 127.0f, n);
    float r = fmaz(n, -H(0x3F318000), x); /* x - n ln 2, ln 2 in two parts */
    r = fmaz(n, H(0x395E8083), r);
    /* The flushes of y's first five steps and of y + 1 do nothing (|r| < 0.35 or NaN: each step
     * is within a third of its constant, >= 1.3e-3; y + 1 >= 0.5), so they are left out. */
    float y = H(0x39506967);
    y = fmaf(y, r, H(0x3AB743CE));
    y = fmaf(y, r, H(0x3C088908));
    y = fmaf(y, r, H(0x3D2AA9C1));
    y = fmaf(y, r, H(0x3E2AAAAA));
    y = fmaf(y, r, 0.5f);
    y = fmaz(y, z32(r * r), r);
    *p = y + 1.0f;
    int32_t k = (int32_t)sel(isnan32(n), 0.0f, n);
    *scale = u2f((uint32_t)(k + 127) << 23);
}

/* _exp32: XLA's float32 exp. */
INLINE float exp32(float x) {
    float p, scale;
    exp_parts(x, &p, &scale);
    return z32(p * scale);
}

/* _log_core: XLA's float32 log for x > 0 (garbage elsewhere, masked by log32). */
INLINE float log_core(float x) {
    x = sel(x > TINY32, x, TINY32);
    uint32_t bits = f2u(x);
    float e = (float)((int32_t)(bits >> 23) - 127) + 1.0f;
    float m = u2f((bits & 0x807FFFFFu) | 0x3F000000u); /* mantissa in [0.5, 1) */
    int small = m < H(0x3F3504F3);                     /* sqrt(1/2) */
    /* Every value below is finite and never subnormal (zero or >= 2**-80 in magnitude: m - 1 and
     * xm are multiples of 2**-24 in [-0.5, 0.42], e an integer, the polynomial's partial sums
     * near their constants), so the model's flushes do nothing and only the last is kept. */
    float xm = (m - 1.0f) + sel(small, m, 0.0f);
    e = e - sel(small, 1.0f, 0.0f);
    float x2 = xm * xm, x3 = x2 * xm;
    float y = fmaf(fmaf(xm, H(0x3D9021BB), H(0xBDEBD1B8)), xm, H(0x3DEF251A));
    float y1 = fmaf(fmaf(xm, H(0xBDFE5D4F), H(0x3E11E9BF)), xm, H(0xBE2AAE50));
    float y2 = fmaf(fmaf(xm, H(0x3E4CCEAC), H(0xBE7FFFFC)), xm, H(0x3EAAAAAA));
    y = fmaf(y, x3, y1);
    y = fmaf(y, x3, y2);
    y = fmaf(y, x3, e * H(0xB95E8083));
    float u = fmaf(-0.5f, x2, xm);
    return fmaz(e, H(0x3F318000), u + y);
}

/* _log32: log_core, NaN below 0 (and for NaN), -inf at 0, inf at inf. */
INLINE float log32(float x) {
    float r = log_core(x);
    r = sel(x > 0.0f, r, NAN32);
    r = sel(x == 0.0f, -INFINITY, r);
    return sel(x == INFINITY, INFINITY, r);
}

/* _log1p_small: x - x**2/2 + x**3 * P(x) / Q(x), for |x| < sqrt(2) - 1. */
INLINE float log1p_small(float x) {
    float x2 = z32(x * x);
    float z = z32(x * 0.0f);
    float q = z32(z + H(0x3F800000)), pp = z32(z + H(0x383DE04B)); /* Q[0], P[0] */
    q = fmaz(q, x, H(0x417101AD)); /* Q[1..6], unrolled */
    q = fmaz(q, x, H(0x42A6185B));
    q = fmaz(q, x, H(0x435DC32D));
    q = fmaz(q, x, H(0x439A8CA3));
    q = fmaz(q, x, H(0x43586D8A));
    q = fmaz(q, x, H(0x42707982));
    pp = fmaz(pp, x, H(0x3EFF40C5)); /* P[1..6] */
    pp = fmaz(pp, x, H(0x40D284FA));
    pp = fmaz(pp, x, H(0x41EF4B9C));
    pp = fmaz(pp, x, H(0x4273CC76));
    pp = fmaz(pp, x, H(0x426473AD));
    pp = fmaz(pp, x, H(0x41A05101));
    float t = z32(z32(x * x2) * z32(pp / q));
    t = fmaz(x2, -0.5f, t);
    return z32(x + t);
}

/* _log1p32: log1p_small near 0, log(1 + x) elsewhere (NaN too); both computed, one chosen. */
INLINE float log1p32(float x) {
    float s = log1p_small(x), l = log32(z32(x + 1.0f));
    return sel(fabsf(x) < H(0x3ED413CD), s, l);
}

/* _softplus32: max(a, 0) + t, t = log1p(exp(-|a|)) (the same for a and -a), a itself where a
 * is NaN. */
INLINE float softplus_tail(float a) { return log1p32(exp32(-fabsf(a))); }
INLINE float softplus_of(float a, float t) {
    float s = z32(sel(a > 0.0f, a, 0.0f) + t);
    return sel(isnan32(a), a, s);
}
INLINE float softplus32(float a) { return softplus_of(a, softplus_tail(a)); }

/* _logistic32: 1 / fma(p, 2**n, 1) with exp(-x) = p * 2**n, on x after DAZ; a NaN's -x made
 * explicit (the compiler may fold the negation into vfnmadd, which keeps the NaN's sign). */
INLINE float logistic32(float x) {
    float p, scale;
    exp_parts(-z32(x), &p, &scale);
    float r = z32(1.0f / fmaz(p, scale, 1.0f));
    return sel(isnan32(x), quiet(u2f(f2u(x) ^ 0x80000000u)), r);
}

/* `_z(a * b)` where both may be NaN: numpy keeps the first's (the compiler may commute `*`). */
INLINE float mul_np(float a, float b) {
    float r = z32(a * b);
    return sel(isnan32(a), quiet(a), r);
}

/* `fma(a, b, c)` where several may be NaN: numpy's model computes a*b then + c, so the first NaN
 * of a, b, then an invalid product's default NaN, then c; x86's FMA orders them otherwise. */
INLINE float fma_np(float a, float b, float c) {
    float r = fmaz(a, b, c);
    r = sel(isnan32(c), quiet(c), r);
    r = sel((isinf32(a) & (b == 0.0f)) | ((a == 0.0f) & isinf32(b)), u2f(0xFFC00000u), r);
    r = sel(isnan32(b), quiet(b), r);
    return sel(isnan32(a), quiet(a), r);
}

/* _optax_bce32: fma(y, softplus(-x), softplus(x) * (1 - y)), y after DAZ. */
INLINE float optax_bce32(float y, float sp_neg, float sp_pos) {
    float b = z32(y);
    return fma_np(b, sp_neg, mul_np(sp_pos, z32(1.0f - b)));
}

/* The JVP of softplus at t: exp(r(t) - r(softplus(t))), r mapping +inf to 0. */
INLINE float slope32(float t, float tail) {
    float sp = softplus_of(t, tail);
    return exp32(z32(sel(t == INFINITY, 0.0f, t) - sel(sp == INFINITY, 0.0f, sp)));
}

/* _optax_bce_grad32: (1 - y) * slope(x) - y * slope(-x), the first product fused; x, y after DAZ. */
INLINE float optax_bce_grad32(float x, float y) {
    float a = z32(x), b = z32(y), t = softplus_tail(a);
    return fma_np(z32(1.0f - b), slope32(a, t), -mul_np(b, slope32(-a, t)));
}

MAP_KERNEL(CLONES, k_exp32, exp32)
MAP_KERNEL(CLONES, k_log32, log32)
MAP_KERNEL(CLONES, k_log1p32, log1p32)
MAP_KERNEL(CLONES, k_log1p_small, log1p_small)
MAP_KERNEL(CLONES, k_softplus32, softplus32)
MAP_KERNEL(CLONES, k_logistic32, logistic32)

CLONES static void k_exp_parts(const float *const *in, float *const *out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) exp_parts(in[0][i], &out[0][i], &out[1][i]);
}

/* _optax_softplus32: softplus(-a) and softplus(a) of a = x after DAZ. */
CLONES static void k_optax_softplus32(const float *const *in, float *const *out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        float a = z32(in[0][i]), t = softplus_tail(a);
        out[0][i] = softplus_of(-a, t);
        out[1][i] = softplus_of(a, t);
    }
}

CLONES static void k_optax_bce32(const float *const *in, float *const *out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) out[0][i] = optax_bce32(in[0][i], in[1][i], in[2][i]);
}

CLONES static void k_optax_bce_grad32(const float *const *in, float *const *out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) out[0][i] = optax_bce_grad32(in[0][i], in[1][i]);
}

const struct kernel xla_kernels[] = {
    {"xla_exp_parts", 1, 2, k_exp_parts},
    {"xla_exp32", 1, 1, k_exp32},
    {"xla_log32", 1, 1, k_log32},
    {"xla_log1p32", 1, 1, k_log1p32},
    {"xla_log1p_small", 1, 1, k_log1p_small},
    {"xla_softplus32", 1, 1, k_softplus32},
    {"xla_logistic32", 1, 1, k_logistic32},
    {"xla_optax_softplus32", 1, 2, k_optax_softplus32},
    {"xla_optax_bce32", 3, 1, k_optax_bce32},
    {"xla_optax_bce_grad32", 2, 1, k_optax_bce_grad32},
    {NULL, 0, 0, NULL},
};
