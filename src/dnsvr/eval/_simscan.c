/* A compiled scanner for similarity files {"query": {"video": number, ...}, ...}.
 *
 * dnsvr.eval._fastjson calls scan(); this file knows only the shape of the text. The scanner
 * runs without the GIL (optionally on two threads, each taking a run of whole query blocks),
 * interns every key in a C hash table so that each distinct id becomes one Python str, and
 * returns flat buffers: per query its vocabulary position, the offset of its scores, and which
 * distinct key sequence it uses (consecutive queries with equal keys share one sequence).
 *
 * Numbers are converted exactly like Python's float(text): Clinger's fast path (at most 19
 * significant digits forming an integer <= 2^53 and a decimal exponent within +-22: one
 * correctly rounded multiplication or division by an exact power of ten) and otherwise
 * glibc's strtod_l in the "C" locale, which is correctly rounded. JSON integers are converted
 * as Python's float(int) does (correctly rounded too), and "-0" (the integer 0) gives +0.0
 * while "-0.0" gives -0.0, as json.loads followed by float() does.
 *
 * Anything outside that shape (escapes, control characters or invalid UTF-8 in keys, nested
 * values, strings, literals, numbers that are not JSON numbers or overflow to infinity,
 * duplicate keys within a query, duplicate queries, trailing text, truncated input) raises
 * ShapeError, and the caller uses a general JSON parser. Every read is bounds-checked.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <locale.h>
#ifdef __APPLE__
#include <xlocale.h>  /* strtod_l */
#endif
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef unsigned char uchar;

static PyObject *ShapeError;  /* ValueError subclass: the text is not in the handled shape */
static locale_t c_locale;     /* "C" numeric locale for strtod_l, whatever the process locale */

/* ------------------------------------------------------------------ growable buffers */

typedef struct {
    char *p;
    size_t n;    /* bytes used */
    size_t cap;  /* bytes allocated */
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->n + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + extra) {
        if (cap > SIZE_MAX / 2) return -1;
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_push_i64(Buf *b, int64_t v) {
    if (buf_reserve(b, sizeof v)) return -1;
    memcpy(b->p + b->n, &v, sizeof v);
    b->n += sizeof v;
    return 0;
}

#define BUF_LEN_I64(b) ((int64_t)((b)->n / sizeof(int64_t)))
#define BUF_I64(b) ((int64_t *)(b)->p)

/* ------------------------------------------------------------------ the key vocabulary */

typedef struct {
    const uchar *key;  /* points into the input */
    uint32_t len;
    uint32_t is_query;
    uint64_t hash;
    int64_t stamp;     /* the last row (query block) in which the key appeared, -1 if none */
} Entry;

typedef struct {
    Entry *entries;
    int64_t n, cap;
    int64_t *slots;    /* open addressing; -1 = empty */
    uint64_t mask;
} Vocab;

static int vocab_init(Vocab *v) {
    v->n = 0;
    v->cap = 1024;
    v->entries = malloc(sizeof(Entry) * (size_t)v->cap);
    v->mask = 2047;
    v->slots = malloc(sizeof(int64_t) * (v->mask + 1));
    if (!v->entries || !v->slots) return -1;
    memset(v->slots, 0xff, sizeof(int64_t) * (v->mask + 1));
    return 0;
}

static void vocab_free(Vocab *v) {
    free(v->entries);
    free(v->slots);
    v->entries = NULL;
    v->slots = NULL;
}

static int vocab_grow_slots(Vocab *v) {
    uint64_t mask = v->mask * 2 + 1;
    int64_t *slots = malloc(sizeof(int64_t) * (mask + 1));
    if (!slots) return -1;
    memset(slots, 0xff, sizeof(int64_t) * (mask + 1));
    for (int64_t i = 0; i < v->n; i++) {
        uint64_t s = v->entries[i].hash & mask;
        while (slots[s] >= 0) s = (s + 1) & mask;
        slots[s] = i;
    }
    free(v->slots);
    v->slots = slots;
    v->mask = mask;
    return 0;
}

/* The index of the key, inserting it if new. Returns -1 when out of memory. */
static int64_t vocab_intern(Vocab *v, const uchar *key, size_t len, uint64_t h) {
    uint64_t s = h & v->mask;
    for (;;) {
        int64_t i = v->slots[s];
        if (i < 0) break;
        Entry *e = &v->entries[i];
        if (e->hash == h && e->len == len && memcmp(e->key, key, len) == 0) return i;
        s = (s + 1) & v->mask;
    }
    if (v->n == v->cap) {
        Entry *entries = realloc(v->entries, sizeof(Entry) * (size_t)v->cap * 2);
        if (!entries) return -1;
        v->entries = entries;
        v->cap *= 2;
    }
    int64_t i = v->n++;
    Entry *e = &v->entries[i];
    e->key = key;
    e->len = (uint32_t)len;
    e->is_query = 0;
    e->hash = h;
    e->stamp = -1;
    v->slots[s] = i;
    if ((uint64_t)v->n * 2 > v->mask && vocab_grow_slots(v)) return -1;
    return i;
}

/* ------------------------------------------------------------------ scanner state */

enum { OK = 0, ERR_SHAPE = 1, ERR_NOMEM = 2 };
enum { END = 0, STOPPED = 1 };  /* parse_rows outcomes: the whole object ended / reached stop_at */

typedef struct {
    const uchar *data;
    size_t size;
    Vocab vocab;
    Buf scores;     /* double, all rows concatenated */
    Buf row_start;  /* int64 per row: offset of its scores (one more at the end) */
    Buf row_seq;    /* int64 per row: its key sequence */
    Buf query_pos;  /* int64 per row: vocabulary index of the query */
    Buf seq_start;  /* int64 per distinct key sequence: offset in keys (one more at the end) */
    Buf keys;       /* int64 vocabulary indices of the key sequences, concatenated */
    int status;
    const char *msg;
    size_t err_pos;
    /* streaming: another thread fills the input and publishes how many bytes are there */
    const int64_t *progress;  /* NULL: the whole input is there */
    size_t avail;             /* bytes known to be filled */
    /* threading */
    size_t begin, stop_at;
    int leading_comma, outcome;
    size_t end_pos;
} Scan;

static void scan_free(Scan *s) {
    vocab_free(&s->vocab);
    free(s->scores.p);
    free(s->row_start.p);
    free(s->row_seq.p);
    free(s->query_pos.p);
    free(s->seq_start.p);
    free(s->keys.p);
    memset(&s->scores, 0, sizeof(Buf));
    s->row_start = s->row_seq = s->query_pos = s->seq_start = s->keys = s->scores;
}

static int fail(Scan *s, const char *msg, const uchar *at) {
    if (s->status == OK) {
        s->status = ERR_SHAPE;
        s->msg = msg;
        s->err_pos = (size_t)(at - s->data);
    }
    return -1;
}

static int nomem(Scan *s) {
    s->status = ERR_NOMEM;
    s->msg = "out of memory";
    return -1;
}

/* Streaming input: wait until `need` bytes from p are filled (or the whole input is). Returns -1
 * when the producer gave up (progress < 0). Reading a byte that is not filled yet is harmless
 * anyway: the buffer starts zeroed and a zero byte is an error everywhere in the handled shape,
 * so the caller re-scans the complete text; waiting only keeps that from happening. */
static int wait_input(Scan *s, const uchar *p, size_t need) {
    size_t want = (size_t)(p - s->data);
    want = need > s->size - want ? s->size : want + need;
    while (s->avail < want) {
        int64_t filled = __atomic_load_n(s->progress, __ATOMIC_ACQUIRE);
        if (filled < 0) return fail(s, "input not available", p);
        s->avail = (size_t)filled < s->size ? (size_t)filled : s->size;
        if (s->avail >= want) break;
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

#define STREAM_WINDOW 65536  /* bytes made available ahead of each entry when streaming */
#define NEED_INPUT(s, p) \
    ((s)->progress && (size_t)((p) - (s)->data) + STREAM_WINDOW > (s)->avail && wait_input((s), (p), STREAM_WINDOW))

static inline const uchar *skip_ws(const uchar *p, const uchar *end) {
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    return p;
}

#define IS_DIGIT(c) ((unsigned)((c) - '0') < 10u)

static const double P10[23] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                               1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static const uint64_t POW10_U64[9] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000};

/* How many of the 8 bytes of w (little-endian: the first byte is the lowest) are leading ASCII
 * digits. A byte is a digit when its high nibble is 3 and adding 6 keeps it so; a carry out of
 * a non-digit byte only disturbs the bytes after it, which are not counted. */
static inline unsigned leading_digits(uint64_t w) {
    const uint64_t hi = 0xF0F0F0F0F0F0F0F0ULL, threes = 0x3030303030303030ULL;
    uint64_t bad = ((w & hi) ^ threes) | (((w + 0x0606060606060606ULL) & hi) ^ threes);
    return bad ? (unsigned)__builtin_ctzll(bad) / 8 : 8;
}

/* The value of eight ASCII digits, the first in the lowest byte; leading zero bytes (0x00, as
 * left by a shift) count as zeros. Non-digit bytes must have been shifted out. */
static inline uint64_t eight_digits(uint64_t w) {
    const uint64_t zeros = 0x3030303030303030ULL;
    w = (w | zeros) - zeros;  /* 0x00 bytes -> '0' -> 0; digit bytes -> 0..9 */
    w = (w * 10) + (w >> 8);  /* pairs */
    w = (((w & 0x000000FF000000FFULL) * (100 + (1000000ULL << 32))) +
         (((w >> 16) & 0x000000FF000000FFULL) * (1 + (10000ULL << 32)))) >> 32;
    return w;
}

/* A JSON number at p; *out gets float(text) bit for bit. Returns the position after it, or NULL. */
static const uchar *parse_number(Scan *s, const uchar *p, const uchar *end, double *out) {
    const uchar *start = p;
    int neg = 0, is_int = 1;
    uint64_t m = 0;  /* the digits (integer part and fraction) as one integer; exact if at most 19 */
    int64_t exp10 = 0;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= end) return fail(s, "truncated number", p), NULL;
    const uchar *digits = p;
    if (*p == '0') {
        p++;
        if (p < end && IS_DIGIT(*p)) return fail(s, "number with a leading zero", p), NULL;
    } else if (*p >= '1' && *p <= '9') {
        do {
            m = m * 10 + (uint64_t)(*p - '0');
            p++;
        } while (p < end && IS_DIGIT(*p));
    } else {
        return fail(s, "a value that is not a number", p), NULL;
    }
    size_t ndigits = (size_t)(p - digits);
    if (p < end && *p == '.') {
        is_int = 0;
        const uchar *frac = ++p;
        /* eight bytes at a time while they can be read: no branch per digit */
        while (end - p >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            unsigned k = leading_digits(w);
            if (k) m = m * POW10_U64[k] + eight_digits(w << (8 * (8 - k)));
            p += k;
            if (k < 8) goto fraction_done;
        }
        while (p < end && IS_DIGIT(*p)) {
            m = m * 10 + (uint64_t)(*p - '0');
            p++;
        }
    fraction_done:
        if (p == frac) return fail(s, "no digit after the decimal point", p), NULL;
        ndigits += (size_t)(p - frac);
        exp10 = -(int64_t)(p - frac);
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        int eneg = 0;
        int64_t e = 0;
        is_int = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-')) {
            eneg = *p == '-';
            p++;
        }
        if (p >= end || !IS_DIGIT(*p)) return fail(s, "no digit in the exponent", p), NULL;
        do {
            if (e < 100000000) e = e * 10 + (*p - '0');
            p++;
        } while (p < end && IS_DIGIT(*p));
        exp10 += eneg ? -e : e;
    }
    if (ndigits <= 19) {  /* m is exact (more digits may have wrapped around: the fallback takes them) */
        if (m == 0) {
            *out = (neg && !is_int) ? -0.0 : 0.0;  /* "-0" is the integer 0 */
            return p;
        }
        if (m <= (1ULL << 53) && exp10 >= -22 && exp10 <= 22) {
            double d = (double)m;  /* exact */
            d = exp10 < 0 ? d / P10[-exp10] : d * P10[exp10];  /* one correctly rounded operation */
            *out = neg ? -d : d;
            return p;
        }
    }
    /* Correctly rounded fallback on a NUL-terminated copy of the (validated) token. */
    size_t len = (size_t)(p - start);
    char small[128];
    char *text = len < sizeof small ? small : malloc(len + 1);
    if (!text) return nomem(s), NULL;
    memcpy(text, start, len);
    text[len] = 0;
    char *stop = NULL;
    double d = strtod_l(text, &stop, c_locale);
    size_t used = (size_t)(stop - text);
    if (text != small) free(text);
    if (used != len) return fail(s, "number not understood", start), NULL;
    if (isinf(d)) return fail(s, "number out of the float range", start), NULL;
    *out = d;
    return p;
}

/* A key string starting at its opening quote: sets key, len and hash; returns the position after
 * the closing quote, or NULL. */
static const uchar *parse_key(Scan *s, const uchar *p, const uchar *end, const uchar **key,
                              size_t *len, uint64_t *hash) {
    if (p >= end || *p != '"') return fail(s, "expected a key", p), NULL;
    const uchar *k = ++p;
    uint64_t h = 1469598103934665603ULL;  /* FNV-1a, hashed while looking for the closing quote */
    for (;;) {
        if (p >= end) return fail(s, "unterminated key", p), NULL;
        uchar c = *p;
        if (c == '"') break;
        if (c == '\\') return fail(s, "escape sequence in a key", p), NULL;
        if (c < 0x20) return fail(s, "control character in a key", p), NULL;
        h ^= c;
        h *= 1099511628211ULL;
        p++;
    }
    if ((size_t)(p - k) > UINT32_MAX) return fail(s, "key too long", k), NULL;
    *key = k;
    *len = (size_t)(p - k);
    *hash = h ^ (h >> 29);
    return p + 1;
}

/* Equal bytes (short keys: two overlapping word compares instead of a memcmp call). */
static inline int key_eq(const uchar *a, const uchar *b, size_t n) {
    if (n >= 8) {
        if (n > 16) return memcmp(a, b, n) == 0;
        uint64_t a1, b1, a2, b2;
        memcpy(&a1, a, 8);
        memcpy(&b1, b, 8);
        memcpy(&a2, a + n - 8, 8);
        memcpy(&b2, b + n - 8, 8);
        return ((a1 ^ b1) | (a2 ^ b2)) == 0;
    }
    if (n >= 4) {
        uint32_t a1, b1, a2, b2;
        memcpy(&a1, a, 4);
        memcpy(&b1, b, 4);
        memcpy(&a2, a + n - 4, 4);
        memcpy(&b2, b + n - 4, 4);
        return ((a1 ^ b1) | (a2 ^ b2)) == 0;
    }
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* One row: "query": { "key": number, ... } starting at the query's opening quote.
 * Returns the position after the row's closing brace, or NULL. */
static const uchar *parse_row(Scan *s, const uchar *p) {
    const uchar *end = s->data + s->size;
    const uchar *key;
    size_t len;
    uint64_t h;
    Vocab *v = &s->vocab;

    if (NEED_INPUT(s, p)) return NULL;
    p = parse_key(s, p, end, &key, &len, &h);
    if (!p) return NULL;
    int64_t q = vocab_intern(v, key, len, h);
    if (q < 0) return nomem(s), NULL;
    if (v->entries[q].is_query) return fail(s, "duplicate query", key), NULL;
    v->entries[q].is_query = 1;
    p = skip_ws(p, end);
    if (p >= end || *p != ':') return fail(s, "expected ':' after a query", p), NULL;
    p = skip_ws(p + 1, end);
    if (p >= end || *p != '{') return fail(s, "a query's results are not an object", p), NULL;
    p = skip_ws(p + 1, end);

    int64_t row = BUF_LEN_I64(&s->row_seq);
    if (buf_push_i64(&s->query_pos, q) || buf_push_i64(&s->row_start, (int64_t)(s->scores.n / sizeof(double))))
        return nomem(s), NULL;

    /* The previous key sequence: keys are first compared with it, position by position. */
    int64_t nseq = BUF_LEN_I64(&s->seq_start);
    int64_t prev_off = 0, prev_len = 0;
    if (nseq > 0) {
        prev_off = BUF_I64(&s->seq_start)[nseq - 1];
        prev_len = BUF_LEN_I64(&s->keys) - prev_off;
    }
    int64_t new_off = BUF_LEN_I64(&s->keys);  /* this row's keys are appended here ... */
    int64_t n = 0;
    int matching = nseq > 0;  /* ... once they differ from the previous row's (until then: not written) */
    const uchar *row_begin = p;

    if (p < end && *p == '}') {
        p++;
    } else {
        for (;;) {
            int64_t idx = -1;
            if (NEED_INPUT(s, p)) return NULL;
            if (p >= end || *p != '"') return fail(s, "expected a key", p), NULL;
            if (matching && n < prev_len) {
                int64_t cand = BUF_I64(&s->keys)[prev_off + n];
                const Entry *c = &v->entries[cand];
                /* c's bytes hold no quote, backslash or control character (checked when interned) */
                if ((size_t)(end - (p + 1)) > c->len && p[1 + c->len] == '"' && key_eq(p + 1, c->key, c->len)) {
                    idx = cand;
                    p += c->len + 2;
                }
            }
            if (idx < 0) {
                if (matching) {  /* the keys differ from here: write the common prefix */
                    matching = 0;
                    if (buf_reserve(&s->keys, sizeof(int64_t) * (size_t)n)) return nomem(s), NULL;
                    memcpy(BUF_I64(&s->keys) + new_off, BUF_I64(&s->keys) + prev_off, sizeof(int64_t) * (size_t)n);
                    s->keys.n += sizeof(int64_t) * (size_t)n;
                }
                p = parse_key(s, p, end, &key, &len, &h);
                if (!p) return NULL;
                idx = vocab_intern(v, key, len, h);
                if (idx < 0) return nomem(s), NULL;
            }
            Entry *e = &v->entries[idx];
            if (e->stamp == row) return fail(s, "duplicate key within a query", e->key), NULL;
            e->stamp = row;
            p = skip_ws(p, end);
            if (p >= end || *p != ':') return fail(s, "expected ':' after a key", p), NULL;
            p = skip_ws(p + 1, end);
            double d;
            p = parse_number(s, p, end, &d);
            if (!p) return NULL;
            if (buf_reserve(&s->scores, sizeof d)) return nomem(s), NULL;
            memcpy(s->scores.p + s->scores.n, &d, sizeof d);
            s->scores.n += sizeof d;
            if (!matching && buf_push_i64(&s->keys, idx)) return nomem(s), NULL;
            n++;
            p = skip_ws(p, end);
            if (p < end && *p == ',') {
                p = skip_ws(p + 1, end);
                continue;
            }
            if (p < end && *p == '}') {
                p++;
                break;
            }
            return fail(s, "expected ',' or '}' after a score", p), NULL;
        }
    }
    if (matching && n == prev_len) {  /* the same keys as the previous row: share its sequence */
        if (buf_push_i64(&s->row_seq, nseq - 1)) return nomem(s), NULL;
    } else {
        if (matching) {  /* a prefix of the previous row's keys */
            if (buf_reserve(&s->keys, sizeof(int64_t) * (size_t)n)) return nomem(s), NULL;
            memcpy(BUF_I64(&s->keys) + new_off, BUF_I64(&s->keys) + prev_off, sizeof(int64_t) * (size_t)n);
            s->keys.n += sizeof(int64_t) * (size_t)n;
        }
        if (buf_push_i64(&s->seq_start, new_off) || buf_push_i64(&s->row_seq, nseq)) return nomem(s), NULL;
    }
    if (row == 0 && n >= 1024) {  /* size the score buffer for the rest, from the first row's density */
        double per_entry = (double)(p - row_begin) / (double)n;
        double rest = (double)(end - p) / per_entry * 1.02 + 1024;
        if (rest < 1e12 && buf_reserve(&s->scores, (size_t)rest * sizeof(double))) return nomem(s), NULL;
    }
    return p;
}

/* Rows from s->begin (the first row's opening quote, or with leading_comma the text before a
 * ',' separating rows) until the closing brace of the whole object (END) or until a row ends
 * exactly at s->stop_at (STOPPED). */
static void *parse_rows(void *arg) {
    Scan *s = arg;
    const uchar *end = s->data + s->size;
    const uchar *p = s->data + s->begin;
    const uchar *stop = s->data + s->stop_at;
    if (s->leading_comma) {
        p = skip_ws(p, end);
        if (p >= end || *p != ',') return fail(s, "expected ',' between queries", p), NULL;
        p = skip_ws(p + 1, end);
    }
    for (;;) {
        p = parse_row(s, p);
        if (!p) return NULL;
        if (p == stop) {
            s->outcome = STOPPED;
            return NULL;
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        if (p < end && *p == '}') {
            if (s->progress && wait_input(s, p, SIZE_MAX)) return NULL;
            p = skip_ws(p + 1, end);
            if (p != end) return fail(s, "text after the end", p), NULL;
            s->outcome = END;
            return NULL;
        }
        return fail(s, "expected ',' or '}' after a query's results", p), NULL;
    }
}

static int scan_init(Scan *s, const uchar *data, size_t size) {
    memset(s, 0, sizeof *s);
    s->data = data;
    s->size = size;
    s->stop_at = SIZE_MAX;
    if (vocab_init(&s->vocab)) return nomem(s);
    return 0;
}

/* A plausible boundary between two query blocks at or after `from`: the position right after a
 * '}' followed by ',' and a quote. It is only a guess (keys may contain braces); the first thread
 * confirms it by ending a row exactly there. Returns 0 when none. */
static size_t guess_split(const uchar *data, size_t size, size_t from) {
    const uchar *end = data + size;
    const uchar *p = data + from;
    while (p < end) {
        const uchar *b = memchr(p, '}', (size_t)(end - p));
        if (!b) return 0;
        const uchar *c = skip_ws(b + 1, end);
        if (c < end && *c == ',') {
            c = skip_ws(c + 1, end);
            if (c < end && *c == '"') return (size_t)(b + 1 - data);
        }
        p = b + 1;
    }
    return 0;
}

/* Append thread b's rows to a (vocabulary merged in first-seen order). */
static int merge(Scan *a, Scan *b) {
    Vocab *v = &a->vocab;
    int64_t *map = malloc(sizeof(int64_t) * (size_t)(b->vocab.n ? b->vocab.n : 1));
    if (!map) return nomem(a);
    for (int64_t i = 0; i < b->vocab.n; i++) {
        Entry *e = &b->vocab.entries[i];
        int64_t j = vocab_intern(v, e->key, e->len, e->hash);
        if (j < 0) {
            free(map);
            return nomem(a);
        }
        if (e->is_query) {
            if (v->entries[j].is_query) {
                free(map);
                return fail(a, "duplicate query", e->key);
            }
            v->entries[j].is_query = 1;
        }
        map[i] = j;
    }
    int64_t nrows_a = BUF_LEN_I64(&a->row_seq), nseq_a = BUF_LEN_I64(&a->seq_start);
    int64_t nscores_a = (int64_t)(a->scores.n / sizeof(double));
    int64_t nkeys_a = BUF_LEN_I64(&a->keys);
    int64_t nrows_b = BUF_LEN_I64(&b->row_seq), nseq_b = BUF_LEN_I64(&b->seq_start);
    int64_t nkeys_b = BUF_LEN_I64(&b->keys);
    if (buf_reserve(&a->scores, b->scores.n) || buf_reserve(&a->keys, b->keys.n) ||
        buf_reserve(&a->row_seq, b->row_seq.n) || buf_reserve(&a->row_start, b->row_start.n) ||
        buf_reserve(&a->query_pos, b->query_pos.n) || buf_reserve(&a->seq_start, b->seq_start.n)) {
        free(map);
        return nomem(a);
    }
    memcpy(a->scores.p + a->scores.n, b->scores.p, b->scores.n);
    a->scores.n += b->scores.n;
    for (int64_t i = 0; i < nkeys_b; i++) BUF_I64(&a->keys)[nkeys_a + i] = map[BUF_I64(&b->keys)[i]];
    a->keys.n += b->keys.n;
    /* b's first sequence may equal a's last one (the usual case): then share it */
    int64_t shift = nseq_a, first = 0;
    if (nseq_a > 0 && nseq_b > 0) {
        int64_t la = nkeys_a - BUF_I64(&a->seq_start)[nseq_a - 1];
        int64_t lb = (nseq_b > 1 ? BUF_I64(&b->seq_start)[1] : nkeys_b);
        if (la == lb && memcmp(BUF_I64(&a->keys) + nkeys_a - la, BUF_I64(&a->keys) + nkeys_a,
                               sizeof(int64_t) * (size_t)la) == 0) {
            memmove(BUF_I64(&a->keys) + nkeys_a, BUF_I64(&a->keys) + nkeys_a + lb,
                    sizeof(int64_t) * (size_t)(nkeys_b - lb));
            a->keys.n -= sizeof(int64_t) * (size_t)lb;
            shift = nseq_a - 1;
            first = 1;
        }
    }
    for (int64_t i = first; i < nseq_b; i++) {
        int64_t off = nkeys_a + BUF_I64(&b->seq_start)[i] - (first ? BUF_I64(&b->seq_start)[1] : 0);
        BUF_I64(&a->seq_start)[BUF_LEN_I64(&a->seq_start)] = off;
        a->seq_start.n += sizeof(int64_t);
    }
    for (int64_t i = 0; i < nrows_b; i++) {
        int64_t seq = BUF_I64(&b->row_seq)[i];
        BUF_I64(&a->row_seq)[nrows_a + i] = seq == 0 && first ? nseq_a - 1 : seq + shift;
        BUF_I64(&a->row_start)[nrows_a + i] = BUF_I64(&b->row_start)[i] + nscores_a;
        BUF_I64(&a->query_pos)[nrows_a + i] = map[BUF_I64(&b->query_pos)[i]];
    }
    a->row_seq.n += b->row_seq.n;
    a->row_start.n += b->row_start.n;
    a->query_pos.n += b->query_pos.n;
    free(map);
    return 0;
}

/* The whole text; threads > 1 splits it in two at a block boundary near the middle. */
static void run_scan(Scan *a, int threads, size_t split_min) {
    const uchar *end = a->data + a->size;
    if (a->progress) {
        threads = 1;  /* the split needs the whole text */
        if (NEED_INPUT(a, a->data)) return;
    }
    const uchar *p = skip_ws(a->data, end);
    if (p >= end || *p != '{') {
        fail(a, "not a JSON object", p);
        return;
    }
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') {
        if (a->progress && wait_input(a, p, SIZE_MAX)) return;
        p = skip_ws(p + 1, end);
        if (p != end) fail(a, "text after the end", p);
        return;
    }
    a->begin = (size_t)(p - a->data);
    size_t split = 0;
    if (threads > 1 && a->size >= split_min) split = guess_split(a->data, a->size, a->begin + (a->size - a->begin) / 2);
    if (split == 0) {
        parse_rows(a);
        if (a->status == OK && a->outcome != END) fail(a, "internal: scan stopped early", p);
        return;
    }
    Scan b;
    if (scan_init(&b, a->data, a->size)) {
        a->status = ERR_NOMEM;
        a->msg = "out of memory";
        scan_free(&b);
        return;
    }
    b.begin = split;
    b.leading_comma = 1;
    a->stop_at = split;
    pthread_t tid;
    int started = pthread_create(&tid, NULL, parse_rows, &b) == 0;
    parse_rows(a);
    if (started) {
        pthread_join(tid, NULL);
    } else {
        parse_rows(&b);
    }
    if (a->status == OK) {
        if (a->outcome == STOPPED) {  /* the guess was a real boundary: b's rows follow a's */
            if (b.status != OK) {
                a->status = b.status;
                a->msg = b.msg;
                a->err_pos = b.err_pos;
            } else {
                merge(a, &b);
            }
        }  /* else a read the whole object (the guess was inside a block): b is discarded */
    }
    scan_free(&b);
}

/* ------------------------------------------------------------------ Python objects */

/* A block of memory exported through the buffer protocol (np.frombuffer views it, no copy). */
typedef struct {
    PyObject_HEAD
    char *ptr;
    Py_ssize_t nbytes;
} Block;

static char empty_block[8];

static void block_dealloc(Block *self) {
    free(self->ptr);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int block_getbuffer(Block *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, self->ptr ? self->ptr : empty_block, self->nbytes, 0, flags);
}

static PyBufferProcs block_as_buffer = {(getbufferproc)block_getbuffer, NULL};

static PyTypeObject BlockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dnsvr.eval._simscan.Block",
    .tp_basicsize = sizeof(Block),
    .tp_dealloc = (destructor)block_dealloc,
    .tp_as_buffer = &block_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Memory owned by the scanner, exported through the buffer protocol.",
};

/* Hands b's memory to a new Block (b is emptied). */
static PyObject *block_from(Buf *b) {
    Block *blk = PyObject_New(Block, &BlockType);
    if (!blk) return NULL;
    blk->ptr = b->p;
    blk->nbytes = (Py_ssize_t)b->n;
    b->p = NULL;
    b->n = b->cap = 0;
    return (PyObject *)blk;
}

PyDoc_STRVAR(scan_doc,
"scan(data, threads=1, split_min_bytes=8 MiB) -> (ids, query_pos, row_start, row_seq, seq_start, keys, scores)\n\n"
"Scan {query: {video: number}} JSON text (any bytes-like object); with threads=2, text of at\n"
"least split_min_bytes is split in two runs of whole query blocks, scanned in parallel.\n"
"progress (an int64 [1] buffer): data is being filled by another thread (zeroed beforehand), which\n"
"stores the number of bytes filled there (-1: gave up); the scan follows it (one thread).\n\n"
"ids: list of str, every key in first-seen order (a query before its results).\n"
"The others are Blocks (buffer protocol) holding int64 arrays, and float64 for scores:\n"
"query_pos [nq] (positions in ids), row_start [nq + 1] (offsets in scores),\n"
"row_seq [nq] (key sequence of each query), seq_start [ns + 1] (offsets in keys),\n"
"keys (positions in ids), scores.\n\n"
"Raises ShapeError when the text is not in this shape (use a general JSON parser).");

static PyObject *scan(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"data", "threads", "split_min_bytes", "progress", NULL};
    Py_buffer view, prog;
    int threads = 1;
    Py_ssize_t split_min = 8 << 20;
    PyObject *progress = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|inO", kwlist, &view, &threads, &split_min, &progress))
        return NULL;
    if (split_min < 0) split_min = 0;
    prog.buf = NULL;
    if (progress != Py_None) {
        if (PyObject_GetBuffer(progress, &prog, PyBUF_WRITABLE) < 0) {
            PyBuffer_Release(&view);
            return NULL;
        }
        if (prog.len != (Py_ssize_t)sizeof(int64_t) || ((uintptr_t)prog.buf % sizeof(int64_t)) != 0) {
            PyBuffer_Release(&prog);
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_ValueError, "progress must be an aligned writable 8-byte buffer (int64 [1])");
            return NULL;
        }
    }
    Scan s;
    int init = scan_init(&s, view.buf, (size_t)view.len);
    s.progress = prog.buf;
    if (init == 0) {
        Py_BEGIN_ALLOW_THREADS
        run_scan(&s, threads, (size_t)split_min);
        Py_END_ALLOW_THREADS
    }
    PyObject *ids = NULL, *result = NULL;
    if (s.status == OK) {  /* the closing offsets */
        if (buf_push_i64(&s.row_start, (int64_t)(s.scores.n / sizeof(double))) ||
            buf_push_i64(&s.seq_start, BUF_LEN_I64(&s.keys)))
            nomem(&s);
    }
    if (s.status == ERR_NOMEM) {
        PyErr_NoMemory();
        goto done;
    }
    if (s.status != OK) {
        PyErr_Format(ShapeError, "%s at byte %zu", s.msg, s.err_pos);
        goto done;
    }
    ids = PyList_New((Py_ssize_t)s.vocab.n);
    if (!ids) goto done;
    for (int64_t i = 0; i < s.vocab.n; i++) {
        Entry *e = &s.vocab.entries[i];
        PyObject *str = PyUnicode_DecodeUTF8((const char *)e->key, (Py_ssize_t)e->len, "strict");
        if (!str) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                PyErr_Clear();
                PyErr_Format(ShapeError, "invalid UTF-8 in a key at byte %zu", (size_t)(e->key - s.data));
            }
            goto done;
        }
        PyList_SET_ITEM(ids, (Py_ssize_t)i, str);
    }
    result = Py_BuildValue("(ONNNNNN)", ids, block_from(&s.query_pos), block_from(&s.row_start),
                           block_from(&s.row_seq), block_from(&s.seq_start), block_from(&s.keys),
                           block_from(&s.scores));
done:
    Py_XDECREF(ids);
    scan_free(&s);
    if (prog.buf) PyBuffer_Release(&prog);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_VARARGS | METH_KEYWORDS, scan_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_simscan",
    "Compiled scanner for {query: {video: number}} similarity files (see dnsvr.eval._fastjson).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__simscan(void) {
    if (!c_locale) {
        c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
        if (!c_locale) return PyErr_NoMemory();
    }
    if (PyType_Ready(&BlockType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    ShapeError = PyErr_NewException("dnsvr.eval._simscan.ShapeError", PyExc_ValueError, NULL);
    if (!ShapeError || PyModule_AddObjectRef(m, "ShapeError", ShapeError) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
