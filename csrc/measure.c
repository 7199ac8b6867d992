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
