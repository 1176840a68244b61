/* Fused bfloat16 attention for CPUs with AVX512-BF16 (hear_msm_mae/native.py compiles and loads it).

   out = softmax(q k^T * scale + gate * bias) v, per (batch b, head h):
     q, k, v: (L, d) bfloat16 rows, each row contiguous, any strides otherwise (views of a qkv product);
     bias: (L, L) bfloat16 rows or none, each row contiguous, any strides otherwise (0 broadcasts);
     gate: one float per query or none (1);
     out: (L, d) bfloat16 rows, any strides (written as (n, L, heads, d) so the output projection needs no copy).

   The products multiply bfloat16 pairs into float32 sums (vdpbf16ps); the scores, the bias, the softmax and the
   sums stay float32; the softmax's numerators are rounded to bfloat16 for the second product and divided by
   their float32 sum at the end. Per (b, h): k is packed so that 16 keys' pairs of one row position fill a
   vector, v so that two tokens' values of 16 channels interleave; then each block of 4 queries makes its
   scores against all keys (one row of scores per query, L <= MAX_TOKENS), its softmax and its output. */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ROWS 4            /* queries per block */
#define MAX_TOKENS 16384  /* a block's scores are ROWS rows of all keys */

typedef uint16_t bf16;

typedef struct {
    const bf16 *q, *k, *v, *bias;
    const float *gate;
    bf16 *out;
    int64_t heads, len, dim;
    int64_t qs[3], ks[3], vs[3], os[3]; /* strides (elements) of batch, head, token */
    int64_t bs[4];                      /* bias strides of batch, head, query, key (1) */
    int64_t gs[3];                      /* gate strides of batch, head, query */
    float scale;
    int64_t begin, end; /* this thread's (batch, head) pairs */
    int failed;
} Job;

int hear_attention_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}

/* 2^x for x <= 0: 2^n p(f), x = n + f, |f| <= 1/2, p of degree 5 (relative error < 4e-6, far below the
   bfloat16 rounding of what it makes) */
static inline __m512 exp2_ps(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.3333558e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 bf16_to_ps(__m256i x) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(x), 16));
}

/* kp[(block * pairs + p) * 16 + lane] = the pair (k[j][2p], k[j][2p + 1]) of key j = 16 block + lane; 0 past L */
static void pack_keys(const bf16 *k, int64_t stride, int64_t len, int64_t pairs, uint32_t *kp) {
    const __m512i lanes = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                             _mm512_set1_epi32((int)(stride / 2)));
    for (int64_t j0 = 0; j0 < len; j0 += 16) {
        int64_t valid = len - j0 < 16 ? len - j0 : 16;
        __mmask16 mask = (__mmask16)((1u << valid) - 1);
        const int *row = (const int *)(k + j0 * stride);
        for (int64_t p = 0; p < pairs; p++)
            _mm512_storeu_si512(kp + ((j0 / 16) * pairs + p) * 16,
                                _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask, lanes, row + p, 4));
    }
}

/* vp[t * dim + c] = the pair (v[2t][c], v[2t + 1][c]); the token past an odd L is 0 */
static void pack_values(const bf16 *v, int64_t stride, int64_t len, int64_t dim, uint32_t *vp) {
    const __m512i lo = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                        39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    const __m512i hi = _mm512_add_epi16(lo, _mm512_set1_epi16(16));
    for (int64_t t = 0; t < len; t += 2) {
        const bf16 *a = v + t * stride, *b = t + 1 < len ? a + stride : NULL;
        for (int64_t c = 0; c < dim; c += 32) {
            __m512i x = _mm512_loadu_si512(a + c);
            __m512i y = b ? _mm512_loadu_si512(b + c) : _mm512_setzero_si512();
            _mm512_storeu_si512(vp + (t / 2) * dim + c, _mm512_permutex2var_epi16(x, lo, y));
            _mm512_storeu_si512(vp + (t / 2) * dim + c + 16, _mm512_permutex2var_epi16(x, hi, y));
        }
    }
}

/* s[r][16 block + lane] = q_r . k_j for ROWS queries and BLOCKS blocks of 16 keys */
#define SCORES(BLOCKS)                                                                                          \
    static inline void scores_##BLOCKS(const uint32_t *const q[ROWS], const uint32_t *kp, int64_t pairs,       \
                                       float *s, int64_t lds) {                                                \
        __m512 acc[ROWS][BLOCKS];                                                                               \
        for (int r = 0; r < ROWS; r++)                                                                          \
            for (int j = 0; j < BLOCKS; j++) acc[r][j] = _mm512_setzero_ps();                                  \
        for (int64_t p = 0; p < pairs; p++) {                                                                   \
            __m512bh b[BLOCKS];                                                                                 \
            for (int j = 0; j < BLOCKS; j++) b[j] = (__m512bh)_mm512_loadu_si512(kp + (j * pairs + p) * 16);   \
            for (int r = 0; r < ROWS; r++) {                                                                    \
                __m512bh a = (__m512bh)_mm512_set1_epi32((int)q[r][p]);                                         \
                for (int j = 0; j < BLOCKS; j++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], a, b[j]);              \
            }                                                                                                   \
        }                                                                                                       \
        for (int r = 0; r < ROWS; r++)                                                                          \
            for (int j = 0; j < BLOCKS; j++)                                                                    \
                _mm512_storeu_ps(s + r * lds + j * 16, acc[r][j]);                                             \
    }
SCORES(4)
SCORES(1)

/* o[r][c] += sum over tokens of p_r[t] v[t][c], for ROWS queries and 64 channels from c0 */
static inline void values_64(const uint32_t *const p[ROWS], const uint32_t *vp, int64_t pairs, int64_t dim,
                             __m512 acc[ROWS][4]) {
    for (int64_t t = 0; t < pairs; t++) {
        __m512bh b[4];
        for (int c = 0; c < 4; c++) b[c] = (__m512bh)_mm512_loadu_si512(vp + t * dim + c * 16);
        for (int r = 0; r < ROWS; r++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)p[r][t]);
            for (int c = 0; c < 4; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, b[c]);
        }
    }
}

/* The softmax numerators of one row of products s (scaled, plus gate * bias), rounded to bfloat16 into e (0 past
   L, to the next 16); returns their float32 sum */
static float numerators(float *s, float scale, const bf16 *bias, float gate, int64_t len, bf16 *e) {
    __m512 top = _mm512_set1_ps(-__builtin_inff());
    for (int64_t j = 0; j < len; j += 16) {
        __mmask16 mask = len - j >= 16 ? 0xffff : (__mmask16)((1u << (len - j)) - 1);
        __m512 x = _mm512_maskz_loadu_ps(mask, s + j);
        if (bias) { /* s becomes the scores themselves */
            __m512 b = bf16_to_ps(_mm256_maskz_loadu_epi16(mask, bias + j));
            x = _mm512_fmadd_ps(b, _mm512_set1_ps(gate), _mm512_mul_ps(x, _mm512_set1_ps(scale)));
            _mm512_mask_storeu_ps(s + j, mask, x);
        }
        top = _mm512_mask_max_ps(top, mask, top, x);
    }
    /* exp(scores - max) = 2^(s * to2 - max * to2), to2 = log2(e) (times the scale where s is still products) */
    const float to2 = 1.44269504088896341f * (bias ? 1.0f : scale);
    const __m512 mul = _mm512_set1_ps(to2), sub = _mm512_set1_ps(_mm512_reduce_max_ps(top) * to2);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < len; j += 16) {
        __mmask16 mask = len - j >= 16 ? 0xffff : (__mmask16)((1u << (len - j)) - 1);
        __m512 x = _mm512_maskz_mov_ps(mask, exp2_ps(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), mul, sub)));
        __m256bh rounded = _mm512_cvtneps_pbh(x);
        sum = _mm512_add_ps(sum, bf16_to_ps((__m256i)rounded));
        _mm256_storeu_si256((__m256i *)(e + j), (__m256i)rounded);
    }
    return _mm512_reduce_add_ps(sum);
}

static size_t bytes(size_t n) { return (n + 63) / 64 * 64; } /* aligned_alloc takes multiples of 64 */

/* Not inlined into OpenMP's outlined region, where gcc 12 kept the sums in memory: 1.5x slower. */
__attribute__((noinline)) static void run(Job *job) {
    const int64_t len = job->len, dim = job->dim, pairs = dim / 2, padded = (len + 15) / 16 * 16;
    uint32_t *kp = aligned_alloc(64, bytes((size_t)padded * dim * 2));
    uint32_t *vp = aligned_alloc(64, bytes((size_t)(padded / 2 + 1) * dim * 4));
    float *s = aligned_alloc(64, bytes((size_t)ROWS * padded * 4));
    bf16 *e = aligned_alloc(64, bytes((size_t)ROWS * padded * 2));
    if (!kp || !vp || !s || !e) {
        job->failed = 1;
        free(kp), free(vp), free(s), free(e);
        return;
    }
    const int64_t lde = padded, blocks = padded / 16, token_pairs = (len + 1) / 2;
    for (int64_t task = job->begin; task < job->end; task++) {
        const int64_t b = task / job->heads, h = task % job->heads;
        const bf16 *q = job->q + b * job->qs[0] + h * job->qs[1];
        bf16 *out = job->out + b * job->os[0] + h * job->os[1];
        pack_keys(job->k + b * job->ks[0] + h * job->ks[1], job->ks[2], len, pairs, kp);
        pack_values(job->v + b * job->vs[0] + h * job->vs[1], job->vs[2], len, dim, vp);
        for (int64_t i0 = 0; i0 < len; i0 += ROWS) {
            const uint32_t *qr[ROWS], *er[ROWS];
            for (int r = 0; r < ROWS; r++) {
                qr[r] = (const uint32_t *)(q + (i0 + r < len ? i0 + r : i0) * job->qs[2]);
                er[r] = (const uint32_t *)(e + r * lde);
            }
            int64_t j = 0;
            for (; j + 4 <= blocks; j += 4) scores_4(qr, kp + j * pairs * 16, pairs, s + j * 16, padded);
            for (; j < blocks; j++) scores_1(qr, kp + j * pairs * 16, pairs, s + j * 16, padded);
            float inv[ROWS];
            for (int r = 0; r < ROWS; r++) {
                const int64_t i = i0 + r < len ? i0 + r : i0;
                const bf16 *bias = job->bias ? job->bias + b * job->bs[0] + h * job->bs[1] + i * job->bs[2] : NULL;
                const float gate = job->gate ? job->gate[b * job->gs[0] + h * job->gs[1] + i * job->gs[2]] : 1.0f;
                inv[r] = 1.0f / numerators(s + r * padded, job->scale, bias, gate, len, e + r * lde);
            }
            for (int64_t c0 = 0; c0 < dim; c0 += 64) {
                __m512 acc[ROWS][4];
                for (int r = 0; r < ROWS; r++)
                    for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
                values_64(er, vp + c0, token_pairs, dim, acc);
                for (int r = 0; r < ROWS && i0 + r < len; r++)
                    for (int c = 0; c < 4; c++) {
                        __m256bh o = _mm512_cvtneps_pbh(_mm512_mul_ps(acc[r][c], _mm512_set1_ps(inv[r])));
                        _mm256_storeu_si256((__m256i *)(out + (i0 + r) * job->os[2] + c0 + c * 16), (__m256i)o);
                    }
            }
        }
    }
    free(kp), free(vp), free(s), free(e);
}

/* strides: q's, k's, v's and out's of batch, head and token, bias's of batch, head, query and key, gate's of
   batch, head and query (elements). Returns 0 on success; 1 for inputs this kernel does not take (dim not a
   multiple of 64, L out of range, odd strides of q or k, bias rows not contiguous), 2 when memory could not
   be had. */
int hear_attention(const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *bias, const float *gate, bf16 *out,
                   int64_t batch, int64_t heads, int64_t len, int64_t dim, const int64_t *strides, float scale,
                   int threads) {
    if (dim % 64 || len < 1 || len > MAX_TOKENS || batch < 1 || heads < 1) return 1;
    Job base = {.q = q, .k = k, .v = v, .bias = bias, .gate = gate, .out = out, .heads = heads, .len = len, .dim = dim};
    memcpy(base.qs, strides, 3 * sizeof(int64_t));
    memcpy(base.ks, strides + 3, 3 * sizeof(int64_t));
    memcpy(base.vs, strides + 6, 3 * sizeof(int64_t));
    memcpy(base.os, strides + 9, 3 * sizeof(int64_t));
    memcpy(base.bs, strides + 12, 4 * sizeof(int64_t));
    memcpy(base.gs, strides + 16, 3 * sizeof(int64_t));
    base.scale = scale;
    for (int i = 0; i < 3; i++)
        if (base.qs[i] % 2 || base.ks[i] % 2) return 1; /* q and k are read as pairs */
    if (bias && base.bs[3] != 1) return 1;
    const int64_t tasks = batch * heads;
    int failed = 0;
#pragma omp parallel num_threads(threads < 1 ? 1 : threads) reduction(| : failed)
    {
        const int64_t t = omp_get_thread_num(), count = omp_get_num_threads();
        Job job = base;
        job.begin = tasks * t / count;
        job.end = tasks * (t + 1) / count;
        run(&job);
        failed |= job.failed;
    }
    return failed ? 2 : 0;
}
