/* measure.c's function, for module.c. */
#ifndef BCE_AUDIT_MEASURE_H
#define BCE_AUDIT_MEASURE_H
#include <stddef.h>

void measure32(const float *c, const double *e, const double *inv_ulp, const double *mag,
               const double *comp, double *ulps, double *rels, double *diff, ptrdiff_t n);
#endif
