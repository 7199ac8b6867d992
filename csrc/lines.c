/* JSON Lines from columns: each column's values as texts, then lines of literals and texts. */
#include "lines.h"

#include <math.h>
#include <string.h>

#include "shortest.h"

static char *put(char *p, const char *s, size_t n) {
    memcpy(p, s, n);
    return p + n;
}

char *texts(const double *values, const unsigned char *absent, ptrdiff_t n, char *p, uint32_t *ends) {
    char *start = p;
    for (ptrdiff_t i = 0; i < n; i++) {
        double v = values[i];
        if (absent && absent[i])
            p = put(p, "null", 4);
        else if (isnan(v))
            p = put(p, "\"nan\"", 5);
        else if (isinf(v))
            p = v > 0 ? put(p, "\"inf\"", 5) : put(p, "\"-inf\"", 6);
        else
            p += shortest(v, p);
        ends[i] = (uint32_t)(p - start);
    }
    return p;
}

/* n bytes from s to p in 32-byte moves: reads and writes up to 31 bytes past n (`SLACK`) */
static inline char *put_long(char *p, const char *s, size_t n) {
    for (size_t k = 0; k < n; k += 32) memcpy(p + k, s + k, 32);
    return p + n;
}

char *lines(const struct piece *literals, const struct column *columns, int ncol, ptrdiff_t n, char *p) {
    for (ptrdiff_t i = 0; i < n; i++) {
        for (int c = 0; c < ncol; c++) {
            p = put_long(p, literals[c].text, literals[c].len);
            uint32_t from = i ? columns[c].ends[i - 1] : 0;
            memcpy(p, columns[c].texts + from, 32);  /* a text is at most 32 bytes (TEXT_MAX) */
            p += columns[c].ends[i] - from;
        }
        p = put_long(p, literals[ncol].text, literals[ncol].len);
    }
    return p;
}
