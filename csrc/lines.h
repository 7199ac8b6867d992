/* lines.c's functions, for module.c. */
#ifndef BCE_AUDIT_LINES_H
#define BCE_AUDIT_LINES_H
#include <stddef.h>
#include <stdint.h>

#define TEXT_MAX 32  /* room for one value's text: a number (25 bytes at most), "-inf" or null */
#define SLACK 32     /* readable bytes after a column's texts or a literal, writable after lines' end */

/* n values' texts one after another into p (room for n * TEXT_MAX bytes), and where each ends
 * (from p) into ends: null where `absent` (when not NULL) is set, "nan", "inf" or "-inf" (quoted)
 * where not finite, else the shortest text (shortest.c; `shortest_init` first). Returns the end
 * of what was written. */
char *texts(const double *values, const unsigned char *absent, ptrdiff_t n, char *p, uint32_t *ends);

struct piece { const char *text; size_t len; };
struct column { const char *texts; const uint32_t *ends; };  /* as `texts` wrote them */

/* n lines into p: literal 0, column 0's text, literal 1, ..., literal ncol. Returns the end.
 * Texts and literals are copied in 32-byte moves: each is followed by SLACK readable bytes, and
 * up to SLACK bytes after the end are written. */
char *lines(const struct piece *literals, const struct column *columns, int ncol, ptrdiff_t n, char *p);
#endif
