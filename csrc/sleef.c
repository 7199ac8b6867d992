/* `bce_audit/sleef.py`'s float32 cores in C, bit for bit (see kernels.h): SLEEF's expf, logf
 * and log1pf u10 (AVX512 path, FMA build) and torch's sigmoid and log_sigmoid on them. torch does
 * not flush: plain float ops, fmaf where SLEEF has `vmla`. */
#include "kernels.h"

/* Inlined everywhere, into each clone of the loops (below) with its instruction set. */
#define INLINE static inline __attribute__((always_inline))
#define NAN32 u2f(0x7FC00000u) /* numpy's np.nan as float32 (the models' fixed-up NaNs) */

/* Constants as numpy makes them: float64 values rounded to float32. */
static const float R_LN2 = 1.442695040888963407359924681001892137426645954152985934135449406931;
static const float L2U = 0.693145751953125, L2L = 1.428606765330187045e-06;
static const float LN2_HI = 0.69314718246459960938, LN2_LO = -1.904654323148236017e-09;
static const float LOG1P_BOUND = 0x1.2ced32p+126f;
static const float C43 = 1.0 / 0.75;
static const float EXP_POLY[6] = {
    0.000198527617612853646278381, 0.00139304355252534151077271, 0.00833336077630519866943359,
    0.0416664853692054748535156, 0.166666671633720397949219, 0.5};
static const float LOG_POLY[3] = {0.3027294874, 0.3996108174, 0.6666694880};

/* _rint: _mm512_cvtps_epi32, to nearest even; NaN and out of range give INT_MIN. */
INLINE int32_t rint32(float a) {
    float r = rintf(a);
    return isfinite(r) && fabsf(r) < 0x1p31f ? (int32_t)r : INT32_MIN;
}

/* _pow2i: the float whose bits are (q + 127) << 23, wrapping. */
INLINE float pow2i(int32_t q) { return u2f(((uint32_t)q + 0x7Fu) << 23); }

/* _ldexp2: d * 2**(e >> 1) * 2**(e - (e >> 1)), two roundings. */
INLINE float ldexp2(float d, int32_t e) {
    int32_t h = e >> 1;
    return (d * pow2i(h)) * pow2i(e - h);
}

/* _ldexp3: q added to d's exponent field. */
INLINE float ldexp3(float d, uint32_t q) { return u2f(f2u(d) + (q << 23)); }

/* _getexp: floor(log2|a|) as a float (frexp's exponent less one); -inf for 0, +inf for inf,
 * NaN for NaN. */
INLINE float getexp(float a) {
    uint32_t u = f2u(a) & 0x7FFFFFFFu;
    if (u >= 0x7F800000u) return u == 0x7F800000u ? INFINITY : NAN32;
    if (u == 0) return -INFINITY;
    if (u < 0x00800000u) return (float)(-118 - __builtin_clz(u)); /* subnormal: u * 2**-149 */
    return (float)((int)(u >> 23) - 127);
}

/* _getmant: |a|'s significand in [0.75, 1.5) (frexp's fraction doubled, halved from 1.5); NaN
 * for a negative a. */
INLINE float getmant(float a) {
    uint32_t u = f2u(a) & 0x7FFFFFFFu;
    float sig;
    if (u == 0 || u >= 0x7F800000u) { /* 0, inf, NaN: frexp's own */
        int k;
        sig = frexpf(fabsf(a), &k) * 2.0f;
    } else {
        if (u < 0x00800000u) u <<= __builtin_clz(u) - 8; /* subnormal: normalised */
        sig = u2f((u & 0x007FFFFFu) | 0x3F800000u);
    }
    if (sig >= 1.5f) sig = sig * 0.5f;
    return signbit(a) && a != 0 ? NAN32 : sig;
}

/* The double-float helpers, a pair (h, l) returned as h with l through *l. */
INLINE float dfmul_f(float xh, float xl, float y, float *l) { /* _dfmul_f */
    float s = xh * y;
    *l = fmaf(xl, y, fmaf(xh, y, -s));
    return s;
}

INLINE float dfdiv(float nh, float nl, float dh, float dl, float *l) { /* _dfdiv */
    float t = 1.0f / dh;
    float s = nh * t;
    float u = fmaf(t, nh, -s);
    float v = fmaf(-dl, t, fmaf(-dh, t, 1.0f));
    *l = fmaf(s, v, fmaf(nl, t, u));
    return s;
}

INLINE float dfadd_ff(float x, float y, float *l) { /* _dfadd_ff */
    float s = x + y;
    *l = (x - s) + y;
    return s;
}

INLINE float dfadd2_ff(float x, float y, float *l) { /* _dfadd2_ff */
    float s = x + y;
    float v = s - x;
    *l = (x - (s - v)) + (y - v);
    return s;
}

INLINE float dfadd_f2f2(float xh, float xl, float yh, float yl, float *l) { /* _dfadd_f2f2 */
    float s = xh + yh;
    *l = (((xh - s) + yh) + xl) + yl;
    return s;
}

INLINE float dfadd_f2f(float xh, float xl, float y, float *l) { /* _dfadd_f2f */
    float s = xh + y;
    *l = ((xh - s) + y) + xl;
    return s;
}

/* _log_tail: e ln 2 + 2 atanh(x), x a double-float. */
INLINE float log_tail(float e, float xh, float xl) {
    float x2 = xh * xh;
    float t = fmaf(fmaf(LOG_POLY[0], x2, LOG_POLY[1]), x2, LOG_POLY[2]);
    float sl, sh = dfmul_f(LN2_HI, LN2_LO, e, &sl);
    sh = dfadd_f2f2(sh, sl, xh * 2.0f, xl * 2.0f, &sl);
    sh = dfadd_f2f(sh, sl, (x2 * xh) * t, &sl);
    return sh + sl;
}

/* exp: xexpf. */
INLINE float xexpf(float d) {
    int32_t q = rint32(d * R_LN2);
    float qf = (float)q;
    float s = fmaf(qf, -L2U, d);
    s = fmaf(qf, -L2L, s);
    float u = EXP_POLY[0];
    for (int i = 1; i < 6; i++) u = fmaf(u, s, EXP_POLY[i]);
    u = 1.0f + fmaf(s * s, u, s);
    u = ldexp2(u, q);
    if (d < -104) u = 0.0f;
    if (d > 100) u = INFINITY;
    return u;
}

/* log: xlogf_u1, exponent and mantissa by getexp/getmant, specials by vfixupimm. */
INLINE float xlogf_u1(float d) {
    /* a NaN: np.nan, as the model fixes it up (its sums meet two different NaNs) */
    if (isnan(d)) return NAN32;
    float e = getexp(d * C43);
    if (e == INFINITY) e = 128.0f;
    float m = getmant(d);
    float nl, nh = dfadd2_ff(-1.0f, m, &nl);
    float dl, dh = dfadd2_ff(1.0f, m, &dl);
    float xl, xh = dfdiv(nh, nl, dh, dl, &xl);
    float r = log_tail(e, xh, xl);
    if (d == 0) r = -INFINITY;
    if (d < 0) r = NAN32;
    if (d == INFINITY) r = INFINITY;
    return r;
}

/* log1p: xlog1pf; past 1e38 (and at NaN) the log. */
INLINE float xlog1pf(float d) {
    float r;
    if (!(d <= LOG1P_BOUND)) {
        r = xlogf_u1(d);
    } else {
        float dp1 = d + 1.0f;
        float e = getexp(dp1 * C43);
        if (e == INFINITY) e = 128.0f;
        float t = ldexp3(1.0f, 0u - (uint32_t)rint32(e));
        float m = fmaf(d, t, t - 1.0f);
        float dl, dh = dfadd_ff(2.0f, m, &dl);
        float xl, xh = dfdiv(m, 0.0f, dh, dl, &xl);
        r = log_tail(e, xh, xl);
    }
    if (d < -1) r = NAN32;
    if (d == -1) r = -INFINITY;
    if (d == 0 && signbit(d)) r = -0.0f;
    return r;
}

/* sigmoid: 1 / (exp(0 - x) + 1). */
INLINE float sigmoid(float x) { return 1.0f / (xexpf(0.0f - x) + 1.0f); }

/* log_sigmoid: min(x, 0) - log1p(exp(-|x|)). */
INLINE float log_sigmoid(float x) {
    float lo = isnan(x) || x < 0 ? x : 0.0f; /* np.minimum */
    return lo - xlog1pf(xexpf(-fabsf(x)));
}

/* The loops, cloned for CPUs with FMA (fmaf then one instruction, not a libm call): the same
 * bits, fmaf being correctly rounded either way (-DCLONES= builds the one default loop). */
#if !defined(CLONES) && defined(__x86_64__) && defined(__ELF__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define CLONES __attribute__((target_clones("fma", "default")))
#endif
#endif
#ifndef CLONES
#define CLONES
#endif

#define UNARY(name, fn)                                                                 \
    CLONES static void name(const float *const *in, float *const *out, ptrdiff_t n) { \
        const float *x = in[0];                                                         \
        float *y = out[0];                                                              \
        for (ptrdiff_t i = 0; i < n; i++) y[i] = fn(x[i]);                              \
    }
UNARY(sleef_exp, xexpf)
UNARY(sleef_log, xlogf_u1)
UNARY(sleef_log1p, xlog1pf)
UNARY(sleef_sigmoid, sigmoid)
UNARY(sleef_log_sigmoid, log_sigmoid)
#undef UNARY

const struct kernel sleef_kernels[] = {
    {"sleef_exp", 1, 1, sleef_exp},
    {"sleef_log", 1, 1, sleef_log},
    {"sleef_log1p", 1, 1, sleef_log1p},
    {"sleef_sigmoid", 1, 1, sleef_sigmoid},
    {"sleef_log_sigmoid", 1, 1, sleef_log_sigmoid},
    {NULL, 0, 0, NULL},
};
