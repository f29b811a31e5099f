/* AVX-512F instance of the kernel, and the AVX-512 VNNI int8 product; compiled to nothing off x86. */
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include "simd_avx512.h"
#include "kernel_impl.h"
#include "ops_impl.h"
#include <float.h>
#include <math.h>

#define LRT_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))
#define QMR 6   /* rows per register tile: 6 x 4 int32 accumulators */

/* acc += dot4(x as u8, b as s8) per int32 lane.  GCC 12 copies the accumulator around the
 * intrinsic (and spills the tile); the tied asm operand keeps it in its register. */
#if defined(__GNUC__) && !defined(__clang__)
#define DPBUSD(acc, x, b) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(b))
#else
#define DPBUSD(acc, x, b) ((acc) = _mm512_dpbusd_epi32((acc), (x), (b)))
#endif

static inline LRT_VNNI_TARGET __m512i bcast4(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

/* (float)(acc - csum) * sa * scale (+ init), in the order lrt_gemm_i8_ref uses */
static LRT_INLINE LRT_VNNI_TARGET void i8_store(__m512i acc, const lrt_pmat *B, int col, float sa, float *c,
                                            const float *init)
{
    __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_loadu_si512(B->csum + col)));
    v = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(sa)), _mm512_loadu_ps(B->scale + col));
    if (init) v = _mm512_add_ps(v, _mm512_loadu_ps(init + col));
    _mm512_storeu_ps(c + col, v);
}

/* one row x nv (1..4) vectors of 16 columns; even and odd k-quads in separate
 * accumulators for the latency (integer sums: the order changes nothing) */
static LRT_VNNI_TARGET void i8_row(int nv, int kq, const uint8_t *qa, const int8_t *b, const lrt_pmat *B, int col,
                                   float sa, float *C, const float *init)
{
    __m512i e0 = _mm512_setzero_si512(), e1 = e0, e2 = e0, e3 = e0, o0 = e0, o1 = e0, o2 = e0, o3 = e0;
    const size_t step = LRT_PANEL_AVX512 * 4;
    int q = 0;
    for (; q + 2 <= kq; q += 2, b += 2 * step) {
        const __m512i x = bcast4(qa + 4 * (size_t)q), z = bcast4(qa + 4 * (size_t)q + 4);
        DPBUSD(e0, x, _mm512_loadu_si512(b));
        DPBUSD(o0, z, _mm512_loadu_si512(b + step));
        if (nv > 1) {
            DPBUSD(e1, x, _mm512_loadu_si512(b + 64));
            DPBUSD(o1, z, _mm512_loadu_si512(b + step + 64));
        }
        if (nv > 2) {
            DPBUSD(e2, x, _mm512_loadu_si512(b + 128));
            DPBUSD(o2, z, _mm512_loadu_si512(b + step + 128));
        }
        if (nv > 3) {
            DPBUSD(e3, x, _mm512_loadu_si512(b + 192));
            DPBUSD(o3, z, _mm512_loadu_si512(b + step + 192));
        }
    }
    if (q < kq) {
        const __m512i x = bcast4(qa + 4 * (size_t)q);
        DPBUSD(e0, x, _mm512_loadu_si512(b));
        if (nv > 1) DPBUSD(e1, x, _mm512_loadu_si512(b + 64));
        if (nv > 2) DPBUSD(e2, x, _mm512_loadu_si512(b + 128));
        if (nv > 3) DPBUSD(e3, x, _mm512_loadu_si512(b + 192));
    }
    i8_store(_mm512_add_epi32(e0, o0), B, col, sa, C, init);
    if (nv > 1) i8_store(_mm512_add_epi32(e1, o1), B, col + 16, sa, C, init);
    if (nv > 2) i8_store(_mm512_add_epi32(e2, o2), B, col + 32, sa, C, init);
    if (nv > 3) i8_store(_mm512_add_epi32(e3, o3), B, col + 48, sa, C, init);
}

LRT_VNNI_TARGET float lrt_quantize_row_avx512(const float *a, int k, int k4, uint8_t *q)
{
    __m512 vmax = _mm512_setzero_ps();
    __mmask16 bad = 0;
    int i = 0;
    for (; i < k; i += 16) {
        const __mmask16 m = k - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (k - i)) - 1);
        __m512 v = _mm512_abs_ps(_mm512_maskz_loadu_ps(m, a + i));
        bad |= _mm512_mask_cmp_ps_mask(m, v, _mm512_set1_ps(FLT_MAX), _CMP_NLE_UQ);   /* inf, NaN */
        vmax = _mm512_max_ps(vmax, v);
    }
    if (bad) {
        memset(q, 128, (size_t)k4);
        return NAN;
    }
    const float amax = _mm512_reduce_max_ps(vmax);
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    const __m512 vinv = _mm512_set1_ps(inv);
    for (i = 0; i < k; i += 16) {
        const __mmask16 m = k - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (k - i)) - 1);
        __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, a + i), vinv));  /* nearest-even */
        v = _mm512_min_epi32(_mm512_max_epi32(v, _mm512_set1_epi32(-127)), _mm512_set1_epi32(127));
        _mm512_mask_cvtepi32_storeu_epi8(q + i, m, _mm512_add_epi32(v, _mm512_set1_epi32(128)));
    }
    memset(q + k, 128, (size_t)(k4 - k));
    return amax / 127.f;
}

/* the full 6 x 64 tile with named accumulators (GCC keeps an array of them in memory) */
static LRT_VNNI_TARGET void i8_tile_full(int kq, const uint8_t *qa, size_t k4, const int8_t *b, const lrt_pmat *B,
                                         int col, const float *sa, float *C, size_t ldc, const float *init)
{
#define ACC4(r) __m512i a##r##0 = _mm512_setzero_si512(), a##r##1 = a##r##0, a##r##2 = a##r##0, a##r##3 = a##r##0;
    ACC4(0) ACC4(1) ACC4(2) ACC4(3) ACC4(4) ACC4(5)
#undef ACC4
    const uint8_t *q0 = qa, *q1 = q0 + k4, *q2 = q1 + k4, *q3 = q2 + k4, *q4 = q3 + k4, *q5 = q4 + k4;
    for (int q = 0; q < kq; q++, b += LRT_PANEL_AVX512 * 4) {
        const __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 64);
        const __m512i b2 = _mm512_loadu_si512(b + 128), b3 = _mm512_loadu_si512(b + 192);
        __m512i x;
#define ROW(r) x = bcast4(q##r + 4 * (size_t)q); \
        DPBUSD(a##r##0, x, b0); DPBUSD(a##r##1, x, b1); \
        DPBUSD(a##r##2, x, b2); DPBUSD(a##r##3, x, b3);
        ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)
#undef ROW
    }
#define OUT(r) i8_store(a##r##0, B, col, sa[r], C + r * ldc, init); \
    i8_store(a##r##1, B, col + 16, sa[r], C + r * ldc, init); \
    i8_store(a##r##2, B, col + 32, sa[r], C + r * ldc, init); \
    i8_store(a##r##3, B, col + 48, sa[r], C + r * ldc, init);
    OUT(0) OUT(1) OUT(2) OUT(3) OUT(4) OUT(5)
#undef OUT
}

/* one row times two panels: 8 independent accumulators for the dot-product latency */
static LRT_VNNI_TARGET void i8_gemv2(int kq, const uint8_t *qa, const int8_t *b0, const int8_t *b1,
                                     const lrt_pmat *B, int col0, int col1, float sa, float *C, const float *init)
{
    __m512i s0[4], s1[4];
    for (int v = 0; v < 4; v++) s0[v] = s1[v] = _mm512_setzero_si512();
    for (int q = 0; q < kq; q++, b0 += LRT_PANEL_AVX512 * 4, b1 += LRT_PANEL_AVX512 * 4) {
        __m512i x = bcast4(qa + 4 * (size_t)q);
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            DPBUSD(s0[v], x, _mm512_loadu_si512(b0 + 64 * v));
            DPBUSD(s1[v], x, _mm512_loadu_si512(b1 + 64 * v));
        }
    }
    for (int v = 0; v < 4; v++) {
        i8_store(s0[v], B, col0 + 16 * v, sa, C, init);
        i8_store(s1[v], B, col1 + 16 * v, sa, C, init);
    }
}

LRT_VNNI_TARGET void lrt_gemm_i8_vnni(size_t M, const lrt_pmat *B, int panel, int j0, int j1, const uint8_t *qa,
                      const float *sa, float *C, size_t ldc, const float *init)
{
    const int kq = B->k4 / 4;
    const size_t k4 = (size_t)B->k4;
    const int8_t *data = B->data;
    (void)panel;   /* always LRT_PANEL_AVX512 here */
    int j = j0;
    const size_t pbytes = (size_t)kq * LRT_PANEL_AVX512 * 4;
    if (M == 1)   /* whole panel pairs first */
        for (; j % LRT_PANEL_AVX512 == 0 && j + 2 * LRT_PANEL_AVX512 <= j1; j += 2 * LRT_PANEL_AVX512)
            i8_gemv2(kq, qa, data + (size_t)(j / LRT_PANEL_AVX512) * pbytes,
                     data + (size_t)(j / LRT_PANEL_AVX512 + 1) * pbytes, B, j, j + LRT_PANEL_AVX512, sa[0], C,
                     init);
    while (j < j1) {
        const int c0 = j % LRT_PANEL_AVX512;
        const int w = LRT_PANEL_AVX512 - c0 < j1 - j ? LRT_PANEL_AVX512 - c0 : j1 - j;
        const int nv = w / 16;
        const int8_t *b = data + (size_t)(j / LRT_PANEL_AVX512) * kq * LRT_PANEL_AVX512 * 4 + (size_t)c0 * 4;
        size_t m = 0;
        if (nv == 4)
            for (; m + QMR <= M; m += QMR)
                i8_tile_full(kq, qa + m * k4, k4, b, B, j, sa + m, C + m * ldc, ldc, init);
        for (; m < M; m++)
            i8_row(nv, kq, qa + m * k4, b, B, j, sa[m], C + m * ldc, init);
        j += w;
    }
}
#else
typedef int lrt_kernel_avx512_unused;
#endif
