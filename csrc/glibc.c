/* The C library's own logf, log1pf and expf over an array (`bce_audit/glibc.py`'s `libm`):
 * the process's libm, called per element, as torch's scalar kernels and XLA's short tails do. */
#include "kernels.h"

#define LIBM(name, fn)                                                           \
    static void name(const float *const *in, float *const *out, ptrdiff_t n) {  \
        const float *x = in[0];                                                  \
        float *y = out[0];                                                       \
        for (ptrdiff_t i = 0; i < n; i++) y[i] = fn(x[i]);                       \
    }
LIBM(libm_logf, logf)
LIBM(libm_log1pf, log1pf)
LIBM(libm_expf, expf)
#undef LIBM

const struct kernel glibc_kernels[] = {
    {"logf", 1, 1, libm_logf},
    {"log1pf", 1, 1, libm_log1pf},
    {"expf", 1, 1, libm_expf},
    {NULL, 0, 0, NULL},
};
