/* ftz.c's functions, for module.c. */
#ifndef BCE_AUDIT_FTZ_H
#define BCE_AUDIT_FTZ_H
#include <stddef.h>
#include <stdint.h>

int subnormal32(const uint32_t *u, ptrdiff_t n);
int subnormal64(const uint64_t *u, ptrdiff_t n);
#endif
