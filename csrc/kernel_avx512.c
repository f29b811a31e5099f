/* AVX-512F instance of the kernel, and the AVX-512 VNNI int8 product; compiled to nothing off x86. */
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include "simd_avx512.h"
#include "kernel_impl.h"

#define LRT_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))
#define QMR 6   /* rows per register tile: 6 x 4 int32 accumulators */

static inline LRT_VNNI_TARGET __m512i bcast4(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

/* (float)(acc - csum) * sa * scale (+ init), in the order lrt_gemm_i8_ref uses */
static inline LRT_VNNI_TARGET void i8_store(__m512i acc, const lrt_pmat *B, int col, float sa, float *c,
                                            const float *init)
{
    __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, _mm512_loadu_si512(B->csum + col)));
    v = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(sa)), _mm512_loadu_ps(B->scale + col));
    if (init) v = _mm512_add_ps(v, _mm512_loadu_ps(init + col));
    _mm512_storeu_ps(c + col, v);
}

/* mr rows x nv vectors of 16 columns; b: the panel's int8 data at this column offset */
static LRT_INLINE LRT_VNNI_TARGET void i8_tile(const int mr, const int nv, int kq, const uint8_t *qa, size_t k4,
                                               const int8_t *b, const lrt_pmat *B, int col, const float *sa,
                                               float *C, size_t ldc, const float *init)
{
    __m512i acc[QMR][4];
#pragma GCC unroll 8
    for (int r = 0; r < QMR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) acc[r][v] = _mm512_setzero_si512();
    for (int q = 0; q < kq; q++, b += LRT_PANEL_AVX512 * 4) {
        __m512i bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) bv[v] = v < nv ? _mm512_loadu_si512(b + 64 * v) : _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int r = 0; r < QMR; r++) {
            if (r >= mr) break;
            __m512i x = bcast4(qa + r * k4 + 4 * (size_t)q);
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++)
                if (v < nv) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], x, bv[v]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < QMR; r++)
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++)
            if (r < mr && v < nv) i8_store(acc[r][v], B, col + 16 * v, sa[r], C + r * ldc, init);
}

LRT_VNNI_TARGET void lrt_gemm_i8_vnni(size_t M, const lrt_pmat *B, int panel, int j0, int j1, const uint8_t *qa,
                      const float *sa, float *C, size_t ldc, const float *init)
{
    const int kq = B->k4 / 4;
    const size_t k4 = (size_t)B->k4;
    const int8_t *data = B->data;
    (void)panel;   /* always LRT_PANEL_AVX512 here */
    for (int j = j0; j < j1;) {
        const int c0 = j % LRT_PANEL_AVX512;
        const int w = LRT_PANEL_AVX512 - c0 < j1 - j ? LRT_PANEL_AVX512 - c0 : j1 - j;
        const int nv = w / 16;
        const int8_t *b = data + (size_t)(j / LRT_PANEL_AVX512) * kq * LRT_PANEL_AVX512 * 4 + (size_t)c0 * 4;
        size_t m = 0;
        if (nv == 4)
            for (; m + QMR <= M; m += QMR)
                i8_tile(QMR, 4, kq, qa + m * k4, k4, b, B, j, sa + m, C + m * ldc, ldc, init);
        for (; m < M; m += QMR)
            i8_tile(M - m < QMR ? (int)(M - m) : QMR, nv, kq, qa + m * k4, k4, b, B, j, sa + m, C + m * ldc,
                    ldc, init);
        j += w;
    }
}
#else
typedef int lrt_kernel_avx512_unused;
#endif
