/* `bce_audit/xla.py`'s float32 cores in C, bit for bit (see kernels.h): XLA's exp, log and
 * log1p (Cephes polynomials with FMAs, under FTZ), and the float32 work of logistic, softplus
 * and optax's BCE built on them. `fma` is fma32(a, b, c, 1) and `_z(a op b)` flush32(a op b). */
#include "kernels.h"

#define H(bits) u2f(bits##u) /* a float32 constant from its bit pattern, as xla.py's _h */
#define NAN32 u2f(0x7FC00000u) /* numpy's np.nan as float32 */

/* Each kernel twice, chosen at load time: for CPUs with FMA (fmaf one instruction, not a call:
 * the same results, fmaf being correctly rounded either way) and for any other (-DXLA_NO_CLONES:
 * the latter only, to test it). NaNs do not depend on which: where the compiler may reorder the
 * operands of an op on two NaNs, the NaN is chosen explicitly (mul_np, fma_np, logistic32). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(XLA_NO_CLONES)
#define CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define INLINE static inline __attribute__((always_inline)) /* into each clone */
#else
#define INLINE static inline
#define CLONES
#endif

/* A NaN as numpy's float32 ops return it: quieted, payload kept. */
INLINE float quiet(float a) { return u2f(f2u(a) | 0x00400000u); }

/* floorf for exp's n (finite and small, or NaN), without a call: truncated, then one down below
 * zero; the sign of a zero kept. */
INLINE float floor32(float v) {
    if (isnan(v)) return v;
    float t = (float)(int32_t)v;
    return copysignf(t > v ? t - 1.0f : t, v);
}

/* _exp_parts: exp(x) = *p * *scale; scale = 2**n from exponent bits (0.0 for n = -127). */
INLINE void exp_parts(float x, float *p, float *scale) {
    if (x < -87.8f) x = -87.8f;
    if (x > 88.8f) x = 88.8f;
    float n = floor32(fma32(x, H(0x3FB8AA3B), 0.5f, 1)); /* log2(e) */
    if (n < -127.0f) n = -127.0f;
    if (n > 127.0f) n = 127.0f;
    float r = fma32(n, -H(0x3F318000), x, 1); /* x - n ln 2, ln 2 in two parts */
    r = fma32(n, H(0x395E8083), r, 1);
    float y = H(0x39506967);
    y = fma32(y, r, H(0x3AB743CE), 1);
    y = fma32(y, r, H(0x3C088908), 1);
    y = fma32(y, r, H(0x3D2AA9C1), 1);
    y = fma32(y, r, H(0x3E2AAAAA), 1);
    y = fma32(y, r, 0.5f, 1);
    y = fma32(y, flush32(r * r), r, 1);
    *p = flush32(y + 1.0f);
    int32_t k = isnan(n) ? 0 : (int32_t)n;
    *scale = u2f((uint32_t)(k + 127) << 23);
}

/* _exp32: XLA's float32 exp. */
INLINE float exp32(float x) {
    float p, scale;
    exp_parts(x, &p, &scale);
    return flush32(p * scale);
}

/* _log_core: XLA's float32 log for x > 0 (garbage elsewhere, masked by log32). */
INLINE float log_core(float x) {
    if (!(x > TINY32)) x = TINY32;
    uint32_t bits = f2u(x);
    float e = (float)((int32_t)(bits >> 23) - 127) + 1.0f;
    float m = u2f((bits & 0x807FFFFFu) | 0x3F000000u); /* mantissa in [0.5, 1) */
    int small = m < H(0x3F3504F3);                     /* sqrt(1/2) */
    float xm = flush32(flush32(m - 1.0f) + (small ? m : 0.0f));
    e = flush32(e - (small ? 1.0f : 0.0f));
    float x2 = flush32(xm * xm), x3 = flush32(x2 * xm);
    float y = fma32(fma32(xm, H(0x3D9021BB), H(0xBDEBD1B8), 1), xm, H(0x3DEF251A), 1);
    float y1 = fma32(fma32(xm, H(0xBDFE5D4F), H(0x3E11E9BF), 1), xm, H(0xBE2AAE50), 1);
    float y2 = fma32(fma32(xm, H(0x3E4CCEAC), H(0xBE7FFFFC), 1), xm, H(0x3EAAAAAA), 1);
    y = fma32(y, x3, y1, 1);
    y = fma32(y, x3, y2, 1);
    y = fma32(y, x3, flush32(e * H(0xB95E8083)), 1);
    float u = fma32(-0.5f, x2, xm, 1);
    return fma32(e, H(0x3F318000), flush32(u + y), 1);
}

/* _log32: log_core, NaN below 0 (and for NaN), -inf at 0, inf at inf. */
INLINE float log32(float x) {
    if (x == INFINITY) return INFINITY;
    if (x == 0.0f) return -INFINITY;
    return x > 0.0f ? log_core(x) : NAN32;
}

/* _log1p_small: x - x**2/2 + x**3 * P(x) / Q(x), for |x| < sqrt(2) - 1. */
INLINE float log1p_small(float x) {
    static const uint32_t P[7] = {0x383DE04B, 0x3EFF40C5, 0x40D284FA, 0x41EF4B9C,
                                  0x4273CC76, 0x426473AD, 0x41A05101};
    static const uint32_t Q[7] = {0x3F800000, 0x417101AD, 0x42A6185B, 0x435DC32D,
                                  0x439A8CA3, 0x43586D8A, 0x42707982};
    float x2 = flush32(x * x);
    float z = flush32(x * 0.0f);
    float q = flush32(z + u2f(Q[0])), pp = flush32(z + u2f(P[0]));
    for (int i = 1; i < 7; i++) q = fma32(q, x, u2f(Q[i]), 1);
    for (int i = 1; i < 7; i++) pp = fma32(pp, x, u2f(P[i]), 1);
    float t = flush32(flush32(x * x2) * flush32(pp / q));
    t = fma32(x2, -0.5f, t, 1);
    return flush32(x + t);
}

/* _log1p32: log1p_small near 0, log(1 + x) elsewhere (NaN too). */
INLINE float log1p32(float x) {
    return fabsf(x) < H(0x3ED413CD) ? log1p_small(x) : log32(flush32(x + 1.0f));
}

/* _softplus32: max(a, 0) + t, t = log1p(exp(-|a|)) (the same for a and -a), a itself where a
 * is NaN. */
INLINE float softplus_tail(float a) { return log1p32(exp32(-fabsf(a))); }
INLINE float softplus_of(float a, float t) { return isnan(a) ? a : flush32((a > 0.0f ? a : 0.0f) + t); }
INLINE float softplus32(float a) { return softplus_of(a, softplus_tail(a)); }

/* _logistic32: 1 / fma(p, 2**n, 1) with exp(-x) = p * 2**n, on x after DAZ; a NaN's -x made
 * explicit (the compiler may fold the negation into vfnmadd, which keeps the NaN's sign). */
INLINE float logistic32(float x) {
    if (isnan(x)) return quiet(u2f(f2u(x) ^ 0x80000000u));
    float p, scale;
    exp_parts(-flush32(x), &p, &scale);
    return flush32(1.0f / fma32(p, scale, 1.0f, 1));
}

/* `_z(a * b)` where both may be NaN: numpy keeps the first's (the compiler may commute `*`). */
INLINE float mul_np(float a, float b) { return isnan(a) ? quiet(a) : flush32(a * b); }

/* `fma(a, b, c)` where several may be NaN: numpy's model computes a*b then + c, so the first NaN
 * of a, b, then an invalid product's default NaN, then c; x86's FMA orders them otherwise. */
INLINE float fma_np(float a, float b, float c) {
    if (isnan(a)) return quiet(a);
    if (isnan(b)) return quiet(b);
    if ((isinf(a) && b == 0.0f) || (a == 0.0f && isinf(b))) return u2f(0xFFC00000u);
    return isnan(c) ? quiet(c) : fma32(a, b, c, 1);
}

/* _optax_bce32: fma(y, softplus(-x), softplus(x) * (1 - y)), y after DAZ. */
INLINE float optax_bce32(float y, float sp_neg, float sp_pos) {
    float b = flush32(y);
    return fma_np(b, sp_neg, mul_np(sp_pos, flush32(1.0f - b)));
}

/* The JVP of softplus at t: exp(r(t) - r(softplus(t))), r mapping +inf to 0. */
INLINE float slope32(float t, float tail) {
    float sp = softplus_of(t, tail);
    return exp32(flush32((t == INFINITY ? 0.0f : t) - (sp == INFINITY ? 0.0f : sp)));
}

/* _optax_bce_grad32: (1 - y) * slope(x) - y * slope(-x), the first product fused; x, y after DAZ. */
INLINE float optax_bce_grad32(float x, float y) {
    float a = flush32(x), b = flush32(y), t = softplus_tail(a);
    return fma_np(flush32(1.0f - b), slope32(a, t), -mul_np(b, slope32(-a, t)));
}

#define MAP1(name, f)                                                                  \
    CLONES static void name(const float *const *in, float *const *out, ptrdiff_t n) { \
        const float *x = in[0];                                                        \
        float *y = out[0];                                                             \
        for (ptrdiff_t i = 0; i < n; i++) y[i] = f(x[i]);                              \
    }
MAP1(k_exp32, exp32)
MAP1(k_log32, log32)
MAP1(k_log1p32, log1p32)
MAP1(k_log1p_small, log1p_small)
MAP1(k_softplus32, softplus32)
MAP1(k_logistic32, logistic32)
#undef MAP1

CLONES static void k_exp_parts(const float *const *in, float *const *out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) exp_parts(in[0][i], &out[0][i], &out[1][i]);
}

/* _optax_softplus32: softplus(-a) and softplus(a) of a = x after DAZ. */
CLONES static void k_optax_softplus32(const float *const *in, float *const *out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        float a = flush32(in[0][i]), t = softplus_tail(a);
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
