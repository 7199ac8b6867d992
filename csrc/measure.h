/* measure.c's functions, for module.c. */
#ifndef BCE_AUDIT_MEASURE_H
#define BCE_AUDIT_MEASURE_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>

struct worst {
    ptrdiff_t finite, first_nonfinite, argmax; /* first_nonfinite: -1 where every value is finite */
    double rel, abs;
};
struct clipmax {
    ptrdiff_t count; /* values finite with a clipped-exact value */
    double a, b;
};

void measure64(const void *c, int f32, const double *e, const double *inv_ulp, const double *mag,
               const double *comp, double *ulps, double *rels, double *diff, ptrdiff_t n);
struct worst worst64(const void *v, int f32, const double *ulp, const double *rel, const double *ab,
                     ptrdiff_t n);
struct clipmax clipmax64(const void *v, int f32, const double *clip, const double *a, const double *b,
                         ptrdiff_t n);
int subnormal32(const uint32_t *u, ptrdiff_t n);
int subnormal64(const uint64_t *u, ptrdiff_t n);
#endif
