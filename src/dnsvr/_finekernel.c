/* The region stage of the batched fine similarity (dnsvr.fine.regions), fused, in int8 with AVX-512 VNNI.
 *
 * For one query (T1 frames of R region vectors, D dimensions, already int8) against many candidate
 * frames, region_chamfer() writes the frame-to-frame matrix
 *
 *     out[i, j] = mean over query regions r of ( max over candidate regions m of <q_{i,r}, c_{j,m}> )
 *
 * without ever holding the [T1·R, T2·R] product: the dot products of 32 query rows against the R rows
 * of one candidate frame stay in 18 zmm accumulators, their max over the frame's regions is taken in
 * registers, and only the [T1·R] row maxima of one candidate frame reach memory before the mean.
 *
 * Two kinds of candidates, each converted on the fly, one frame at a time, into int8 (thread-local):
 *   - S^f_B codes as packed bits (uint8 [T2, R, D/8], bit 1 = +1, bit 0 = -1, big-endian in a byte,
 *     as np.packbits writes) against a query of ±1 (or 0: padding frames) int8 values. The result is
 *     the exact integer sum of the R maxima divided by R·D in float32, as the torch engine computes it.
 *   - float16 or float32 values (S^f_A, the training-free Chamfer stage) quantised exactly as
 *     dnsvr.fine.codes._quantize_frames does (one symmetric scale per candidate frame: peak = max|x|,
 *     inv = (1/peak)·127, q = round-half-even(x·inv), scale = peak/127), against a query quantised
 *     per row (int8 values and float32 row scales given). Each row maximum, an exact int32, is scaled
 *     by the frame's scale and the query row's scale, then the R values are averaged in float32.
 *
 * vpdpbusd multiplies unsigned by signed bytes, so the query is stored biased, u = q + bias (bias 1
 * for codes, whose values are -1, 0, 1; 128 for int8 values, which are in [-127, 127]), and every dot
 * product is corrected exactly: <q, c> = <u, c> - bias·sum(c), with sum(c) computed per candidate row
 * while it is converted.
 *
 * Layouts. The query is packed once per call as [tiles of 32 rows][D/4][32 rows][4 bytes] (two zmm per
 * step of 4 dimensions). A candidate frame is converted to int8 rows (row-major, D padded to 4; the 9
 * broadcasts of one step address 3 moving pointers plus 1 or 2 row strides: no transposition); a frame
 * with R not a multiple of 9 is split into chunks of 9 rows, the last one filled up with copies of its
 * first row (a copy does not change a maximum). The float32 variant does the same with float32 rows.
 *
 * Cache blocking: each thread takes runs of candidate frames as they come (an atomic counter: a thread
 * that gets more of a shared CPU does more), converts a run (at most ~128 KB) and runs it against the
 * query in blocks of whole frames and whole 32-row tiles (~400 KB), both held in the per-core L2 cache.
 * Threads: POSIX threads (no OpenMP: torch carries its own runtime), the GIL released for the whole
 * computation.
 *
 * The comparator's first layers are here too: conv1 + 2x2 max-pooling + bias + ReLU (conv1_pool, the same
 * fused multiply-adds in window order: the matrix product it replaces to float32 rounding, bit-identical
 * where that BLAS sums in window order too, which varies by CPU) and the 2x2
 * max-pooling after conv2 (max_pool2), both with the column mask of padded pairs.
 *
 * The AVX-512 code is compiled per function (target attributes) and chosen at run time: supported()
 * says whether this CPU has AVX-512 F/BW/VL and VNNI; on any other CPU region_chamfer() refuses, and
 * the caller uses the torch engine (the other entry points likewise). Every buffer size is checked
 * against the shapes before any read.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <immintrin.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,popcnt")))

/* candidate kinds: packed codes, float16/float32 quantised to int8 per frame, float16/float32 in float32 */
enum { KIND_BITS = 0, KIND_F16 = 1, KIND_F32 = 2, KIND_F16_EXACT = 3, KIND_F32_EXACT = 4 };

#define MR 9          /* candidate rows per micro-tile (one frame of 9 regions) */
#define NR 32         /* query rows per micro-tile: two zmm of 16 int32 lanes */
#define MAX_THREADS 64

/* The threads worth starting: at most `threads` and MAX_THREADS, and one per `grain` units of work. */
static int threads_for(int threads, int64_t work, int64_t grain) {
    const int64_t by_work = work / grain + 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    return threads > by_work ? (int)by_work : threads;
}

/* Runs worker on `threads` threads, this one among them, and waits for all. Thread t gets
   (char *)args + t * arg_size (arg_size 0: all share one argument). The workers take their work
   from a shared counter, so a thread that cannot be started is replaced by running its worker here
   afterwards (it finds its share, or nothing left). Called without the GIL. */
static void run_workers(void *(*worker)(void *), void *args, size_t arg_size, int threads) {
    pthread_t tids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    for (int t = 1; t < threads; t++)
        started[t] = pthread_create(&tids[t], NULL, worker, (char *)args + (size_t)t * arg_size) == 0;
    if (threads > 0) worker(args);
    for (int t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(tids[t], NULL);
        else
            worker((char *)args + (size_t)t * arg_size);
    }
}
#define MAX_DIMS 65536 /* |<u, c>| <= 255·127·D must fit in int32 */
#define CAND_CHUNK_BYTES (128 * 1024)
#define QUERY_BLOCK_BYTES (400 * 1024)

typedef struct {
    const uint8_t *qpack; /* [qtiles][k4][NR][4] u8; float32 [qtiles][dims][NR] for the float kinds */
    const float *qscale;  /* [qrows] or NULL (codes) */
    int64_t qrows, qframes;
    int regions, dims, k4, chunks, kind, bias;
    int64_t qblock_rows; /* rows per query block: whole frames and whole tiles */
    const uint8_t *const *fsrc; /* per real candidate frame: its R source rows */
    const int64_t *fcol;        /* per real candidate frame: its output column */
    float *out;
    int64_t ldo; /* out[i * ldo + column] */
    int64_t nframes, grab; /* real candidate frames; frames a thread takes at a time */
    atomic_llong next;     /* the first frame not taken yet */
} Job;

typedef struct {
    Job *job;
    int failed; /* scratch allocation failed */
} Slice;

static void *alloc64(size_t bytes) {
    size_t n = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, n ? n : 64);
}

/* 32 query rows (one tile) against one chunk of MR candidate rows: the max over the chunk's rows of the
 * corrected dot products, stored (first chunk of a frame) or max-combined into dst[0..31]. */
TARGET static inline void micro_tile(const uint8_t *qp, const int8_t *cb, size_t ks, int k4, const int32_t *corr,
                                     int32_t *dst, int first) {
    /* the inner step in assembly: with the vpdpbusd intrinsic, GCC 12 copies all 18 accumulators (and
     * spills some) on every step */
#define ZERO2(m) __m512i a##m##0 = _mm512_setzero_si512(), a##m##1 = _mm512_setzero_si512()
    ZERO2(0); ZERO2(1); ZERO2(2); ZERO2(3); ZERO2(4); ZERO2(5); ZERO2(6); ZERO2(7); ZERO2(8);
#undef ZERO2
    for (int k = 0; k < k4; k++) {
        const __m512i q0 = _mm512_load_si512((const void *)(qp + (size_t)k * (NR * 4)));
        const __m512i q1 = _mm512_load_si512((const void *)(qp + (size_t)k * (NR * 4) + 64));
        /* the candidate rows are row-major (stride ks): rows 0-2 from p, 3-5 from p + 3·ks, 6-8 from p + 6·ks */
        const int8_t *p0 = cb + (size_t)k * 4, *p3 = p0 + 3 * ks, *p6 = p0 + 6 * ks;
        __m512i t;
#define DP(m, addr)                                                                             \
    "vpbroadcastd " addr ", %[t]\n\t"                                                            \
    "vpdpbusd %[t], %[q0], %[a" #m "0]\n\t"                                                      \
    "vpdpbusd %[t], %[q1], %[a" #m "1]\n\t"
        /* two statements: at most 30 operands each */
        __asm__(DP(0, "(%[p0])") DP(1, "(%[p0],%[s],1)") DP(2, "(%[p0],%[s],2)") DP(3, "(%[p3])")
                DP(4, "(%[p3],%[s],1)")
                : [a00] "+v"(a00), [a01] "+v"(a01), [a10] "+v"(a10), [a11] "+v"(a11), [a20] "+v"(a20),
                  [a21] "+v"(a21), [a30] "+v"(a30), [a31] "+v"(a31), [a40] "+v"(a40), [a41] "+v"(a41),
                  [t] "=&v"(t)
                : [q0] "v"(q0), [q1] "v"(q1), [p0] "r"(p0), [p3] "r"(p3), [s] "r"(ks)
                : "memory");
        __asm__(DP(5, "(%[p3],%[s],2)") DP(6, "(%[p6])") DP(7, "(%[p6],%[s],1)") DP(8, "(%[p6],%[s],2)")
                : [a50] "+v"(a50), [a51] "+v"(a51), [a60] "+v"(a60), [a61] "+v"(a61), [a70] "+v"(a70),
                  [a71] "+v"(a71), [a80] "+v"(a80), [a81] "+v"(a81), [t] "=&v"(t)
                : [q0] "v"(q0), [q1] "v"(q1), [p3] "r"(p3), [p6] "r"(p6), [s] "r"(ks)
                : "memory");
#undef DP
    }
    __m512i r0 = _mm512_sub_epi32(a00, _mm512_set1_epi32(corr[0]));
    __m512i r1 = _mm512_sub_epi32(a01, _mm512_set1_epi32(corr[0]));
#define MAX2(m)                                                                 \
    do {                                                                        \
        const __m512i cm = _mm512_set1_epi32(corr[m]);                          \
        r0 = _mm512_max_epi32(r0, _mm512_sub_epi32(a##m##0, cm));               \
        r1 = _mm512_max_epi32(r1, _mm512_sub_epi32(a##m##1, cm));               \
    } while (0)
    MAX2(1); MAX2(2); MAX2(3); MAX2(4); MAX2(5); MAX2(6); MAX2(7); MAX2(8);
#undef MAX2
    if (!first) {
        r0 = _mm512_max_epi32(r0, _mm512_loadu_si512((const void *)dst));
        r1 = _mm512_max_epi32(r1, _mm512_loadu_si512((const void *)(dst + 16)));
    }
    _mm512_storeu_si512((void *)dst, r0);
    _mm512_storeu_si512((void *)(dst + 16), r1);
}

/* Packed bits of one row (D/8 bytes) → ±1 int8 (D values, natural order); returns the sum of the codes. */
TARGET static int32_t unpack_row(const uint8_t *src, int dims, int8_t *dst) {
    const int nbytes = dims / 8;
    /* the 8 source bytes are broadcast to every qword; byte j of 128-bit lane L takes source byte
     * 2L + j/8 (qword i of the index is i in every byte), then byte j of each group of 8 tests bit 7 - j */
    const long long one = 0x0101010101010101LL;
    const __m512i lane_index = _mm512_set_epi64(7 * one, 6 * one, 5 * one, 4 * one, 3 * one, 2 * one, one, 0);
    const __m512i bitsel = _mm512_set1_epi64((long long)0x0102040810204080ULL);
    const __m512i plus = _mm512_set1_epi8(1), minus = _mm512_set1_epi8(-1);
    int ones = 0;
    int b = 0;
    for (; b + 8 <= nbytes; b += 8) {
        uint64_t word;
        memcpy(&word, src + b, 8);
        const __m512i v = _mm512_set1_epi64((long long)word);
        const __m512i bytes = _mm512_shuffle_epi8(v, lane_index);
        const __mmask64 mask = _mm512_test_epi8_mask(bytes, bitsel);
        _mm512_storeu_si512((void *)(dst + 8 * b), _mm512_mask_blend_epi8(mask, minus, plus));
        ones += (int)_mm_popcnt_u64(mask);
    }
    for (; b < nbytes; b++) {
        for (int i = 0; i < 8; i++) {
            const int bit = (src[b] >> (7 - i)) & 1;
            dst[8 * b + i] = (int8_t)(bit ? 1 : -1);
            ones += bit;
        }
    }
    return 2 * ones - dims;
}

/* Load 16 values (float16 or float32) as float32, masked to `n` (< 16 at a row's end). */
TARGET static inline __m512 load16(const uint8_t *src, int64_t i, int n, int kind) {
    const __mmask16 m = n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u);
    if (kind == KIND_F16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const void *)(src + 2 * i)));
    return _mm512_maskz_loadu_ps(m, (const void *)(src + 4 * i));
}

/* One candidate frame (R rows of float16/float32) → int8 with one scale (as _quantize_frames); rows written
 * into `rows` (R × k4·4, zero-padded), sums of each row into `sums`. Returns the frame's scale. */
TARGET static float quantize_frame(const uint8_t *src, int regions, int dims, int kind, int k4, int8_t *rows,
                                   int32_t *sums) {
    const int64_t n = (int64_t)regions * dims;
    __m512 peak = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        const int left = (int)(n - i < 16 ? n - i : 16);
        peak = _mm512_max_ps(peak, _mm512_abs_ps(load16(src, i, left, kind)));
    }
    float p = _mm512_reduce_max_ps(peak);
    float inv = 0.0f;
    if (p > 0.0f) inv = (1.0f / (p < 1e-30f ? 1e-30f : p)) * 127.0f;
    const __m512 vinv = _mm512_set1_ps(inv);
    const int width = 4 * k4;
    for (int r = 0; r < regions; r++) {
        int8_t *dst = rows + (size_t)r * width;
        memset(dst, 0, (size_t)width);
        __m512i acc = _mm512_setzero_si512();
        for (int d = 0; d < dims; d += 16) {
            const int left = dims - d < 16 ? dims - d : 16;
            const __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
            const __m512 x = load16(src, (int64_t)r * dims + d, left, kind);
            /* round half to even (the default rounding mode), as torch's round_() */
            const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(x, vinv));
            acc = _mm512_add_epi32(acc, _mm512_maskz_mov_epi32(m, q));
            _mm_mask_storeu_epi8((void *)(dst + d), m, _mm512_cvtepi32_epi8(q));
        }
        sums[r] = _mm512_reduce_add_epi32(acc);
    }
    return p / 127.0f;
}

/* Convert one candidate frame into rows of int8 (chunks·MR rows of k4·4 bytes, zero-padded; the rows
 * after the last region copies of its chunk's first row) and each row's correction. */
TARGET static float convert_frame(const Job *job, const uint8_t *src, int32_t *sums, int8_t *dst, int32_t *corr) {
    const int regions = job->regions, k4 = job->k4, rows = job->chunks * MR;
    const int width = 4 * k4;
    float scale = 1.0f;
    if (job->kind == KIND_BITS) {
        const int nbytes = job->dims / 8;
        for (int r = 0; r < regions; r++) {
            int8_t *row = dst + (size_t)r * width;
            memset(row, 0, (size_t)width);
            sums[r] = unpack_row(src + (size_t)r * nbytes, job->dims, row);
        }
    } else {
        scale = quantize_frame(src, regions, job->dims, job->kind, k4, dst, sums);
    }
    for (int r = regions; r < rows; r++) { /* a copy does not change a maximum */
        const int first = r / MR * MR;
        memcpy(dst + (size_t)r * width, dst + (size_t)first * width, (size_t)width);
        sums[r] = sums[first];
    }
    for (int r = 0; r < rows; r++) corr[r] = job->bias * sums[r];
    return scale;
}

TARGET static void *run_slice(void *arg) {
    Slice *s = (Slice *)arg;
    Job *job = s->job;
    const int regions = job->regions, k4 = job->k4, chunks = job->chunks;
    const size_t frame_bytes = (size_t)chunks * k4 * MR * 4;
    const int64_t per_chunk = job->grab;
    const int64_t block_rows = job->qblock_rows;
    int8_t *cbuf = alloc64((size_t)per_chunk * frame_bytes);
    int32_t *corr = malloc(sizeof(int32_t) * (size_t)per_chunk * chunks * MR);
    float *scales = malloc(sizeof(float) * (size_t)per_chunk);
    int32_t *sums = malloc(sizeof(int32_t) * (size_t)chunks * MR);
    const size_t ldm = (size_t)(block_rows + NR); /* rowmax: one row of maxima per frame of the run */
    int32_t *rowmax = alloc64(sizeof(int32_t) * ldm * (size_t)per_chunk);
    if (!cbuf || !corr || !scales || !sums || !rowmax) {
        s->failed = 1;
        goto done;
    }
    /* runs of frames taken as they come (a thread that gets more of the CPU does more of the work) */
    for (;;) {
        const int64_t g0 = (int64_t)atomic_fetch_add(&job->next, (long long)per_chunk);
        if (g0 >= job->nframes) break;
        const int64_t nf = job->nframes - g0 < per_chunk ? job->nframes - g0 : per_chunk;
        for (int64_t j = 0; j < nf; j++)
            scales[j] = convert_frame(job, job->fsrc[g0 + j], sums, cbuf + (size_t)j * frame_bytes,
                                      corr + (size_t)j * chunks * MR);
        for (int64_t b0 = 0; b0 < job->qrows; b0 += block_rows) {
            const int64_t b1 = b0 + block_rows < job->qrows ? b0 + block_rows : job->qrows;
            /* a query tile (16 KB at D = 512) stays in L1 while the run's frames stream from L2 */
            for (int64_t t0 = b0; t0 < b1; t0 += NR) {
                const uint8_t *qp = job->qpack + (size_t)(t0 / NR) * k4 * NR * 4;
                for (int64_t j = 0; j < nf; j++) {
                    const int8_t *frame = cbuf + (size_t)j * frame_bytes;
                    const int32_t *fcorr = corr + (size_t)j * chunks * MR;
                    for (int c = 0; c < chunks; c++)
                        micro_tile(qp, frame + (size_t)c * k4 * MR * 4, (size_t)4 * k4, k4, fcorr + c * MR,
                                   rowmax + j * ldm + (t0 - b0), c == 0);
                }
            }
            for (int64_t j = 0; j < nf; j++) {
                /* the mean over each query frame's regions (block bounds are frame bounds) */
                float *out = job->out + job->fcol[g0 + j];
                for (int64_t i = b0 / regions; i < b1 / regions; i++) {
                    const int32_t *mx = rowmax + j * ldm + (i * regions - b0);
                    if (job->kind == KIND_BITS) {
                        int32_t total = 0;
                        for (int r = 0; r < regions; r++) total += mx[r];
                        out[i * job->ldo] = (float)total / (float)(regions * job->dims);
                    } else {
                        const float *qs = job->qscale + i * regions;
                        float total = 0.0f;
                        for (int r = 0; r < regions; r++) total += ((float)mx[r] * scales[j]) * qs[r];
                        out[i * job->ldo] = total / (float)regions;
                    }
                }
            }
        }
    }
done:
    free(cbuf);
    free(corr);
    free(scales);
    free(sums);
    free(rowmax);
    return NULL;
}

/* ------------------------------------------------------------------ the float32 variant (exact products) */

/* 32 query rows against MR candidate rows in float32: D steps of 2 loads, 9 broadcasts, 18 FMAs; the max over
 * the chunk's rows, stored or max-combined into dst[0..31]. */
TARGET static inline void micro_tile_f32(const float *qp, const float *cb, size_t ks, int dims, float *dst,
                                         int first) {
#define ZERO2(m) __m512 a##m##0 = _mm512_setzero_ps(), a##m##1 = _mm512_setzero_ps()
    ZERO2(0); ZERO2(1); ZERO2(2); ZERO2(3); ZERO2(4); ZERO2(5); ZERO2(6); ZERO2(7); ZERO2(8);
#undef ZERO2
    for (int d = 0; d < dims; d++) {
        const __m512 q0 = _mm512_load_ps(qp + (size_t)d * NR);
        const __m512 q1 = _mm512_load_ps(qp + (size_t)d * NR + 16);
        /* row-major candidate rows (stride ks floats): rows 0-2 from p0, 3-5 from p3, 6-8 from p6 */
        const float *p0 = cb + d, *p3 = p0 + 3 * ks, *p6 = p0 + 6 * ks;
#define ROW(m) ((m) < 3 ? p0[(m) * ks] : (m) < 6 ? p3[((m) - 3) * ks] : p6[((m) - 6) * ks])
#define STEP(m)                                                   \
    do {                                                          \
        const __m512 b = _mm512_set1_ps(ROW(m));                  \
        a##m##0 = _mm512_fmadd_ps(q0, b, a##m##0);                \
        a##m##1 = _mm512_fmadd_ps(q1, b, a##m##1);                \
    } while (0)
        STEP(0); STEP(1); STEP(2); STEP(3); STEP(4); STEP(5); STEP(6); STEP(7); STEP(8);
#undef STEP
#undef ROW
    }
    __m512 r0 = a00, r1 = a01;
#define MAX2(m)                                 \
    do {                                        \
        r0 = _mm512_max_ps(r0, a##m##0);        \
        r1 = _mm512_max_ps(r1, a##m##1);        \
    } while (0)
    MAX2(1); MAX2(2); MAX2(3); MAX2(4); MAX2(5); MAX2(6); MAX2(7); MAX2(8);
#undef MAX2
    if (!first) {
        r0 = _mm512_max_ps(r0, _mm512_loadu_ps(dst));
        r1 = _mm512_max_ps(r1, _mm512_loadu_ps(dst + 16));
    }
    _mm512_storeu_ps(dst, r0);
    _mm512_storeu_ps(dst + 16, r1);
}

/* One candidate frame (R rows of float16/float32) as float32 rows (chunks·MR rows of dims; the rows after
 * the last region copies of its chunk's first row). */
TARGET static void convert_frame_f32(const Job *job, const uint8_t *src, float *dst) {
    const int regions = job->regions, dims = job->dims;
    const int kind = job->kind == KIND_F16_EXACT ? KIND_F16 : KIND_F32;
    for (int r = 0; r < job->chunks * MR; r++) {
        const int from = r < regions ? r : r / MR * MR; /* a copy does not change a maximum */
        for (int d = 0; d < dims; d += 16) {
            const int left = dims - d < 16 ? dims - d : 16;
            const __mmask16 k = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
            _mm512_mask_storeu_ps(dst + (size_t)r * dims + d, k, load16(src, (int64_t)from * dims + d, left, kind));
        }
    }
}

TARGET static void *run_slice_f32(void *arg) {
    Slice *s = (Slice *)arg;
    Job *job = s->job;
    const int regions = job->regions, dims = job->dims, chunks = job->chunks;
    const size_t frame_floats = (size_t)chunks * dims * MR;
    const int64_t per_chunk = job->grab;
    const int64_t block_rows = job->qblock_rows;
    const size_t ldm = (size_t)(block_rows + NR);
    const float *qpack = (const float *)(const void *)job->qpack;
    float *cbuf = alloc64(sizeof(float) * (size_t)per_chunk * frame_floats);
    float *rowmax = alloc64(sizeof(float) * ldm * (size_t)per_chunk);
    if (!cbuf || !rowmax) {
        s->failed = 1;
        goto done;
    }
    for (;;) {
        const int64_t g0 = (int64_t)atomic_fetch_add(&job->next, (long long)per_chunk);
        if (g0 >= job->nframes) break;
        const int64_t nf = job->nframes - g0 < per_chunk ? job->nframes - g0 : per_chunk;
        for (int64_t j = 0; j < nf; j++) convert_frame_f32(job, job->fsrc[g0 + j], cbuf + (size_t)j * frame_floats);
        for (int64_t b0 = 0; b0 < job->qrows; b0 += block_rows) {
            const int64_t b1 = b0 + block_rows < job->qrows ? b0 + block_rows : job->qrows;
            for (int64_t t0 = b0; t0 < b1; t0 += NR) {
                const float *qp = qpack + (size_t)(t0 / NR) * dims * NR;
                for (int64_t j = 0; j < nf; j++) {
                    const float *frame = cbuf + (size_t)j * frame_floats;
                    for (int c = 0; c < chunks; c++)
                        micro_tile_f32(qp, frame + (size_t)c * dims * MR, (size_t)dims, dims,
                                       rowmax + j * ldm + (t0 - b0), c == 0);
                }
            }
            for (int64_t j = 0; j < nf; j++) {
                float *out = job->out + job->fcol[g0 + j];
                for (int64_t i = b0 / regions; i < b1 / regions; i++) {
                    const float *mx = rowmax + j * ldm + (i * regions - b0);
                    float total = 0.0f;
                    for (int r = 0; r < regions; r++) total += mx[r];
                    out[i * job->ldo] = total / (float)regions;
                }
            }
        }
    }
done:
    free(cbuf);
    free(rowmax);
    return NULL;
}

/* The float32 query [qrows, dims] as [tiles][dims][NR]; rows beyond qrows are 0. */
static void pack_query_f32(const float *q, int64_t qrows, int dims, float *dst) {
    const int64_t tiles = (qrows + NR - 1) / NR;
    memset(dst, 0, sizeof(float) * (size_t)tiles * dims * NR);
    for (int64_t i = 0; i < qrows; i++) {
        float *base = dst + (size_t)(i / NR) * dims * NR + (size_t)(i % NR);
        const float *row = q + (size_t)i * dims;
        for (int d = 0; d < dims; d++) base[(size_t)d * NR] = row[d];
    }
}

/* The query (int8 [qrows, dims]) biased to u8 in [tiles][k4][NR][4]; rows beyond qrows and dims are 0.
 * Returns -1 when out of memory. */
TARGET static int pack_query(const int8_t *q, int64_t qrows, int dims, int k4, int bias, uint8_t *dst) {
    const int64_t tiles = (qrows + NR - 1) / NR;
    memset(dst, 0, (size_t)tiles * k4 * NR * 4);
    uint8_t *row = alloc64((size_t)k4 * 4 + 64);
    if (!row) return -1;
    const __m512i vbias = _mm512_set1_epi8((char)bias);
    for (int64_t i = 0; i < qrows; i++) {
        const int8_t *src = q + (size_t)i * dims;
        memset(row, 0, (size_t)k4 * 4);
        for (int d = 0; d < dims; d += 64) {
            const int left = dims - d < 64 ? dims - d : 64;
            const __mmask64 m = left >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << left) - 1);
            const __m512i x = _mm512_maskz_loadu_epi8(m, (const void *)(src + d));
            _mm512_mask_storeu_epi8((void *)(row + d), m, _mm512_add_epi8(x, vbias));
        }
        uint8_t *base = dst + (size_t)(i / NR) * k4 * NR * 4 + (size_t)(i % NR) * 4;
        for (int k = 0; k < k4; k++) memcpy(base + (size_t)k * NR * 4, row + 4 * k, 4);
    }
    free(row);
    return 0;
}

static int64_t gcd64(int64_t a, int64_t b) {
    while (b) {
        const int64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static int cpu_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
           __builtin_cpu_supports("popcnt");
}

PyDoc_STRVAR(supported_doc, "supported() -> bool: whether this CPU can run region_chamfer (AVX-512 F/BW/VL + VNNI).");

static PyObject *supported(PyObject *self, PyObject *noargs) { return PyBool_FromLong(cpu_supported()); }

PyDoc_STRVAR(region_chamfer_doc,
             "region_chamfer(query, q_scale, candidates, frames, out, kind, regions, dims, threads)\n\n"
             "query: int8 buffer [T1*regions, dims]; q_scale: float32 [T1*regions] (kind 1, 2) or None (kind 0);\n"
             "candidates: sequence of C-contiguous buffers [T2_i, regions, dims/8] uint8 packed bits (kind 0),\n"
             "float16 (kind 1) or float32 (kind 2) [T2_i, regions, dims]; frames: sequence of int, each\n"
             ">= T2_i (columns beyond T2_i are zero); out: writable float32 [T1, sum(frames)], filled.");

static PyObject *region_chamfer(PyObject *self, PyObject *args) {
    Py_buffer qbuf = {0}, sbuf = {0}, obuf = {0};
    PyObject *scale_obj, *cand_obj, *frames_obj;
    int kind, regions, dims, threads;
    if (!PyArg_ParseTuple(args, "y*OOOw*iiii", &qbuf, &scale_obj, &cand_obj, &frames_obj, &obuf, &kind, &regions,
                          &dims, &threads))
        return NULL;
    PyObject *result = NULL, *cands = NULL, *frames = NULL;
    Py_buffer *views = NULL;
    Py_ssize_t nviews = 0;
    const uint8_t **fsrc = NULL;
    int64_t *fcol = NULL;
    uint8_t *qpack = NULL;
    int have_scale = 0;

    if (!cpu_supported()) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU lacks AVX-512 VNNI: use the torch engine");
        goto done;
    }
    if (kind < KIND_BITS || kind > KIND_F32_EXACT || regions < 1 || dims < 1 || dims > MAX_DIMS || threads < 1) {
        PyErr_Format(PyExc_ValueError, "bad arguments: kind %d, regions %d, dims %d, threads %d", kind, regions,
                     dims, threads);
        goto done;
    }
    if (kind == KIND_BITS && dims % 8) {
        PyErr_Format(PyExc_ValueError, "packed codes need dims a multiple of 8, got %d", dims);
        goto done;
    }
    const int float_mode = kind >= KIND_F16_EXACT;
    const int64_t row_len = (int64_t)regions * dims, q_item = float_mode ? 4 : 1;
    if (qbuf.len % (row_len * q_item)) {
        PyErr_Format(PyExc_ValueError, "query has %zd bytes, not a whole number of frames of %d x %d %s",
                     qbuf.len, regions, dims, float_mode ? "float32" : "int8");
        goto done;
    }
    const int64_t qframes = qbuf.len / (row_len * q_item), qrows = qframes * regions;
    if (kind == KIND_BITS || float_mode) {
        if (scale_obj != Py_None) {
            PyErr_SetString(PyExc_ValueError, "packed codes and float32 products take no query scales");
            goto done;
        }
    } else {
        if (PyObject_GetBuffer(scale_obj, &sbuf, PyBUF_SIMPLE) < 0) goto done;
        have_scale = 1;
        if (sbuf.len != (Py_ssize_t)(qrows * (int64_t)sizeof(float))) {
            PyErr_Format(PyExc_ValueError, "query scales have %zd bytes, expected %lld float32", sbuf.len,
                         (long long)qrows);
            goto done;
        }
    }
    cands = PySequence_Fast(cand_obj, "candidates must be a sequence of buffers");
    if (!cands) goto done;
    frames = PySequence_Fast(frames_obj, "frames must be a sequence of int");
    if (!frames) goto done;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(cands);
    if (PySequence_Fast_GET_SIZE(frames) != n) {
        PyErr_Format(PyExc_ValueError, "%zd candidates but %zd frame counts", n, PySequence_Fast_GET_SIZE(frames));
        goto done;
    }
    const int64_t item = kind == KIND_BITS ? 1 : ((kind == KIND_F16 || kind == KIND_F16_EXACT) ? 2 : 4);
    const int64_t frame_bytes = kind == KIND_BITS ? (int64_t)regions * (dims / 8) : row_len * item;
    views = calloc((size_t)(n ? n : 1), sizeof(Py_buffer));
    if (!views) {
        PyErr_NoMemory();
        goto done;
    }
    int64_t total_cols = 0, real_frames = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(cands, i), &views[i], PyBUF_SIMPLE) < 0) goto done;
        nviews = i + 1;
        const long long f = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(frames, i));
        if (f == -1 && PyErr_Occurred()) goto done;
        if (views[i].len % frame_bytes || f < views[i].len / frame_bytes) {
            PyErr_Format(PyExc_ValueError, "candidate %zd has %zd bytes: not a whole number of %lld-byte frames, "
                         "or more than its %lld frames", i, views[i].len, (long long)frame_bytes, f);
            goto done;
        }
        total_cols += f;
        real_frames += views[i].len / frame_bytes;
    }
    if (obuf.len != (Py_ssize_t)(qframes * total_cols * (int64_t)sizeof(float))) {
        PyErr_Format(PyExc_ValueError, "out has %zd bytes, expected float32 [%lld, %lld]", obuf.len,
                     (long long)qframes, (long long)total_cols);
        goto done;
    }
    fsrc = malloc(sizeof(*fsrc) * (size_t)(real_frames ? real_frames : 1));
    fcol = malloc(sizeof(*fcol) * (size_t)(real_frames ? real_frames : 1));
    const int k4 = (dims + 3) / 4;
    /* bytes of one packed row (query) or converted row (candidate): int8 padded to 4, or float32 */
    const int64_t packed_row = float_mode ? 4 * (int64_t)dims : 4 * (int64_t)k4;
    const int64_t qtiles = (qrows + NR - 1) / NR;
    qpack = alloc64((size_t)(qtiles ? qtiles : 1) * NR * packed_row);
    if (!fsrc || !fcol || !qpack) {
        PyErr_NoMemory();
        goto done;
    }
    float *out = (float *)obuf.buf;
    {
        int64_t col = 0, k = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            const int64_t have = views[i].len / frame_bytes;
            const long long f = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(frames, i));
            for (int64_t j = 0; j < have; j++, k++) {
                fsrc[k] = (const uint8_t *)views[i].buf + j * frame_bytes;
                fcol[k] = col + j;
            }
            for (int64_t j = have; j < f; j++) /* padding frames: their products are all zero */
                for (int64_t r = 0; r < qframes; r++) out[r * total_cols + col + j] = 0.0f;
            col += f;
        }
    }
    Job job;
    job.qpack = qpack;
    job.qscale = have_scale ? (const float *)sbuf.buf : NULL;
    job.qrows = qrows;
    job.qframes = qframes;
    job.regions = regions;
    job.dims = dims;
    job.k4 = k4;
    job.chunks = (regions + MR - 1) / MR;
    job.kind = kind;
    job.bias = kind == KIND_BITS ? 1 : 128;
    {
        /* query blocks of whole frames and whole tiles, about QUERY_BLOCK_BYTES of packed query */
        const int64_t unit = (int64_t)regions / gcd64(regions, NR) * NR;
        int64_t units = QUERY_BLOCK_BYTES / (unit * packed_row);
        if (units < 1) units = 1;
        job.qblock_rows = unit * units;
    }
    job.fsrc = fsrc;
    job.fcol = fcol;
    job.out = out;
    job.ldo = total_cols;
    job.nframes = real_frames;
    atomic_init(&job.next, 0);
    {
        /* no more threads than ~4 M multiply-adds each would pay for */
        threads = threads_for(threads, real_frames * qrows * regions * (int64_t)dims, (int64_t)1 << 22);
        if (threads > real_frames) threads = (int)(real_frames ? real_frames : 1);
        /* runs of frames: at most ~CAND_CHUNK_BYTES converted, and ~8 runs per thread to balance */
        const int64_t converted_bytes = (int64_t)job.chunks * MR * packed_row; /* one frame, converted */
        int64_t grab = CAND_CHUNK_BYTES / converted_bytes;
        const int64_t share = (real_frames + 8 * threads - 1) / (8 * threads);
        if (grab > share) grab = share;
        job.grab = grab < 1 ? 1 : grab;
    }
    Slice slices[MAX_THREADS];
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    if (float_mode)
        pack_query_f32((const float *)qbuf.buf, qrows, dims, (float *)(void *)qpack);
    else
        failed = pack_query((const int8_t *)qbuf.buf, qrows, dims, k4, job.bias, qpack) != 0;
    void *(*worker)(void *) = float_mode ? run_slice_f32 : run_slice;
    for (int t = 0; t < threads; t++) {
        slices[t].job = &job;
        slices[t].failed = 0;
    }
    if (!failed) {
        run_workers(worker, slices, sizeof(Slice), threads);
        for (int t = 0; t < threads; t++) failed |= slices[t].failed;
    }
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    for (Py_ssize_t i = 0; i < nviews; i++) PyBuffer_Release(&views[i]);
    free(views);
    free(fsrc);
    free(fcol);
    free(qpack);
    Py_XDECREF(cands);
    Py_XDECREF(frames);
    if (have_scale) PyBuffer_Release(&sbuf);
    PyBuffer_Release(&qbuf);
    PyBuffer_Release(&obuf);
    return result;
}

/* ------------------------------------------------------------------ comparator stages: shared argument checks */

/* The sizes of a comparator feature map call: 0, or -1 with the Python error set. */
static int check_map_args(int channels, long long batch, long long h, long long w, int threads) {
    if (!cpu_supported()) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU lacks AVX-512: use the torch engine");
        return -1;
    }
    if (channels < 16 || channels % 16 || batch < 0 || h < 2 || w < 2 || threads < 1 || h > (1LL << 30) ||
        w > (1LL << 30) || batch > (1LL << 30)) {
        PyErr_Format(PyExc_ValueError, "bad arguments: channels %d, batch %lld, h %lld, w %lld, threads %d",
                     channels, batch, h, w, threads);
        return -1;
    }
    return 0;
}

/* The optional per-pair valid widths (int64 [batch] or None) into vbuf; *have_valid says whether vbuf
   holds a buffer to release (also after an error). 0, or -1 with the Python error set. */
static int get_valid(PyObject *valid_obj, Py_buffer *vbuf, long long batch, int *have_valid) {
    if (valid_obj == Py_None) return 0;
    if (PyObject_GetBuffer(valid_obj, vbuf, PyBUF_SIMPLE) < 0) return -1;
    *have_valid = 1;
    if (vbuf->len != (Py_ssize_t)(batch * 8)) {
        PyErr_Format(PyExc_ValueError, "valid has %zd bytes, expected int64 [%lld]", vbuf->len, batch);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ comparator: conv1 + 2x2 max-pooling */

typedef struct {
    const float *sim;    /* [B, H, W] */
    const float *wphase; /* [16, 4C]: conv1's 3x3 kernel at the 4 phases of a 4x4 window (row k = 4·wr + wc) */
    const float *bias;   /* [C] */
    const int64_t *valid; /* [B] pooled columns to keep (the rest are zeroed), or NULL */
    float *out;          /* [B, ho, wo, C] */
    int64_t batch, h, w, ho, wo;
    int channels;
    atomic_llong next; /* next (pair, pooled row) to take */
} Conv1Job;

/* One pooled row of one pair: for each pooled column, the 4x4 input window (zero outside the matrix) times
 * each phase's kernel, summed in the order of the window (row-major) with one fused multiply-add per nonzero
 * tap, the max over the phases, then bias and ReLU. The 4 phases share the 3x3 kernel (held in registers, 16
 * channels at a time); they differ only in which window values meet which tap. */
TARGET static void conv1_row(const Conv1Job *job, int64_t b, int64_t i) {
    const int64_t h = job->h, w = job->w, wo = job->wo;
    const int channels = job->channels, ldw = 4 * channels;
    const float *sim = job->sim + b * h * w;
    float *out = job->out + ((b * job->ho + i) * wo) * channels;
    const int64_t keep = job->valid ? (job->valid[b] < wo ? job->valid[b] : wo) : wo;
    const int full_rows = 2 * i - 1 >= 0 && 2 * i + 2 < h;
    for (int cb = 0; cb < channels; cb += 16) {
        /* tap (ky, kx) of phase 0 sits at window row ky, column kx: row 4·ky + kx of the phase weights */
        __m512 wk[9];
        for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++)
                wk[3 * ky + kx] = _mm512_loadu_ps(job->wphase + (size_t)(4 * ky + kx) * ldw + cb);
        const __m512 bias = _mm512_loadu_ps(job->bias + cb);
        for (int64_t j = 0; j < keep; j++) {
            float win[16];
            if (full_rows && 2 * j - 1 >= 0 && 2 * j + 2 < w) {
                for (int wr = 0; wr < 4; wr++) memcpy(win + 4 * wr, sim + (2 * i - 1 + wr) * w + 2 * j - 1, 16);
            } else {
                for (int wr = 0; wr < 4; wr++) {
                    const int64_t y = 2 * i - 1 + wr;
                    for (int wc = 0; wc < 4; wc++) {
                        const int64_t x = 2 * j - 1 + wc;
                        win[4 * wr + wc] = (y >= 0 && y < h && x >= 0 && x < w) ? sim[y * w + x] : 0.0f;
                    }
                }
            }
            __m512 best = _mm512_set1_ps(-__builtin_inff());
            for (int p = 0; p < 4; p++) {
                const int dy = p >> 1, dx = p & 1;
                __m512 acc = _mm512_setzero_ps();
                for (int ky = 0; ky < 3; ky++)
                    for (int kx = 0; kx < 3; kx++)
                        acc = _mm512_fmadd_ps(_mm512_set1_ps(win[4 * (dy + ky) + dx + kx]), wk[3 * ky + kx], acc);
                best = _mm512_max_ps(best, acc);
            }
            _mm512_storeu_ps(out + j * channels + cb, _mm512_max_ps(_mm512_add_ps(best, bias), _mm512_setzero_ps()));
        }
        for (int64_t j = keep; j < wo; j++) _mm512_storeu_ps(out + j * channels + cb, _mm512_setzero_ps());
    }
}

TARGET static void *conv1_worker(void *arg) {
    Conv1Job *job = (Conv1Job *)arg;
    const int64_t total = job->batch * job->ho;
    for (;;) {
        const int64_t r = (int64_t)atomic_fetch_add(&job->next, 1LL);
        if (r >= total) break;
        conv1_row(job, r / job->ho, r % job->ho);
    }
    return NULL;
}

PyDoc_STRVAR(conv1_pool_doc,
             "conv1_pool(sim, wphase, bias, valid, out, channels, batch, h, w, threads)\n\n"
             "relu(max_pool2d(conv2d(sim, w1, b1, padding=1), 2)) of float32 sim [B, H, W] into float32\n"
             "out [B, H//2, W//2, C] (channels-last); wphase float32 [16, 4C] (dnsvr.fine.comparator._phase_weight),\n"
             "bias float32 [C]; valid: int64 [B] pooled columns kept per pair (the rest zero) or None.");

static PyObject *conv1_pool(PyObject *self, PyObject *args) {
    Py_buffer sbuf = {0}, wbuf = {0}, bbuf = {0}, vbuf = {0}, obuf = {0};
    PyObject *valid_obj, *result = NULL;
    int channels, threads;
    long long batch, h, w;
    int have_valid = 0;
    if (!PyArg_ParseTuple(args, "y*y*y*Ow*iLLLi", &sbuf, &wbuf, &bbuf, &valid_obj, &obuf, &channels, &batch, &h,
                          &w, &threads))
        return NULL;
    if (check_map_args(channels, batch, h, w, threads) < 0) goto done;
    const int64_t ho = h / 2, wo = w / 2;
    if (sbuf.len != (Py_ssize_t)(batch * h * w * 4) || wbuf.len != (Py_ssize_t)(16 * 4 * channels * 4) ||
        bbuf.len != (Py_ssize_t)(channels * 4) || obuf.len != (Py_ssize_t)(batch * ho * wo * channels * 4)) {
        PyErr_Format(PyExc_ValueError, "conv1_pool: buffer sizes %zd, %zd, %zd, %zd do not fit batch %lld, "
                     "%lld x %lld, %d channels", sbuf.len, wbuf.len, bbuf.len, obuf.len, batch, h, w, channels);
        goto done;
    }
    if (get_valid(valid_obj, &vbuf, batch, &have_valid) < 0) goto done;
    Conv1Job job;
    job.sim = (const float *)sbuf.buf;
    job.wphase = (const float *)wbuf.buf;
    job.bias = (const float *)bbuf.buf;
    job.valid = have_valid ? (const int64_t *)vbuf.buf : NULL;
    job.out = (float *)obuf.buf;
    job.batch = batch;
    job.h = h;
    job.w = w;
    job.ho = ho;
    job.wo = wo;
    job.channels = channels;
    atomic_init(&job.next, 0);
    threads = threads_for(threads, batch * ho * wo, 4096);
    Py_BEGIN_ALLOW_THREADS
    run_workers(conv1_worker, &job, 0, threads);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    if (have_valid) PyBuffer_Release(&vbuf);
    PyBuffer_Release(&sbuf);
    PyBuffer_Release(&wbuf);
    PyBuffer_Release(&bbuf);
    PyBuffer_Release(&obuf);
    return result;
}

/* ------------------------------------------------------------------ comparator: 2x2 max-pooling, channels-last */

typedef struct {
    const float *x; /* [B, H, W, C] */
    const int64_t *valid;
    float *out; /* [B, H/2, W/2, C] */
    int64_t batch, h, w, ho, wo;
    int channels;
    atomic_llong next;
} PoolJob;

TARGET static void *pool_worker(void *arg) {
    PoolJob *job = (PoolJob *)arg;
    const int64_t total = job->batch * job->ho, c = job->channels;
    for (;;) {
        const int64_t r = (int64_t)atomic_fetch_add(&job->next, 1LL);
        if (r >= total) break;
        const int64_t b = r / job->ho, i = r % job->ho;
        const float *top = job->x + ((b * job->h + 2 * i) * job->w) * c, *bottom = top + job->w * c;
        float *o = job->out + ((b * job->ho + i) * job->wo) * c;
        const int64_t keep = job->valid ? job->valid[b] : job->wo;
        for (int64_t j = 0; j < job->wo; j++)
            for (int64_t k = 0; k < c; k += 16) {
                __m512 m = _mm512_setzero_ps();
                if (j < keep) {
                    /* the rows first, then the columns: the order of _max_pool2 (exact either way) */
                    const __m512 left = _mm512_max_ps(_mm512_loadu_ps(top + 2 * j * c + k),
                                                      _mm512_loadu_ps(bottom + 2 * j * c + k));
                    const __m512 right = _mm512_max_ps(_mm512_loadu_ps(top + (2 * j + 1) * c + k),
                                                       _mm512_loadu_ps(bottom + (2 * j + 1) * c + k));
                    m = _mm512_max_ps(left, right);
                }
                _mm512_storeu_ps(o + j * c + k, m);
            }
    }
    return NULL;
}

PyDoc_STRVAR(max_pool2_doc,
             "max_pool2(x, valid, out, channels, batch, h, w, threads)\n\n"
             "2x2 max-pooling (stride 2) of float32 x [B, H, W, C] (channels-last memory) into float32\n"
             "out [B, H//2, W//2, C]; valid: int64 [B] pooled columns kept per pair (the rest zero) or None.");

static PyObject *max_pool2(PyObject *self, PyObject *args) {
    Py_buffer xbuf = {0}, vbuf = {0}, obuf = {0};
    PyObject *valid_obj, *result = NULL;
    int channels, threads, have_valid = 0;
    long long batch, h, w;
    if (!PyArg_ParseTuple(args, "y*Ow*iLLLi", &xbuf, &valid_obj, &obuf, &channels, &batch, &h, &w, &threads))
        return NULL;
    if (check_map_args(channels, batch, h, w, threads) < 0) goto done;
    const int64_t ho = h / 2, wo = w / 2;
    if (xbuf.len != (Py_ssize_t)(batch * h * w * channels * 4) ||
        obuf.len != (Py_ssize_t)(batch * ho * wo * channels * 4)) {
        PyErr_Format(PyExc_ValueError, "max_pool2: buffer sizes %zd, %zd do not fit batch %lld, %lld x %lld, "
                     "%d channels", xbuf.len, obuf.len, batch, h, w, channels);
        goto done;
    }
    if (get_valid(valid_obj, &vbuf, batch, &have_valid) < 0) goto done;
    PoolJob job;
    job.x = (const float *)xbuf.buf;
    job.valid = have_valid ? (const int64_t *)vbuf.buf : NULL;
    job.out = (float *)obuf.buf;
    job.batch = batch;
    job.h = h;
    job.w = w;
    job.ho = ho;
    job.wo = wo;
    job.channels = channels;
    atomic_init(&job.next, 0);
    threads = threads_for(threads, batch * ho * wo * channels, 65536);
    Py_BEGIN_ALLOW_THREADS
    run_workers(pool_worker, &job, 0, threads);
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    if (have_valid) PyBuffer_Release(&vbuf);
    PyBuffer_Release(&xbuf);
    PyBuffer_Release(&obuf);
    return result;
}

static PyMethodDef methods[] = {
    {"supported", supported, METH_NOARGS, supported_doc},
    {"region_chamfer", region_chamfer, METH_VARARGS, region_chamfer_doc},
    {"conv1_pool", conv1_pool, METH_VARARGS, conv1_pool_doc},
    {"max_pool2", max_pool2, METH_VARARGS, max_pool2_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_finekernel",
    "The fused int8 region stage of dnsvr.fine.regions (AVX-512 VNNI); see region_chamfer.", -1, methods,
};

PyMODINIT_FUNC PyInit__finekernel(void) { return PyModule_Create(&moduledef); }
