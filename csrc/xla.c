/* `bce_audit/xla.py`'s float32 cores in C, bit for bit (see kernels.h). */
#include "kernels.h"

const struct kernel xla_kernels[] = {
    {NULL, 0, 0, NULL},
};
