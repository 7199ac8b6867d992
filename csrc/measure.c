/* The fast baseline's measuring in one pass each (`bce_audit/fastref.py` Scale.measure, and the
 * reductions of `bce_audit/sweep.py` _WorstAcc.update): the same float64 operations as the numpy
 * code, element by element, so the same bits; NaN handled as numpy's max and argmax handle it. */
#include "measure.h"

static inline double value(const void *c, int f32, ptrdiff_t i) {
    return f32 ? (double)((const float *)c)[i] : ((const double *)c)[i];
}

static inline double sign(double e) { return e > 0 ? 1.0 : e < 0 ? -1.0 : e == 0 ? 0.0 : e; }

void measure64(const void *c, int f32, const double *e, const double *inv_ulp, const double *mag,
               const double *comp, double *ulps, double *rels, double *diff, ptrdiff_t n) {
    for (ptrdiff_t i = 0; i < n; i++) {
        double ci = value(c, f32, i);
        double d = fabs(ci - e[i]);
        if (comp && mag[i] >= 0.5) d = fabs((ci * sign(e[i]) - 1.0) + comp[i]); /* near 1: the complement */
        diff[i] = d;
        ulps[i] = d * inv_ulp[i];
        if (rels) rels[i] = d / mag[i];
    }
}

/* np.max's step: a NaN, once met, is the maximum. */
static inline double max_nan(double m, double x) { return m != m ? m : x != x ? x : x > m ? x : m; }

struct worst worst64(const void *v, int f32, const double *ulp, const double *rel, const double *ab,
                     ptrdiff_t n) {
    struct worst w = {0, -1, 0, -INFINITY, -INFINITY};
    double best = -INFINITY;
    int nan_seen = 0;
    for (ptrdiff_t i = 0; i < n; i++) {
        if (!isfinite(value(v, f32, i))) {
            if (w.first_nonfinite < 0) w.first_nonfinite = i;
            continue;
        }
        w.finite++;
        double u = ulp[i];
        if (u != u) {  /* argmax: the first NaN */
            if (!nan_seen) { nan_seen = 1; w.argmax = i; }
        } else if (!nan_seen && u > best) {
            best = u;
            w.argmax = i;
        }
        w.rel = max_nan(w.rel, rel[i]);
        w.abs = max_nan(w.abs, ab[i]);
    }
    if (w.finite && best == -INFINITY && !nan_seen) w.argmax = 0; /* every one -inf: argmax gives 0 */
    return w;
}

struct clipmax clipmax64(const void *v, int f32, const double *clip, const double *a, const double *b,
                         ptrdiff_t n) {
    struct clipmax m = {0, -INFINITY, -INFINITY};
    for (ptrdiff_t i = 0; i < n; i++) {
        if (!isfinite(value(v, f32, i)) || clip[i] != clip[i]) continue;
        m.count++;
        m.a = max_nan(m.a, a[i]);
        m.b = max_nan(m.b, b[i]);
    }
    return m;
}

/* Whether any value is subnormal (0 < |x| < the smallest normal): `ftz.flush`'s test, one pass
 * that the compiler vectorises (on integer bits: |x| - 1 wraps zeros out of range). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTOR __attribute__((target_clones("arch=x86-64-v3", "default"), optimize("O3")))
#else
#define VECTOR
#endif

VECTOR int subnormal32(const uint32_t *u, ptrdiff_t n) {
    unsigned acc = 0;
    for (ptrdiff_t i = 0; i < n; i++) acc |= (unsigned)(((u[i] & 0x7FFFFFFFu) - 1u) < 0x007FFFFFu);
    return acc != 0;
}

VECTOR int subnormal64(const uint64_t *u, ptrdiff_t n) {
    unsigned acc = 0;
    for (ptrdiff_t i = 0; i < n; i++)
        acc |= (unsigned)(((u[i] & 0x7FFFFFFFFFFFFFFFull) - 1u) < 0x000FFFFFFFFFFFFFull);
    return acc != 0;
}
