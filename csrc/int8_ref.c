/* int8_ref.c — the portable int8 products, for every path without AVX-512 VNNI; bit-identical
 * to the VNNI ones (kernel_avx512.c). */
#include <float.h>
#include <math.h>
#include <string.h>
#include "internal.h"

float lrt_quantize_row(const float *a, int k, int k4, uint8_t *q)
{
    float amax = 0.f;
    int finite = 1;
    for (int i = 0; i < k; i++) {
        const float v = fabsf(a[i]);
        amax = v > amax ? v : amax;
        finite &= v <= FLT_MAX;   /* false for inf and NaN */
    }
    if (!finite) {   /* inf/NaN in the row: the products come out NaN */
        memset(q, 128, (size_t)k4);
        return NAN;
    }
    /* q = nearest-even(a * inv), clamped to [-127, 127]; the AVX-512 quantizer matches bit for bit */
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    for (int i = 0; i < k; i++) {
        long v = lrintf(a[i] * inv);
        v = v > 127 ? 127 : v < -127 ? -127 : v;
        q[i] = (uint8_t)(v + 128);
    }
    memset(q + k, 128, (size_t)(k4 - k));
    return amax / 127.f;
}

void lrt_gemm_i8_ref(size_t M, const lrt_pmat *B, int panel, int j0, int j1, const uint8_t *qa,
                     const float *sa, float *C, size_t ldc, const float *init)
{
    const int kq = B->k4 / 4;
    const int8_t *data = B->data;
    int32_t acc[LRT_PANEL_AVX512];
    for (size_t m = 0; m < M; m++) {
        const uint8_t *a = qa + m * (size_t)B->k4;
        for (int j = j0; j < j1;) {
            const int c0 = j % panel, w = panel - c0 < j1 - j ? panel - c0 : j1 - j;
            const int8_t *bp = data + (size_t)(j / panel) * kq * panel * 4 + (size_t)c0 * 4;
            for (int c = 0; c < w; c++) acc[c] = 0;
            for (int q = 0; q < kq; q++, bp += (size_t)panel * 4)
                for (int c = 0; c < w; c++)
                    acc[c] += a[4 * q] * bp[4 * c] + a[4 * q + 1] * bp[4 * c + 1] +
                              a[4 * q + 2] * bp[4 * c + 2] + a[4 * q + 3] * bp[4 * c + 3];
            for (int c = 0; c < w; c++) {
                const int col = j + c;
                float v = (float)(acc[c] - B->csum[col]) * sa[m] * B->scale[col];
                C[m * ldc + col] = init ? v + init[col] : v;
            }
            j += w;
        }
    }
}
