/* shortest.c's functions, for module.c. */
#ifndef BCE_AUDIT_SHORTEST_H
#define BCE_AUDIT_SHORTEST_H

#define SHORTEST_MAX 25  /* the longest text: -0.0000012345678901234567 */

void shortest_init(void);  /* before the first `shortest`, by one thread at a time (the GIL's holder) */
int shortest(double v, char *out);  /* a finite v's text, its length returned */
#endif
