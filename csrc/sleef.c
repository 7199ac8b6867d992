/* `bce_audit/sleef.py`'s float32 cores in C, bit for bit (see kernels.h): SLEEF's expf, logf
 * and log1pf u10 (AVX512 path, FMA build) and torch's sigmoid and log_sigmoid on them. torch does
 * not flush: plain float ops, fmaf where SLEEF has `vmla`. */
#include "kernels.h"

/* Inlined everywhere, into each clone of the loops (below) with its instruction set. Branch-free
 * (selects on values computed either way, integer bit logic) so that the loops vectorise. */
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
    int ok = fabsf(r) < 0x1p31f; /* false for inf and NaN */
    int32_t q = (int32_t)(ok ? r : 0.0f);
    return ok ? q : INT32_MIN;
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
    int32_t u = (int32_t)(f2u(a) & 0x7FFFFFFFu);
    /* a subnormal is u * 2**-149, and u (< 2**23) converts exactly: its exponent is u's */
    int32_t s = (int32_t)f2u((float)u);
    int32_t e = u < 0x00800000 ? (s >> 23) - 127 - 149 : (u >> 23) - 127;
    float r = (float)e;
    r = u == 0 ? -INFINITY : r;
    r = u == 0x7F800000 ? INFINITY : r;
    return u > 0x7F800000 ? NAN32 : r;
}

/* _getmant: |a|'s significand in [0.75, 1.5) (frexp's fraction doubled, halved from 1.5); NaN
 * for a negative a. */
INLINE float getmant(float a) {
    int32_t u = (int32_t)(f2u(a) & 0x7FFFFFFFu);
    /* a subnormal normalised: u (< 2**23) converted exactly has u's significand */
    uint32_t n = u < 0x00800000 ? f2u((float)u) : (uint32_t)u;
    float sig = u2f((n & 0x007FFFFFu) | 0x3F800000u);
    /* 0, inf, NaN: frexp's own fraction (x + x, a NaN quietened), doubled */
    float fa = fabsf(a);
    float special = (fa + fa) * 2.0f;
    sig = (u == 0) | (u >= 0x7F800000) ? special : sig;
    sig = sig >= 1.5f ? sig * 0.5f : sig;
    return ((int32_t)f2u(a) < 0) & (a != 0) ? NAN32 : sig;
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
    float u = fmaf(EXP_POLY[0], s, EXP_POLY[1]);
    u = fmaf(u, s, EXP_POLY[2]);
    u = fmaf(u, s, EXP_POLY[3]);
    u = fmaf(u, s, EXP_POLY[4]);
    u = fmaf(u, s, EXP_POLY[5]);
    u = 1.0f + fmaf(s * s, u, s);
    u = ldexp2(u, q);
    u = d < -104 ? 0.0f : u;
    return d > 100 ? INFINITY : u;
}

/* log: xlogf_u1, exponent and mantissa by getexp/getmant, specials by vfixupimm. */
INLINE float xlogf_u1(float d) {
    float e = getexp(d * C43);
    e = e == INFINITY ? 128.0f : e;
    float m = getmant(d);
    float nl, nh = dfadd2_ff(-1.0f, m, &nl);
    float dl, dh = dfadd2_ff(1.0f, m, &dl);
    float xl, xh = dfdiv(nh, nl, dh, dl, &xl);
    float r = log_tail(e, xh, xl);
    r = d == 0 ? -INFINITY : r;
    r = d < 0 ? NAN32 : r;
    r = d == INFINITY ? INFINITY : r;
    /* a NaN: np.nan, as the model fixes it up (its sums meet two different NaNs) */
    return isnan(d) ? NAN32 : r;
}

/* log1p: xlog1pf; past 1e38 (and at NaN) the log. Both share the log's end (`log_tail`): the
 * log's exponent and quotient replace log1p's there. */
INLINE float xlog1pf(float d) {
    int past = !(d <= LOG1P_BOUND);
    float e = getexp((past ? d : d + 1.0f) * C43);
    e = e == INFINITY ? 128.0f : e;
    float t = ldexp3(1.0f, 0u - (uint32_t)rint32(e));
    float nh = fmaf(d, t, t - 1.0f), nl = 0.0f;
    float dl, dh = dfadd_ff(2.0f, nh, &dl);
    /* xlogf_u1's quotient, where past */
    float m = getmant(d);
    float nl2, nh2 = dfadd2_ff(-1.0f, m, &nl2);
    float dl2, dh2 = dfadd2_ff(1.0f, m, &dl2);
    nh = past ? nh2 : nh;
    nl = past ? nl2 : nl;
    dh = past ? dh2 : dh;
    dl = past ? dl2 : dl;
    float xl, xh = dfdiv(nh, nl, dh, dl, &xl);
    float r = log_tail(e, xh, xl);
    r = d == INFINITY ? INFINITY : r; /* xlogf_u1's fix-ups that apply past 1e38 */
    r = isnan(d) ? NAN32 : r;
    r = d < -1 ? NAN32 : r;
    r = d == -1 ? -INFINITY : r;
    return f2u(d) == 0x80000000u ? -0.0f : r;
}

/* xlog1pf for a d in [0, 2) or NaN (log_sigmoid's): (d + 1) / 0.75 is then a positive normal
 * float, its getexp its exponent field, and no fix-up but the NaN's applies. */
INLINE float xlog1pf_unit(float d) {
    int32_t k = (int32_t)(f2u((d + 1.0f) * C43) >> 23) - 127;
    float e = (float)k;
    float t = ldexp3(1.0f, 0u - (uint32_t)k);
    float m = fmaf(d, t, t - 1.0f);
    float dl, dh = dfadd_ff(2.0f, m, &dl);
    float xl, xh = dfdiv(m, 0.0f, dh, dl, &xl);
    float r = log_tail(e, xh, xl);
    return isnan(d) ? NAN32 : r;
}

/* sigmoid: 1 / (exp(0 - x) + 1). */
INLINE float sigmoid(float x) { return 1.0f / (xexpf(0.0f - x) + 1.0f); }

/* log_sigmoid: min(x, 0) - log1p(exp(-|x|)). exp of a non-positive float is in [0, 2) (0 under
 * -104, else a polynomial in (0.7, 1.5) scaled by 2**q, q <= 0) or NaN: `xlog1pf_unit`. */
INLINE float log_sigmoid(float x) {
    float lo = isnan(x) | (x < 0) ? x : 0.0f; /* np.minimum */
    return lo - xlog1pf_unit(xexpf(-fabsf(x)));
}

/* The loops, cloned for x86-64-v4 (AVX512) and x86-64-v3 (AVX2) CPUs, both with FMA: vectorised,
 * fmaf one instruction, not a libm call. The same bits, fmaf being correctly rounded either way
 * (-DCLONES= builds the one default loop, scalar: fmaf a libm call). Optimised builds vectorise
 * at O3 (-O2's cost model leaves the loops scalar) without trapping math: GCC then evaluates both
 * sides of a select (it sinks float operations into branches otherwise, and does not if-convert
 * operations that could trap); no value changes, -ffp-contract=off and -fno-fast-math still hold.
 * -O0 builds keep the loops unoptimised. */
#if !defined(CLONES) && defined(__x86_64__) && defined(__ELF__) && defined(__GLIBC__) && \
    defined(__has_attribute) && !defined(BCE_NO_CLONES)
#if __has_attribute(target_clones) && defined(__clang__) /* its own names: FMA only */
#define CLONES __attribute__((target_clones("fma", "default")))
#elif BCE_CLONES
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#endif
#ifndef CLONES
#define CLONES
#endif
#if defined(__OPTIMIZE__) && defined(__GNUC__) && !defined(__clang__)
#define VECTOR __attribute__((optimize("O3", "no-trapping-math")))
#else
#define VECTOR
#endif

MAP_KERNEL(CLONES VECTOR, sleef_exp, xexpf)
MAP_KERNEL(CLONES VECTOR, sleef_log, xlogf_u1)
MAP_KERNEL(CLONES VECTOR, sleef_log1p, xlog1pf)
MAP_KERNEL(CLONES VECTOR, sleef_sigmoid, sigmoid)
MAP_KERNEL(CLONES VECTOR, sleef_log_sigmoid, log_sigmoid)

const struct kernel sleef_kernels[] = {
    {"sleef_exp", 1, 1, sleef_exp},
    {"sleef_log", 1, 1, sleef_log},
    {"sleef_log1p", 1, 1, sleef_log1p},
    {"sleef_sigmoid", 1, 1, sleef_sigmoid},
    {"sleef_log_sigmoid", 1, 1, sleef_log_sigmoid},
    {NULL, 0, 0, NULL},
};
