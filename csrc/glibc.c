/* The C library's own logf, log1pf and expf over an array (`bce_audit/glibc.py`'s `libm`):
 * the process's libm, called per element, as torch's scalar kernels and XLA's short tails do. */
#include "kernels.h"

MAP_KERNEL(, libm_logf, logf)
MAP_KERNEL(, libm_log1pf, log1pf)
MAP_KERNEL(, libm_expf, expf)

const struct kernel glibc_kernels[] = {
    {"logf", 1, 1, libm_logf},
    {"log1pf", 1, 1, libm_log1pf},
    {"expf", 1, 1, libm_expf},
    {NULL, 0, 0, NULL},
};
