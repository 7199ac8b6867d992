/* `bce_audit/eigen.py`'s float32 cores in C, bit for bit (see kernels.h).
 *
 * Each core is written once over `ftz`: 1, its operations are kernels.h's ftz_*; 0, plain
 * float32 ones, the same bits wherever no result is nonzero and at or below float32's smallest
 * normal. Each kernel runs the plain code on the inputs where that holds (`exact_*`, found by
 * running every one of the 2^32 inputs through the core with each result tested), FTZ elsewhere. */
#include "kernels.h"

#define INLINE static inline __attribute__((always_inline))

#define OP(name, op)                                                          \
    INLINE float name(float a, float b, int ftz) { return ftz ? ftz_##name(a, b) : a op b; }
OP(add, +)
OP(sub, -)
OP(mul, *)
OP(div, /)
#undef OP

/* Eigen's pmadd without FMA (`_madd`): a*b rounded, then + c rounded. */
INLINE float madd(float a, float b, float c, int ftz) { return add(mul(a, b, ftz), c, ftz); }

/* `_pmin`/`_pmax`: vminps(b, a)/vmaxps(b, a): b if b < a (b > a), else a (a NaN a stays). */
INLINE float pmin(float a, float b) { return b < a ? b : a; }
INLINE float pmax(float a, float b) { return b > a ? b : a; }

/* `_ldexp_fast`: biased exponent clamped to [0, 255]; a NaN exponent gives the factor 0. */
INLINE float ldexp_fast(float a, float m, int ftz) {
    float biased = pmin(pmax(add(m, 127.0f, ftz), 0.0f), 255.0f);
    uint32_t e = isnan(biased) ? 0 : (uint32_t)(int32_t)biased;
    return mul(a, u2f(e << 23), ftz);
}

/* `_ldexp_generic`: a * 2^b * 2^b * 2^b * 2^(e - 3b), e clamped to +-278 (NaN: INT32_MIN),
 * b = e >> 2; the exponent fields wrap as numpy's uint32 shifts do. */
INLINE float ldexp_generic(float a, float m, int ftz) {
    float clamped = pmin(pmax(m, -278.0f), 278.0f);
    int32_t e = isnan(clamped) ? INT32_MIN : (int32_t)clamped;
    int32_t b = e >> 2;
    float c = u2f((uint32_t)(b + 127) << 23);
    float c2 = u2f((uint32_t)(e - 3 * b + 127) << 23);
    return mul(mul(mul(mul(a, c, ftz), c, ftz), c, ftz), c2, ftz);
}

/* `_pexp_f32`: pexp_float. */
INLINE float pexp(float x0, int ftz) {
    if (x0 < -104.0f) return 0.0f;
    float x = pmin(x0, (float)88.723);
    float m = floorf(madd(x, (float)1.44269504088896341, 0.5f, ftz));
    float r = madd(m, -0.693359375f, x, ftz);
    r = madd(m, (float)2.12194440e-4, r, ftz);
    float r2 = mul(r, r, ftz);
    float p_even = madd(r2, 1.37449637986719608306884765625e-3f, 4.166965186595916748046875e-2f, ftz);
    float p_odd = madd(r2, 8.36894474923610687255859375e-3f, 0.16666518151760101318359375f, ftz);
    p_even = madd(r2, p_even, 0.49999988079071044921875f, ftz);
    float p_low = add(r, 1.0f, ftz);
    float y = madd(r, p_odd, p_even, ftz);
    y = madd(r2, y, p_low, ftz);
    return pmax(ldexp_generic(y, m, ftz), x0);
}

/* `_logistic_f32`: scalar_logistic_op<float>::packetOp. */
INLINE float logistic(float x0, int ftz) {
    if (x0 < -104.0f) return 0.0f;
    float x = mul(pmin(x0, (float)16.6355324), 0.5f, ftz);
    float m = floorf(madd(x, (float)1.44269504088896341, 0.5f, ftz));
    float r = madd(m, -0.693359375f, x, ftz);
    r = madd(m, (float)2.12194440e-4, r, ftz);
    float r2 = mul(r, r, ftz);
    float p_even = madd(r2, 4.1898667812347412109375e-2f, 0.49999141693115234375f, ftz);
    float p_odd = madd(r2, 8.33471305668354034423828125e-3f, 0.16666877269744873046875f, ftz);
    float p_low = add(r, 1.0f, ftz);
    float p = madd(r, p_odd, p_even, ftz);
    p = madd(r2, p, p_low, ftz);
    float e = ldexp_fast(p, m, ftz);
    e = mul(e, e, ftz);
    return div(e, add(1.0f, e, ftz), ftz);
}

/* `_plog_f32`: plog_impl_float, with `_frexp` (pfrexp_generic) inlined. */
INLINE float plog(float x0, int ftz) {
    if (x0 == 0.0f) return -INFINITY;
    if (!(x0 >= 0.0f)) return u2f(0xFFFFFFFFu); /* por with the all-ones mask */
    if (x0 == INFINITY) return INFINITY;
    /* frexp: mantissa in [0.5, 1), exponent (x0 is positive, finite, nonzero here) */
    int denormal = x0 < TINY32;
    float normalized = denormal ? mul(x0, 0x1p24f, ftz) : x0;
    float e = add((float)(f2u(normalized) >> 23), denormal ? -150.0f : -126.0f, ftz);
    float x = u2f((f2u(normalized) & 0x807FFFFFu) | 0x3F000000u);
    int mask = x < (float)0.707106781186547524;
    float tmp = mask ? x : 0.0f;
    x = sub(x, 1.0f, ftz);
    e = sub(e, mask ? 1.0f : 0.0f, ftz);
    x = add(x, tmp, ftz);
    float p = (float)0.18256296349849254;
    p = madd(p, x, (float)1.0000000190281063, ftz);
    p = madd(p, x, (float)1.0000000190281136, ftz);
    p = mul(x, p, ftz);
    float q = (float)0.049616247954120038;
    q = madd(q, x, (float)0.59923249590823520, ftz);
    q = madd(q, x, (float)1.4999999999999927, ftz);
    q = madd(q, x, 1.0f, ftz);
    return madd(e, (float)0.69314718055994530942, div(p, q, ftz), ftz);
}

/* `_generic_log1p`: Kahan's x * log(1+x) / ((1+x) - 1). Where x is NaN, its NaN (quiet) if
 * `nan_input_wins`, else log's 0xffffffff. */
INLINE float plog1p(float x, int nan_input_wins, int ftz) {
    float xp1 = add(x, 1.0f, ftz);
    float log1 = plog(xp1, ftz);
    if (xp1 == 1.0f || xp1 == log1) return x;
    if (nan_input_wins && isnan(x)) return quiet(x);
    if (isnan(log1)) return log1;
    return mul(x, div(log1, sub(xp1, 1.0f, ftz), ftz), ftz);
}

INLINE float plog1p_x_nan(float x, int ftz) { return plog1p(x, 1, ftz); }
INLINE float plog1p_log_nan(float x, int ftz) { return plog1p(x, 0, ftz); }

/* Where the plain code is exact: pexp and logistic meet the flush threshold only for x <= -64
 * (results near underflow) and 0 < |x| < 2^-58 (r * r); plog and plog1p never. Below -104 both
 * return 0 at their first line, so those inputs need no FTZ either (`slow_exp`). */
INLINE int exact_exp(float x) { return x > -64.0f && !(fabsf(x) < 0x1p-58f && x != 0.0f); }
INLINE int slow_exp(float x) { /* !exact_exp(x) && !(x < -104), without branches */
    return (!(x > -64.0f) & !(x < -104.0f)) | ((fabsf(x) < 0x1p-58f) & (x != 0.0f));
}

/* The plain (ftz 0) cores again, branch-free for the vectoriser: every early `return` a select
 * made last, both sides computed; the same bits as the cores above with ftz 0. Float -> int
 * conversions see no NaN (it is selected away first), so each is defined. Choices are kernels.h's
 * `sel`, which GCC's if-conversion takes where chains of float ?: defeat it. */

/* floorf without the call (which GCC vectorises only with -fno-trapping-math): truncated where
 * |v| < 2^23, one down if that went up, the sign of a zero kept; v itself elsewhere (NaN too). */
INLINE float floor_v(float v) {
    int small = fabsf(v) < 0x1p23f;
    float t = (float)(int32_t)sel(small, v, 0.0f);
    t = t - sel(t > v, 1.0f, 0.0f);
    return sel(small, u2f(f2u(t) | (f2u(v) & 0x80000000u)), v);
}

INLINE float pmin_v(float a, float b) { return sel(b < a, b, a); }
INLINE float pmax_v(float a, float b) { return sel(b > a, b, a); }

INLINE float ldexp_fast_v(float a, float m) {
    float biased = pmin_v(pmax_v(m + 127.0f, 0.0f), 255.0f);
    biased = sel(isnan(biased), 0.0f, biased);
    return a * u2f((uint32_t)(int32_t)biased << 23);
}

INLINE float ldexp_generic_v(float a, float m) {
    float clamped = pmin_v(pmax_v(m, -278.0f), 278.0f);
    int32_t e = (int32_t)sel(isnan(clamped), -0x1p31f, clamped); /* INT32_MIN */
    int32_t b = e >> 2;
    float c = u2f((uint32_t)(b + 127) << 23);
    float c2 = u2f((uint32_t)(e - 3 * b + 127) << 23);
    return a * c * c * c * c2;
}

INLINE float pexp_v(float x0) {
    float x = pmin_v(x0, (float)88.723);
    float m = floor_v(x * (float)1.44269504088896341 + 0.5f);
    float r = m * -0.693359375f + x;
    r = m * (float)2.12194440e-4 + r;
    float r2 = r * r;
    float p_even = r2 * 1.37449637986719608306884765625e-3f + 4.166965186595916748046875e-2f;
    float p_odd = r2 * 8.36894474923610687255859375e-3f + 0.16666518151760101318359375f;
    p_even = r2 * p_even + 0.49999988079071044921875f;
    float p_low = r + 1.0f;
    float y = r * p_odd + p_even;
    y = r2 * y + p_low;
    float out = pmax_v(ldexp_generic_v(y, m), x0);
    return sel(x0 < -104.0f, 0.0f, out);
}

INLINE float logistic_v(float x0) {
    float x = pmin_v(x0, (float)16.6355324) * 0.5f;
    float m = floor_v(x * (float)1.44269504088896341 + 0.5f);
    float r = m * -0.693359375f + x;
    r = m * (float)2.12194440e-4 + r;
    float r2 = r * r;
    float p_even = r2 * 4.1898667812347412109375e-2f + 0.49999141693115234375f;
    float p_odd = r2 * 8.33471305668354034423828125e-3f + 0.16666877269744873046875f;
    float p_low = r + 1.0f;
    float p = r * p_odd + p_even;
    p = r2 * p + p_low;
    float e = ldexp_fast_v(p, m);
    e = e * e;
    float out = e / (1.0f + e);
    return sel(x0 < -104.0f, 0.0f, out);
}

INLINE float plog_v(float x0) {
    int denormal = x0 < TINY32;
    float normalized = sel(denormal, x0 * 0x1p24f, x0);
    uint32_t bits = f2u(normalized);
    float e = (float)(int32_t)(bits >> 23) + sel(denormal, -150.0f, -126.0f);
    float x = u2f((bits & 0x807FFFFFu) | 0x3F000000u);
    int mask = x < (float)0.707106781186547524;
    float tmp = sel(mask, x, 0.0f);
    x = x - 1.0f;
    e = e - sel(mask, 1.0f, 0.0f);
    x = x + tmp;
    float p = (float)0.18256296349849254;
    p = p * x + (float)1.0000000190281063;
    p = p * x + (float)1.0000000190281136;
    p = x * p;
    float q = (float)0.049616247954120038;
    q = q * x + (float)0.59923249590823520;
    q = q * x + (float)1.4999999999999927;
    q = q * x + 1.0f;
    float out = e * (float)0.69314718055994530942 + p / q;
    /* zero: -inf; negative or NaN: all ones (por with the mask); +inf: +inf */
    uint32_t zero = -(uint32_t)(x0 == 0.0f), bad = -(uint32_t)!(x0 >= 0.0f);
    uint32_t special = zero | bad | -(uint32_t)(x0 == INFINITY);
    uint32_t special_bits = 0x7F800000u | (zero & 0x80000000u) | bad;
    return u2f((special & special_bits) | (~special & f2u(out)));
}

INLINE float plog1p_v(float x, int nan_input_wins) {
    float xp1 = x + 1.0f;
    float log1 = plog_v(xp1);
    float out = x * (log1 / (xp1 - 1.0f));
    out = sel(isnan(log1), log1, out);
    if (nan_input_wins) out = sel(isnan(x), quiet(x), out);
    return sel((xp1 == 1.0f) | (xp1 == log1), x, out);
}

INLINE float plog1p_x_nan_v(float x) { return plog1p_v(x, 1); }
INLINE float plog1p_log_nan_v(float x) { return plog1p_v(x, 0); }

/* The loops, cloned for AVX2/FMA CPUs (x86-64-v3) and any other (-DEIGEN_NO_CLONES: the latter
 * only), and vectorised (-O3) where the build optimises at all. No FMA is formed: the build's
 * -ffp-contract=off holds in the clones too, and nothing here calls fmaf. */
#if BCE_CLONES && !defined(EIGEN_NO_CLONES)
#define CLONES target_clones("arch=x86-64-v3", "default"),
#else
#define CLONES
#endif
#if defined(__GNUC__) && !defined(__clang__) && defined(__OPTIMIZE__)
#define VECTOR __attribute__((CLONES optimize("O3")))
#else
#define VECTOR __attribute__((CLONES))
#endif

/* A core over an array, all plain: `plain` is exact everywhere. */
MAP_KERNEL(VECTOR, k_plog, plog_v)
MAP_KERNEL(VECTOR, k_plog1p, plog1p_x_nan_v)
MAP_KERNEL(VECTOR, k_plog1p_f16, plog1p_log_nan_v)

/* A core over an array, BLOCK elements at a time: the vectorised plain code on each (its input
 * copied first, as the output may be the input), then the FTZ core on the ones `slow` marks. */
#define BLOCK 512
#define MAP_FTZ(name, plain, fn, slow)                                         \
    VECTOR static void name(const float *const *in, float *const *out, ptrdiff_t n) { \
        for (ptrdiff_t i0 = 0; i0 < n; i0 += BLOCK) {                          \
            ptrdiff_t m = n - i0 < BLOCK ? n - i0 : BLOCK;                     \
            float xb[BLOCK];                                                   \
            float *y = out[0] + i0;                                            \
            memcpy(xb, in[0] + i0, (size_t)m * sizeof(float));                 \
            int any = 0;                                                       \
            for (ptrdiff_t i = 0; i < m; i++) {                                \
                y[i] = plain(xb[i]);                                           \
                any |= slow(xb[i]);                                            \
            }                                                                  \
            if (any)                                                           \
                for (ptrdiff_t i = 0; i < m; i++)                              \
                    if (slow(xb[i])) y[i] = fn(xb[i], 1);                      \
        }                                                                      \
    }
MAP_FTZ(k_pexp, pexp_v, pexp, slow_exp)
MAP_FTZ(k_logistic, logistic_v, logistic, slow_exp)
#undef MAP_FTZ

/* vrcpps on AMD Zen 4 (`RCP_TABLE`): the estimate's 12-bit fraction falls from 4095 by the steps
 * here, two to a letter ('A' + 5 * first + second), one per 12 top bits of the input's mantissa. */
static const char RCP_STEPS[] =
    "HHMMMHMMWHMMMHMMRHMMMHMMWHMMMHMMMHMMMHMMRHMMMHMMRHMMMHMMMHMMMHMMMHMMMHMMMHMMMHMMMHMMMHMMHHMMMHMM"
    "HHMMMHMMHHMMMHMMHHMMMHMMHHMMMHMMLMHLMHLMQMHLMHLMQMHLMHLMLMHLMHLMQMHLMHLMLMHLMHLMLMHLMHLMLMHLMHLM"
    "LMHLMHLMLMHLMHLMGMHLMHLMGMHLMHLMGMHLMHLMGMHLMHLMGMHLMHLMBMHLMHLMLLHHHHHHQLHHHHHHQLHHHHHHQLHHHHHH"
    "LLHHHHHHQLHHHHHHLLHHHHHHLLHHHHHHLLHHHHHHLLHHHHHHGLHHHHHHLLHHHHHHGLHHHHHHGLHHHHHHGLHHHHHHGLHHHHHH"
    "LHGLHGLHLHGLHGLHQHGLHGLHLHGLHGLHLHGLHGLHLHGLHGLHLHGLHGLHLHGLHGLHGHGLHGLHLHGLHGLHGHGLHGLHGHGLHGLH"
    "GHGLHGLHGHGLHGLHGHGLHGLHBHGLHGLHLGHGHGGLLGHGHGGLLGHGHGGLLGHGHGGLLGHGHGGLLGHGHGGLLGHGHGGLGGHGHGGL"
    "LGHGHGGLGGHGHGGLLGHGHGGLGGHGHGGLGGHGHGGLGGHGHGGLGGHGHGGLBGHGHGGLGHGGGGLGGHGGGGLGLHGGGGLGGHGGGGLG"
    "GHGGGGLGGHGGGGLGGHGGGGLGGHGGGGLGGHGGGGLGBHGGGGLGGHGGGGLGBHGGGGLGGHGGGGLGBHGGGGLGBHGGGGLGBHGGGGLG"
    "GGGGGGGGLGGGGGGGGGGGGGGGLGGGGGGGLGGGGGGGGGGGGGGGGGGGGGGGLGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGG"
    "GGGGGGGGBGGGGGGGGGGGGGGGGGGGGGGGGGGBGGGGGGGBGGGGLGGBGGGGGGGBGGGGGGGBGGGGGGGBGGGGGGGBGGGGGGGBGGGG"
    "GGGBGGGGGGGBGGGGBGGBGGGGGGGBGGGGBGGBGGGGGGGBGGGGBGGBGGGGGGGBGGGGBFGGGBGGGFGGGBGGLFGGGBGGGFGGGBGG"
    "BFGGGBGGGFGGGBGGGFGGGBGGGFGGGBGGBFGGGBGGGFGGGBGGGFGGGBGGBFGGGBGGBFGGGBGGGFGGGBGGBFGGGBGGBFGGGBGG"
    "GBGFGGBGGBGFGGBGGBGFGGBGGBGFGGBGBBGFGGBGGBGFGGBGGBGFGGBGGBGFGGBGBBGFGGBGGBGFGGBGBBGFGGBGGBGFGGBG"
    "BBGFGGBGBBGFGGBGGBGFGGBGBBGFGGBGBFGBGBGBGFGBGBGBGFGBGBGBGFGBGBGBGFGBGBGBGFGBGBGBGFGBGBGBBFGBGBGB"
    "GFGBGBGBGFGBGBGBBFGBGBGBGFGBGBGBBFGBGBGBGFGBGBGBBFGBGBGBBFGBGBGBGBFGBFGBGBFGBFGBGBFGBFGBGBFGBFGB"
    "GBFGBFGBGBFGBFGBGBFGBFGBGBFGBFGBGBFGBFGBGBFGBFGBGBFGBFGBBBFGBFGBGBFGBFGBBBFGBFGBGBFGBFGBGBFGBFGB"
    "FGBBFGBBFGBBFGBBFGBBFGBBKGBBFGBBFGBBFGBBFGBBFGBBFGBBFGBBFGBBFGBBKGBBFGBBFGBBFGBBFGBBFGBBFGBBFGBB"
    "AGBBFGBBFGBBFGBBFGBBFGBBFGBBFGBBFGBBFFGBAGBBFFGBFGBBFFGBFGBBFFGBAGBBFFGBFGBBFFGBAGBBFFGBFGBBFFGB"
    "AGBBFFGBFGBBFFGBAGBBFFGBAGBBFFGBAGBBFFGBFGBBFFGBAGBBFFGBAGBBFFGBFFFFGBBBFFFFGBBBFFFFGBBBFFFFGBBB"
    "FFFFGBBBFFFFGBBBAFFFGBBBFFFFGBBBFFFFGBBBFFFFGBBBFFFFGBBBAFFFGBBBFFFFGBBBFFFFGBBBAFFFGBBBFFFFGBBB"
    "AFFGBBBBFFFGBBBBAFFGBBBBFFFGBBBBAFFGBBBBAFFGBBBBFFFGBBBBAFFGBBBBAFFGBBBBAFFGBBBBFFFGBBBBAFFGBBBB"
    "AFFGBBBBAFFGBBBBAFFGBBBBAFFGBBBB";
/* The 4096 fractions, built per call (a few microseconds; no shared state while the GIL is out). */
static void rcp_fill(uint16_t *rcp_table) {
    int v = 4095;
    for (int i = 0; i < 4096; i++) {
        int c = RCP_STEPS[i / 2] - 'A';
        v -= i % 2 ? c % 5 : c / 5;
        rcp_table[i] = (uint16_t)v;
    }
}

/* `rcpps`: _mm256_rcp_ps; zero and subnormals give a signed inf, infinities and estimates below
 * the smallest normal a signed zero, a NaN comes back quiet. */
INLINE float rcpps(float a, const uint16_t *rcp_table) {
    uint32_t bits = f2u(a), expo = (bits >> 23) & 0xFF;
    if (isnan(a)) return quiet(a);
    double est = ldexp(1.0 + rcp_table[(bits >> 11) & 0xFFF] / 4096.0, 126 - (int)expo);
    float out = expo == 0 ? INFINITY : expo == 255 || est < TINY32 ? 0.0f : (float)est;
    return u2f(f2u(out) | (bits & 0x80000000u));
}

/* `_preciprocal_f32`: x = rcpps(a), then x*(1 - a*x) + x, unless 1 - a*x is NaN. */
INLINE float preciprocal(float a, const uint16_t *rcp_table) {
    float x = rcpps(a, rcp_table);
    float tmp = ftz_sub(1.0f, ftz_mul(a, x));
    return isnan(tmp) ? x : ftz_add(ftz_mul(x, tmp), x);
}

/* rcpps on the bits, branch-free: `frac` is rcp_table's fractions at the float32 mantissa's top
 * (<< 11). est = (1 + f/4096) 2^(126 - expo) is exact in float32 where normal (biased exponent
 * 253 - expo >= 1); for expo 253 and 254 it is below the smallest normal, so 0. */
INLINE float rcpps_v(float a, const uint32_t *frac) {
    uint32_t bits = f2u(a), expo = (bits >> 23) & 0xFF;
    uint32_t normal = ((253u - expo) << 23) | frac[(bits >> 11) & 0xFFF];
    uint32_t out = expo == 0 ? 0x7F800000u : expo >= 253 ? 0u : normal;
    out |= bits & 0x80000000u;
    return u2f(isnan(a) ? bits | 0x00400000u : out);
}

/* Whether an FTZ op's result r differs from the plain one's (nonzero, at or below the smallest
 * normal): where none of a core's results does, its FTZ and plain code give the same bits. */
INLINE int flushes(float r) { return (r != 0.0f) & (fabsf(r) <= TINY32); }

static void frac_fill(uint32_t *frac) {
    uint16_t t[4096];
    rcp_fill(t);
    for (int i = 0; i < 4096; i++) frac[i] = (uint32_t)t[i] << 11;
}

VECTOR static void k_rcpps(const float *const *in, float *const *out, ptrdiff_t n) {
    uint32_t frac[4096];
    frac_fill(frac);
    const float *x = in[0];
    float *y = out[0];
    for (ptrdiff_t i = 0; i < n; i++) y[i] = rcpps_v(x[i], frac);
}

/* preciprocal: plain float32 ops with each result tested (`flushes`), then the FTZ core on the
 * elements where one was, BLOCK at a time as MAP_FTZ. */
VECTOR static void k_preciprocal(const float *const *in, float *const *out, ptrdiff_t n) {
    uint32_t frac[4096];
    uint16_t t[4096];
    frac_fill(frac);
    rcp_fill(t);
    for (ptrdiff_t i0 = 0; i0 < n; i0 += BLOCK) {
        ptrdiff_t m = n - i0 < BLOCK ? n - i0 : BLOCK;
        float xb[BLOCK];
        float *y = out[0] + i0;
        memcpy(xb, in[0] + i0, (size_t)m * sizeof(float));
        int any = 0;
        for (ptrdiff_t i = 0; i < m; i++) {
            float a = xb[i];
            float x = rcpps_v(a, frac);
            float ax = a * x;
            float tmp = 1.0f - ax;
            float xt = x * tmp;
            float r = xt + x;
            y[i] = sel(isnan(tmp), x, r);
            any |= flushes(ax) | flushes(tmp) | flushes(xt) | flushes(r);
        }
        if (any)
            for (ptrdiff_t i = 0; i < m; i++) {
                float a = xb[i];
                float x = rcpps_v(a, frac);
                float ax = a * x, tmp = 1.0f - ax, xt = x * tmp, r = xt + x;
                if (flushes(ax) | flushes(tmp) | flushes(xt) | flushes(r)) y[i] = preciprocal(a, t);
            }
    }
}

#undef BLOCK

const struct kernel eigen_kernels[] = {
    {"eigen_pexp", 1, 1, k_pexp},
    {"eigen_logistic", 1, 1, k_logistic},
    {"eigen_plog", 1, 1, k_plog},
    {"eigen_plog1p", 1, 1, k_plog1p},
    {"eigen_plog1p_f16", 1, 1, k_plog1p_f16},
    {"eigen_rcpps", 1, 1, k_rcpps},
    {"eigen_preciprocal", 1, 1, k_preciprocal},
    {NULL, 0, 0, NULL},
};
