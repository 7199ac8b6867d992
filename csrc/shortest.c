/* The shortest decimal that reads back as the same double, written as Arrow writes it.
 *
 * The digits: of the decimals that round to the double, the shortest, and of those the nearest
 * (ties to even); Python's repr and Arrow's cast choose the same digits. They are found as Ryu
 * finds them (Ulf Adams, "Ryu: fast float-to-string conversion", PLDI 2018): the double's
 * rounding interval, scaled by a 125-bit power of 5 so that its ends become integers of 17 or
 * more digits, loses digits while its ends still differ. The powers of 5 are computed once, exactly
 * (`tables`), not stored.
 *
 * The layout is Arrow's (double-conversion's shortest, exponent sign shown, decimal point for
 * exponents -6 to 9): 0, -0, 0.000001, 1e-7, 1000000000, 1e+10, 1.5e-308. */
#include "shortest.h"

#include <stdint.h>
#include <string.h>

typedef unsigned __int128 u128;

#define BITS 125        /* the powers' precision */
#define POW5 326        /* 5^i for i < POW5, the double's smallest exponent's needs */
#define INV5 342        /* 2^k / 5^q for q < INV5 */

static uint64_t pow5[POW5][2], inv5[INV5][2];  /* [low 64 bits, high 64 bits] */
static int ready;

/* A number of up to 30 32-bit limbs, least significant first (5^341 has 792 bits). */
#define LIMBS 30
typedef struct { uint32_t w[LIMBS]; int n; } big;

static int bitlen(const big *b) {
    if (!b->n) return 0;
    return 32 * (b->n - 1) + (32 - __builtin_clz(b->w[b->n - 1]));
}

static int bit(const big *b, int i) { return i / 32 < b->n ? (b->w[i / 32] >> (i % 32)) & 1 : 0; }

/* bits [lo, lo + 128) of b (zeros past its top) */
static void window(const big *b, int lo, uint64_t out[2]) {
    u128 v = 0;
    for (int i = 127; i >= 0; i--) v = (v << 1) | (u128)(lo + i >= 0 ? bit(b, lo + i) : 0);
    out[0] = (uint64_t)v;
    out[1] = (uint64_t)(v >> 64);
}

static int cmp(const big *a, const big *b) {
    if (a->n != b->n) return a->n < b->n ? -1 : 1;
    for (int i = a->n - 1; i >= 0; i--)
        if (a->w[i] != b->w[i]) return a->w[i] < b->w[i] ? -1 : 1;
    return 0;
}

static void sub(big *a, const big *b) {  /* a -= b, a >= b */
    int64_t borrow = 0;
    for (int i = 0; i < a->n; i++) {
        int64_t d = (int64_t)a->w[i] - (i < b->n ? b->w[i] : 0) - borrow;
        borrow = d < 0;
        a->w[i] = (uint32_t)(d + (borrow ? ((int64_t)1 << 32) : 0));
    }
    while (a->n && !a->w[a->n - 1]) a->n--;
}

static void twice_plus(big *a, int low) {  /* a = 2a + low */
    uint32_t carry = (uint32_t)low;
    for (int i = 0; i < a->n; i++) {
        uint32_t top = a->w[i] >> 31;
        a->w[i] = (a->w[i] << 1) | carry;
        carry = top;
    }
    if (carry) a->w[a->n++] = carry;
}

/* pow5[i]: the top BITS bits of 5^i. inv5[q]: floor(2^(bitlen(5^q) - 1 + BITS) / 5^q) + 1. */
static void tables(void) {
    big p = {{1}, 1};
    for (int i = 0; i < INV5; i++) {
        int len = bitlen(&p);
        if (i < POW5) window(&p, len - BITS, pow5[i]);
        /* long division of 2^(len - 1 + BITS) by p: the remainder starts as 2^(len - 1) < p */
        big r = {{0}, 0};
        r.w[(len - 1) / 32] = 1u << ((len - 1) % 32);
        r.n = (len - 1) / 32 + 1;
        u128 q = 0;
        for (int k = 0; k < BITS; k++) {
            twice_plus(&r, 0);
            q <<= 1;
            if (cmp(&r, &p) >= 0) {
                sub(&r, &p);
                q |= 1;
            }
        }
        q += 1;
        inv5[i][0] = (uint64_t)q;
        inv5[i][1] = (uint64_t)(q >> 64);
        uint64_t carry = 0;  /* p *= 5 */
        for (int k = 0; k < p.n; k++) {
            uint64_t v = (uint64_t)p.w[k] * 5 + carry;
            p.w[k] = (uint32_t)v;
            carry = v >> 32;
        }
        if (carry) p.w[p.n++] = (uint32_t)carry;
    }
}

void shortest_init(void) {
    if (!ready) tables();
    ready = 1;
}

static inline int pow5bits(int e) { return (int)(((uint32_t)e * 1217359) >> 19) + 1; }
static inline int log10pow2(int e) { return (int)(((uint32_t)e * 78913) >> 18); }
static inline int log10pow5(int e) { return (int)(((uint32_t)e * 732923) >> 20); }

static inline int fives(uint64_t v) {  /* how many times 5 divides v > 0 */
    int n = 0;
    while (v % 5 == 0) {
        v /= 5;
        n++;
    }
    return n;
}

/* floor(m * mul / 2^j), j >= 64, m < 2^55 */
static inline uint64_t mulshift(uint64_t m, const uint64_t mul[2], int j) {
    u128 lo = (u128)m * mul[0], hi = (u128)m * mul[1];
    return (uint64_t)(((lo >> 64) + hi) >> (j - 64));
}

static inline int digits(uint64_t v) {  /* v < 10^17 */
    static const uint64_t TEN[] = {1ull, 10ull, 100ull, 1000ull, 10000ull, 100000ull, 1000000ull,
        10000000ull, 100000000ull, 1000000000ull, 10000000000ull, 100000000000ull, 1000000000000ull,
        10000000000000ull, 100000000000000ull, 1000000000000000ull, 10000000000000000ull};
    int n = (((63 - __builtin_clzll(v | 1)) * 1233) >> 12) + 1;  /* floor(log10(2^bits)) + 1 */
    return n + (n < 17 && v >= TEN[n]);
}

static const char PAIRS[201] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

static inline void write8(uint32_t v, char *p) {  /* v < 10^8 as exactly 8 digits */
    uint32_t a = v / 10000, b = v % 10000;
    memcpy(p, PAIRS + 2 * (a / 100), 2);
    memcpy(p + 2, PAIRS + 2 * (a % 100), 2);
    memcpy(p + 4, PAIRS + 2 * (b / 100), 2);
    memcpy(p + 6, PAIRS + 2 * (b % 100), 2);
}

static inline void write_digits(uint64_t d, char *buf, int n) {  /* d's n digits into buf */
    int i = n;
    while (i > 8) {  /* 8 digits at a time in 32-bit halves: shorter chains of divisions */
        uint64_t q = d / 100000000;
        write8((uint32_t)(d - q * 100000000), buf + i - 8);
        d = q;
        i -= 8;
    }
    uint32_t v = (uint32_t)d;
    for (; i >= 2; i -= 2) {
        memcpy(buf + i - 2, PAIRS + 2 * (v % 100), 2);
        v /= 100;
    }
    if (i) buf[0] = (char)('0' + v);
}

/* The scaled value and the ends of its rounding interval as digits are dropped: the last digit
 * dropped, how many, and whether every digit dropped so far was 0 (from vr, and from vm). */
struct ends { uint64_t vr, vp, vm; int last, removed, vr_zeros, vm_zeros; };

static inline void drop_digit(struct ends *c) {
    c->vm_zeros &= c->vm % 10 == 0;
    c->vr_zeros &= c->last == 0;
    c->last = (int)(c->vr % 10);
    c->vr /= 10;
    c->vp /= 10;
    c->vm /= 10;
    c->removed++;
}

/* The shortest nearest digits of a finite double > 0 given by its fields: *out * 10^(*e10). */
static void decimal(uint64_t mant, int bexp, uint64_t *out, int *e10) {
    int e2;
    uint64_t m2;
    if (bexp == 0) {
        e2 = 1 - 1023 - 52 - 2;
        m2 = mant;
    } else {
        e2 = bexp - 1023 - 52 - 2;
        m2 = (1ull << 52) | mant;
    }
    /* an integer below 2^53: its digits less trailing zeros (no shorter decimal rounds to it) */
    if (e2 + 2 <= 0 && e2 + 2 >= -52) {
        int s = -(e2 + 2);
        if ((m2 & ((1ull << s) - 1)) == 0) {
            uint64_t v = m2 >> s;
            int z = 0;
            while (v % 10 == 0) {
                v /= 10;
                z++;
            }
            *out = v;
            *e10 = z;
            return;
        }
    }
    int even = (m2 & 1) == 0;
    uint64_t mv = 4 * m2;
    int mmshift = mant != 0 || bexp <= 1;  /* the gap below is the gap above, but at a power of 2 */
    uint64_t vr, vp, vm;
    int q, base;
    int vm_zeros = 0, vr_zeros = 0;
    if (e2 >= 0) {
        q = log10pow2(e2) - (e2 > 3);
        base = q;
        int i = -e2 + q + BITS + pow5bits(q) - 1;
        vr = mulshift(mv, inv5[q], i);
        vp = mulshift(mv + 2, inv5[q], i);
        vm = mulshift(mv - 1 - mmshift, inv5[q], i);
        if (q <= 21) {  /* the scaled ends are exact where 5^q divides them */
            if (mv % 5 == 0)
                vr_zeros = fives(mv) >= q;
            else if (even)
                vm_zeros = fives(mv - 1 - mmshift) >= q;
            else
                vp -= fives(mv + 2) >= q;
        }
    } else {
        q = log10pow5(-e2) - (-e2 > 1);
        base = q + e2;
        int i = -e2 - q;
        int j = q - (pow5bits(i) - BITS);
        vr = mulshift(mv, pow5[i], j);
        vp = mulshift(mv + 2, pow5[i], j);
        vm = mulshift(mv - 1 - mmshift, pow5[i], j);
        if (q <= 1) {
            vr_zeros = 1;
            if (even)
                vm_zeros = mmshift == 1;
            else
                vp--;
        } else if (q < 63) {
            vr_zeros = (mv & ((1ull << q) - 1)) == 0;
        }
    }
    struct ends c = {vr, vp, vm, 0, 0, vr_zeros, vm_zeros};
    uint64_t result;
    if (vm_zeros || vr_zeros) {  /* exact ends: ties and the lower end's inclusion matter */
        while (c.vp / 10 > c.vm / 10) drop_digit(&c);
        if (c.vm_zeros)
            while (c.vm % 10 == 0) drop_digit(&c);
        if (c.vr_zeros && c.last == 5 && c.vr % 2 == 0) c.last = 4;  /* a tie: to even */
        result = c.vr + ((c.vr == c.vm && (!even || !c.vm_zeros)) || c.last >= 5);
    } else {  /* the common case: only the last digit removed decides the rounding */
        if (c.vp / 100 > c.vm / 100) {  /* two digits at once, most of the time */
            c.last = (int)(c.vr % 100) / 10;
            c.vr /= 100;
            c.vp /= 100;
            c.vm /= 100;
            c.removed += 2;
        }
        while (c.vp / 10 > c.vm / 10) drop_digit(&c);
        result = c.vr + (c.vr == c.vm || c.last >= 5);
    }
    *out = result;
    *e10 = base + c.removed;
}

int shortest(double v, char *out) {
    uint64_t b;
    memcpy(&b, &v, 8);
    char *p = out;
    if (b >> 63) *p++ = '-';
    uint64_t mant = b & ((1ull << 52) - 1);
    int bexp = (int)((b >> 52) & 0x7ff);
    if (!bexp && !mant) {
        *p++ = '0';
        return (int)(p - out);
    }
    uint64_t d;
    int e10;
    decimal(mant, bexp, &d, &e10);
    char buf[20];
    int n = digits(d);
    write_digits(d, buf, n);
    int point = n + e10;  /* the value is 0.buf * 10^point */
    int exponent = point - 1;
    if (exponent >= -6 && exponent < 10) {
        if (point <= 0) {
            *p++ = '0';
            *p++ = '.';
            memset(p, '0', (size_t)-point);
            p += -point;
            memcpy(p, buf, (size_t)n);
            p += n;
        } else if (point >= n) {
            memcpy(p, buf, (size_t)n);
            p += n;
            memset(p, '0', (size_t)(point - n));
            p += point - n;
        } else {
            memcpy(p, buf, (size_t)point);
            p += point;
            *p++ = '.';
            memcpy(p, buf + point, (size_t)(n - point));
            p += n - point;
        }
    } else {
        *p++ = buf[0];
        if (n > 1) {
            *p++ = '.';
            memcpy(p, buf + 1, (size_t)(n - 1));
            p += n - 1;
        }
        *p++ = 'e';
        *p++ = exponent < 0 ? '-' : '+';
        int e = exponent < 0 ? -exponent : exponent;
        if (e >= 100) *p++ = (char)('0' + e / 100);
        if (e >= 10) *p++ = (char)('0' + e / 10 % 10);
        *p++ = (char)('0' + e % 10);
    }
    return (int)(p - out);
}
