/* AVX2 + FMA mapping: 8 float lanes. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define LRT_VLEN 8
#define LRT_FN(name) name##_avx2
#define LRT_TARGET __attribute__((target("avx2,fma")))
#define LRT_PANEL LRT_PANEL_AVX2
#define LRT_NRV 2
#define LRT_MR 6
#define LRT_KC 256
#define LRT_MC 120

typedef __m256 vf;

static inline LRT_TARGET vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline LRT_TARGET void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline LRT_TARGET vf vf_set1(float x) { return _mm256_set1_ps(x); }
static inline LRT_TARGET vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline LRT_TARGET vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline LRT_TARGET vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline LRT_TARGET vf vf_div(vf a, vf b) { return _mm256_div_ps(a, b); }
/* a / b for b >= 1 (the AVX-512 mapping uses a reciprocal there) */
static inline LRT_TARGET vf vf_fastdiv(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline LRT_TARGET vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
/* a / b for b in [1, +inf] (a / inf = 0) */
static inline LRT_TARGET vf vf_fastdiv_to_inf(vf a, vf b) { return _mm256_div_ps(a, b); }
/* min/max return b when either is NaN (kernel_impl.h puts the value second) */
static inline LRT_TARGET vf vf_min(vf a, vf b) { return _mm256_min_ps(a, b); }
static inline LRT_TARGET vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline LRT_TARGET vf vf_abs(vf a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
static inline LRT_TARGET vf vf_round(vf a) {
    return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
static inline LRT_TARGET vf vf_copysign(vf mag, vf sgn) {
    const vf sign_bit = _mm256_set1_ps(-0.0f);
    return _mm256_or_ps(_mm256_andnot_ps(sign_bit, mag), _mm256_and_ps(sign_bit, sgn));
}
static inline LRT_TARGET vf vf_pow2i(vf n) {
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_castsi256_ps(bits);
}
static inline LRT_TARGET vf vf_load_bf16(const uint16_t *p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
