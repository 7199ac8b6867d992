/* `bce_audit/fastref.py` Scale.measure's arithmetic on float32 values, in one vectorised pass
 * (`compiled.measure`): the same float64 operations element by element, so the same bits. */
#include "measure.h"
#include "kernels.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#if BCE_CLONES
#define VECTOR __attribute__((target_clones("arch=x86-64-v3", "default"), optimize("O3", "no-trapping-math")))
#else
#define VECTOR
#endif

/* c ? a : b by bit masks (GCC if-converts these, where it leaves a float ?: as a branch). */
static inline __attribute__((always_inline)) double sel64(int64_t c, double a, double b) {
    uint64_t m = (uint64_t)-c, ua, ub;
    memcpy(&ua, &a, 8);
    memcpy(&ub, &b, 8);
    ua = (ua & m) | (ub & ~m);
    memcpy(&a, &ua, 8);
    return a;
}

/* One element: |c - e|, or near 1 (|e| >= 1/2, with a complement) |(c sign(e) - 1) + comp|;
 * its ULPs (times the inverse ULP, a power of two) and relative error. `with_comp` and `with_rel`
 * are constants where it is inlined: four loops without a test in them. */
static inline __attribute__((always_inline)) void one(
    const float *restrict c, const double *restrict e, const double *restrict inv_ulp, const double *restrict mag,
    const double *restrict comp, double *restrict ulps, double *restrict rels, double *restrict diff, ptrdiff_t i,
    int with_comp, int with_rel) {
    double ci = (double)c[i];
    double d = fabs(ci - e[i]);
    if (with_comp) {
        double ei = e[i];
        double sign = sel64(ei != ei, ei, sel64(ei > 0, 1.0, 0.0) - sel64(ei < 0, 1.0, 0.0)); /* np.sign */
        double near = fabs((ci * sign - 1.0) + comp[i]);
        d = sel64(mag[i] >= 0.5, near, d);
    }
    diff[i] = d;
    ulps[i] = d * inv_ulp[i];
    if (with_rel) rels[i] = d / mag[i];
}

VECTOR void measure32(const float *restrict c, const double *restrict e, const double *restrict inv_ulp,
                      const double *restrict mag, const double *restrict comp, double *restrict ulps,
                      double *restrict rels, double *restrict diff, ptrdiff_t n) {
    if (comp && rels)
        for (ptrdiff_t i = 0; i < n; i++) one(c, e, inv_ulp, mag, comp, ulps, rels, diff, i, 1, 1);
    else if (comp)
        for (ptrdiff_t i = 0; i < n; i++) one(c, e, inv_ulp, mag, comp, ulps, rels, diff, i, 1, 0);
    else if (rels)
        for (ptrdiff_t i = 0; i < n; i++) one(c, e, inv_ulp, mag, comp, ulps, rels, diff, i, 0, 1);
    else
        for (ptrdiff_t i = 0; i < n; i++) one(c, e, inv_ulp, mag, comp, ulps, rels, diff, i, 0, 0);
}

/* ---- measure_worst32: a series' worst errors over a chunk in one pass, nothing written ----
 * What `measure32` computes at each position, reduced as sweep's `_worst_of` and `_clip_of`
 * reduce it, four positions at a time (GCC vector extensions: AVX2 where the CPU has it). */

typedef double v4d __attribute__((vector_size(32)));
typedef long long v4i __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef unsigned char v4b __attribute__((vector_size(4)));
typedef float v4f_u __attribute__((vector_size(16), aligned(4)));        /* (unaligned loads) */
typedef unsigned char v4b_u __attribute__((vector_size(4), aligned(1)));

static inline __attribute__((always_inline)) v4d blend(v4i c, v4d a, v4d b) {
    return (v4d)(((v4i)a & c) | ((v4i)b & ~c));
}

/* A running largest per lane, with the position where each lane first reached it. */
struct lanes {
    v4d max;
    v4i at;
    v4i nan; /* lanes that met a NaN */
};

static inline __attribute__((always_inline)) void track(struct lanes *l, v4d v, v4i pos) {
    v4i gt = v > l->max;
    l->max = blend(gt, v, l->max);
    l->at = (pos & gt) | (l->at & ~gt);
    l->nan |= v != v;
}

/* The same without the positions (a largest asked for, not where). */
static inline __attribute__((always_inline)) void track_max(struct lanes *l, v4d v) {
    l->max = blend(v > l->max, v, l->max);
    l->nan |= v != v;
}

/* The largest over the lanes and the first position of it (-1: every lane -inf). */
static inline __attribute__((always_inline)) double lanes_max(const struct lanes *l, ptrdiff_t *at) {
    double best = -INFINITY;
    ptrdiff_t where = -1;
    for (int k = 0; k < 4; k++)
        if (l->max[k] > best || (l->max[k] == best && where >= 0 && l->at[k] < where)) {
            best = l->max[k];
            where = l->at[k];
        }
    if (best == -INFINITY) where = -1;
    *at = where;
    return best;
}

static inline __attribute__((always_inline)) int any(v4i m) { return (m[0] | m[1] | m[2] | m[3]) != 0; }

/* Errors at four positions (-inf where not measured), as `measure32` computes them. */
static inline __attribute__((always_inline)) void four(
    const float *c, const double *e, const double *inv_ulp, const double *mag, const double *comp,
    const unsigned char *skip, ptrdiff_t i, int with_comp, v4d *u, v4d *r, v4d *a, v4i *fin, v4d *cd) {
    const v4d low = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    const v4i sign_bit = {INT64_MIN, INT64_MIN, INT64_MIN, INT64_MIN};
    v4f cf;
    v4b sk;
    v4d ev, iv, mv;
    cf = *(const v4f_u *)(c + i);
    sk = *(const v4b_u *)(skip + i);
    memcpy(&ev, e + i, sizeof ev);
    memcpy(&iv, inv_ulp + i, sizeof iv);
    memcpy(&mv, mag + i, sizeof mv);
    v4d x = __builtin_convertvector(cf, v4d);
    v4i f = (x - x) == 0; /* finite */
    v4i in = f & (__builtin_convertvector(sk, v4i) == 0);
    v4d d = (v4d)((v4i)(x - ev) & ~sign_bit);
    if (with_comp) {
        v4d cv;
        memcpy(&cv, comp + i, sizeof cv);
        const v4d one = {1.0, 1.0, 1.0, 1.0}, zero = {0.0, 0.0, 0.0, 0.0};
        v4d sign = blend(ev != ev, ev, blend(ev > 0, one, zero) - blend(ev < 0, one, zero));
        v4d near = (v4d)((v4i)((x * sign - one) + cv) & ~sign_bit);
        d = blend(mv >= 0.5, near, d);
    }
    *u = blend(in, d * iv, low);
    *r = blend(in, d / mv, low);
    *a = blend(in, d, low);
    *fin = f;
    *cd = x;
}

static inline __attribute__((always_inline)) void worst_loop(
    const float *c, const double *e, const double *inv_ulp, const double *mag, const double *comp,
    const unsigned char *skip, const double *clip, const double *clip_rel, const double *clip_e,
    const double *clip_inv, ptrdiff_t n4, int with_comp, int with_clip, struct lanes *lu, struct lanes *lr,
    struct lanes *la, struct lanes *lc, struct lanes *lo, v4i *count, v4i *clip_count) {
    const v4d low = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    const v4i sign_bit = {INT64_MIN, INT64_MIN, INT64_MIN, INT64_MIN};
    const v4i step = {4, 4, 4, 4};
    v4i pos = {0, 1, 2, 3};
    struct lanes u_l = *lu, r_l = *lr, a_l = *la, c_l = *lc, o_l = *lo; /* (in registers) */
    v4i cnt = *count, ccnt = *clip_count;
    for (ptrdiff_t i = 0; i < n4; i += 4, pos += step) {
        v4d u, r, a, x;
        v4i f;
        four(c, e, inv_ulp, mag, comp, skip, i, with_comp, &u, &r, &a, &f, &x);
        cnt -= f;
        track(&u_l, u, pos);
        track_max(&r_l, r);
        track_max(&a_l, a);
        if (with_clip) {
            v4d cv, rv, ce, ci;
            memcpy(&cv, clip + i, sizeof cv);
            memcpy(&rv, clip_rel + i, sizeof rv);
            memcpy(&ce, clip_e + i, sizeof ce);
            memcpy(&ci, clip_inv + i, sizeof ci);
            v4i h = f & (cv == cv);
            ccnt -= h;
            track_max(&c_l, blend(h, rv, low));
            track_max(&o_l, blend(h, (v4d)((v4i)(x - ce) & ~sign_bit) * ci, low));
        }
    }
    *lu = u_l;
    *lr = r_l;
    *la = a_l;
    *lc = c_l;
    *lo = o_l;
    *count = cnt;
    *clip_count = ccnt;
}

VECTOR void measure_worst32(const float *restrict c, const double *restrict e, const double *restrict inv_ulp,
                            const double *restrict mag, const double *restrict comp,
                            const unsigned char *restrict skip, const double *restrict clip,
                            const double *restrict clip_rel, const double *restrict clip_e,
                            const double *restrict clip_inv, ptrdiff_t n, struct measured *restrict out) {
    const v4d low = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    const v4i none = {0, 0, 0, 0};
    struct lanes lu = {low, none, none}, lr = lu, la = lu, lc = lu, lo = lu;
    v4i count = none, clip_count = none;
    ptrdiff_t first = -1, n4 = n & ~(ptrdiff_t)3;
#define LOOP(comp_, clip_) \
    worst_loop(c, e, inv_ulp, mag, comp, skip, clip, clip_rel, clip_e, clip_inv, n4, comp_, clip_, &lu, &lr, &la, \
               &lc, &lo, &count, &clip_count)
    if (comp)
        clip ? LOOP(1, 1) : LOOP(1, 0);
    else
        clip ? LOOP(0, 1) : LOOP(0, 0);
#undef LOOP
    ptrdiff_t total = count[0] + count[1] + count[2] + count[3];
    ptrdiff_t total_clip = clip_count[0] + clip_count[1] + clip_count[2] + clip_count[3];
    /* the last n % 4 positions, one at a time (padded with a skipped copy of the last one) */
    if (n4 < n) {
        float cp[4];
        double ep[4], ip[4], mp[4], cpp[4], clp[4], crp[4], cep[4], cip[4];
        unsigned char sp[4];
        for (int k = 0; k < 4; k++) {
            ptrdiff_t j = n4 + k < n ? n4 + k : n - 1;
            cp[k] = c[j];
            ep[k] = e[j];
            ip[k] = inv_ulp[j];
            mp[k] = mag[j];
            cpp[k] = comp ? comp[j] : 0.0;
            sp[k] = n4 + k < n ? skip[j] : 1;
            clp[k] = clip ? (n4 + k < n ? clip[j] : NAN) : 0.0;
            crp[k] = clip ? clip_rel[j] : 0.0;
            cep[k] = clip ? clip_e[j] : 0.0;
            cip[k] = clip ? clip_inv[j] : 0.0;
        }
        v4d u, r, a, x;
        v4i f;
        v4i pos = {n4, n4 + 1, n4 + 2, n4 + 3};
        four(cp, ep, ip, mp, cpp, sp, 0, comp != NULL, &u, &r, &a, &f, &x);
        for (int k = 0; k < 4 && n4 + k < n; k++) total -= f[k];
        track(&lu, u, pos);
        track_max(&lr, r);
        track_max(&la, a);
        if (clip) {
            const v4i sign_bit = {INT64_MIN, INT64_MIN, INT64_MIN, INT64_MIN};
            v4d cv, rv, ce, ci;
            memcpy(&cv, clp, sizeof cv);
            memcpy(&rv, crp, sizeof rv);
            memcpy(&ce, cep, sizeof ce);
            memcpy(&ci, cip, sizeof ci);
            v4i h = f & (cv == cv);
            for (int k = 0; k < 4 && n4 + k < n; k++) total_clip -= h[k];
            track_max(&lc, blend(h, rv, low));
            track_max(&lo, blend(h, (v4d)((v4i)(x - ce) & ~sign_bit) * ci, low));
        }
    }
    if (total < n) /* the first value that is not finite */
        for (ptrdiff_t j = 0; j < n && first < 0; j++) {
            double xj = (double)c[j];
            if (!(xj - xj == 0)) first = j;
        }
    ptrdiff_t at, ignored;
    out->count = total;
    out->first = first;
    out->nan_at = -1;
    out->best = lanes_max(&lu, &at);
    out->at = at;
    if (any(lu.nan)) { /* numpy's argmax: the first NaN; found again, one position at a time */
        out->best = NAN;
        for (ptrdiff_t i = 0; i < n && out->nan_at < 0; i += 4) {
            v4d u, r, a, x;
            v4i f;
            if (i + 4 <= n) {
                four(c, e, inv_ulp, mag, comp, skip, i, comp != NULL, &u, &r, &a, &f, &x);
                for (int k = 0; k < 4; k++)
                    if (u[k] != u[k]) {
                        out->nan_at = i + k;
                        break;
                    }
            } else {
                for (ptrdiff_t j = i; j < n && out->nan_at < 0; j++) {
                    float cj = c[j];
                    double xj = (double)cj, d = fabs(xj - e[j]);
                    if (comp) {
                        double ej = e[j];
                        double sg = ej != ej ? ej : (ej > 0) - (ej < 0);
                        d = mag[j] >= 0.5 ? fabs((xj * sg - 1.0) + comp[j]) : d;
                    }
                    double uj = d * inv_ulp[j];
                    if (xj - xj == 0 && !skip[j] && uj != uj) out->nan_at = j;
                }
            }
        }
        out->at = out->nan_at;
    }
    out->rel = any(lr.nan) ? NAN : lanes_max(&lr, &ignored);
    out->abs = any(la.nan) ? NAN : lanes_max(&la, &ignored);
    out->clip_count = total_clip;
    out->clip_rel = any(lc.nan) ? NAN : lanes_max(&lc, &ignored);
    out->round_ulp = any(lo.nan) ? NAN : lanes_max(&lo, &ignored);
}

/* ---- scale64: `fastref.scale`'s arithmetic, |exact| and the inverse ULP at it ----
 * frexp's exponent from the bits (numpy's: 0 for zeros, infinities and NaN), then the binade
 * corrections and the dtype's ULP exponent as `fastref.scale` and `DtypeInfo.ulp_exponent`
 * take them; the inverse ULP is a power of two, written from its exponent. */

static inline __attribute__((always_inline)) double pow2(int64_t p) {
    uint64_t bits = (uint64_t)(p + 1023) << 52;
    double out;
    memcpy(&out, &bits, 8);
    return out;
}

VECTOR int scale64(const double *restrict e, int with_comp, const unsigned char *restrict below, int minexp,
                   int nmant, double *restrict mag, double *restrict inv_ulp, ptrdiff_t n) {
    int sub = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        uint64_t bits;
        memcpy(&bits, e + i, 8);
        bits &= 0x7FFFFFFFFFFFFFFFull;
        double m;
        memcpy(&m, &bits, 8);
        int64_t biased = (int64_t)(bits >> 52);
        int64_t k = biased - 1022;                     /* a normal value's */
        k = biased == 0 || biased == 0x7FF ? 0 : k;    /* zeros (and subnormals: below), inf, NaN */
        sub |= biased == 0 && bits != 0;
        if (with_comp) k = m >= 0.5 ? 0 : k;
        if (below) k = below[i] && m > 0 ? k - 1 : k;
        k = m == 0 ? minexp + 1 : k;
        int64_t b = k - 1;
        int64_t ue = (b > minexp ? b : minexp) - nmant;
        mag[i] = m;
        inv_ulp[i] = pow2(-ue);
    }
    return sub;
}

/* scale64's subnormal |exact| (frexp's exponent from the bit length), one at a time. */
void scale64_subnormals(const double *e, int with_comp, const unsigned char *below, int minexp, int nmant,
                        double *inv_ulp, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        uint64_t bits;
        memcpy(&bits, e + i, 8);
        bits &= 0x7FFFFFFFFFFFFFFFull;
        if ((bits >> 52) != 0 || bits == 0) continue;
        int64_t k = (64 - __builtin_clzll(bits)) - 1074;
        double m;
        memcpy(&m, &bits, 8);
        if (with_comp) k = m >= 0.5 ? 0 : k;
        if (below) k = below[i] && m > 0 ? k - 1 : k;
        int64_t b = k - 1;
        int64_t ue = (b > minexp ? b : minexp) - nmant;
        inv_ulp[i] = pow2(-ue);
    }
}

/* ---- clip64, relative64: `fastref.clipped`'s arithmetic after its logs, and `_clip_exact`'s ----
 * distance, each in one pass: selections, a maximum, negations and one division, all exact. */

VECTOR void clip64(const double *restrict src, int negate, const double *restrict p, int bounded, double lo,
                   double hi, double at_lo, double at_hi, int floored, double floor, double *restrict out,
                   ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        double v = negate ? -src[i] : src[i];
        if (bounded) {
            v = p[i] < lo ? at_lo : v;
            v = p[i] > hi ? at_hi : v;
        }
        if (floored) v = v != v ? v : (v > floor ? v : floor); /* np.maximum: NaN wins */
        out[i] = -v;
    }
}

VECTOR void relative64(const double *restrict a, const double *restrict b, double *restrict out, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) out[i] = fabs(a[i] - b[i]) / b[i];
}
