/* `bce_audit/ftz.py`'s test of whether an array needs flushing, compiled (`compiled.subnormals`). */
#include "ftz.h"
#include "kernels.h"

/* Whether any value is subnormal (0 < |x| < the smallest normal): `ftz.flush`'s test, one pass
 * that the compiler vectorises (on integer bits: |x| - 1 wraps zeros out of range). */
#if BCE_CLONES
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
