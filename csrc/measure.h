/* measure.c's functions, for module.c. */
#ifndef BCE_AUDIT_MEASURE_H
#define BCE_AUDIT_MEASURE_H
#include <stddef.h>
#include <stdint.h>

void measure32(const float *c, const double *e, const double *inv_ulp, const double *mag,
               const double *comp, double *ulps, double *rels, double *diff, ptrdiff_t n);

/* A series' worst errors over a chunk (`measure_worst32`), where its values are finite and the
 * position is not skipped (NaN wins every largest, as numpy's max and argmax have it). */
struct measured {
    ptrdiff_t count;     /* finite values (every position) */
    ptrdiff_t first;     /* the first non-finite value's position; -1: none */
    ptrdiff_t nan_at;    /* the first NaN ULP error measured; -1: none */
    ptrdiff_t at;        /* else the first largest ULP error; -1: none measured */
    double best;         /* that ULP error */
    double rel, abs;     /* the largest relative and absolute errors measured (-inf: none) */
    ptrdiff_t clip_count;       /* finite values with a clipped-exact value (every position) */
    double clip_rel, round_ulp; /* the largest clipped-exact distance and rounding ULPs there */
};

void measure_worst32(const float *c, const double *e, const double *inv_ulp, const double *mag,
                     const double *comp, const unsigned char *skip, const double *clip, const double *clip_rel,
                     const double *clip_e, const double *clip_inv, ptrdiff_t n, struct measured *out);

/* fastref.scale's |exact| and inverse ULPs (float64); whether a subnormal |exact| was met (then
 * scale64_subnormals writes their inverse ULPs). below: one byte a value, or NULL. */
int scale64(const double *e, int with_comp, const unsigned char *below, int minexp, int nmant, double *mag,
            double *inv_ulp, ptrdiff_t n);
void scale64_subnormals(const double *e, int with_comp, const unsigned char *below, int minexp, int nmant,
                        double *inv_ulp, ptrdiff_t n);

/* fastref.clipped after its logs: -(max(the log, or the bounds' where p is past them), floor)). */
void clip64(const double *src, int negate, const double *p, int bounded, double lo, double hi, double at_lo,
            double at_hi, int floored, double floor, double *out, ptrdiff_t n);
/* |a - b| / b */
void relative64(const double *a, const double *b, double *out, ptrdiff_t n);
#endif
