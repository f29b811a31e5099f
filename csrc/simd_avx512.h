/* AVX-512F mapping: 16 float lanes. */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#define LRT_VLEN 16
#define LRT_FN(name) name##_avx512
#define LRT_TARGET __attribute__((target("avx512f,avx2,fma")))
#define LRT_PATH_AVX512 1
/* packed panel width, register tile (LRT_MR rows x LRT_NRV vectors), K block */
#define LRT_PANEL LRT_PANEL_AVX512
#define LRT_NRV 4
#define LRT_MR 6
#define LRT_KC 128
#define LRT_MC 120

typedef __m512 vf;

static inline LRT_TARGET vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline LRT_TARGET void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
static inline LRT_TARGET vf vf_set1(float x) { return _mm512_set1_ps(x); }
static inline LRT_TARGET vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline LRT_TARGET vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline LRT_TARGET vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline LRT_TARGET vf vf_div(vf a, vf b) { return _mm512_div_ps(a, b); }
/* a / b for b in [1, 2^127]: 14-bit reciprocal and one Newton step (relative error ~2^-27);
 * a fraction of vdivps' cost, which dominated the gate pass */
static inline LRT_TARGET vf vf_fastdiv(vf a, vf b) {
    __m512 r = _mm512_rcp14_ps(b);
    r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(b, r, _mm512_set1_ps(1.f)), r);
    return _mm512_mul_ps(a, r);
}
/* a / b for b in [1, +inf]: as vf_fastdiv, and 0 for b = inf (whose reciprocal 0 would make the
 * Newton step inf * 0 = NaN); NaN stays NaN */
static inline LRT_TARGET vf vf_fastdiv_to_inf(vf a, vf b) {
    __m512 r = _mm512_rcp14_ps(b);
    const __mmask16 nonzero = _mm512_cmp_ps_mask(r, _mm512_setzero_ps(), _CMP_NEQ_UQ);
    r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(b, r, _mm512_set1_ps(1.f)), r);
    return _mm512_maskz_mul_ps(nonzero, a, r);
}
static inline LRT_TARGET vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
/* min/max return b when either is NaN (kernel_impl.h puts the value second) */
static inline LRT_TARGET vf vf_min(vf a, vf b) { return _mm512_min_ps(a, b); }
static inline LRT_TARGET vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline LRT_TARGET vf vf_abs(vf a) {
    return _mm512_castsi512_ps(_mm512_and_epi32(_mm512_castps_si512(a), _mm512_set1_epi32(0x7fffffff)));
}
static inline LRT_TARGET vf vf_round(vf a) {
    return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
static inline LRT_TARGET vf vf_copysign(vf mag, vf sgn) {
    const __m512i sign_bit = _mm512_set1_epi32((int)0x80000000u);
    __m512i m = _mm512_andnot_epi32(sign_bit, _mm512_castps_si512(mag));
    __m512i s = _mm512_and_epi32(sign_bit, _mm512_castps_si512(sgn));
    return _mm512_castsi512_ps(_mm512_or_epi32(m, s));
}
static inline LRT_TARGET vf vf_pow2i(vf n) {
    __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_castsi512_ps(bits);
}
/* 16 bf16 values widened to float32 (exact) */
static inline LRT_TARGET vf vf_load_bf16(const uint16_t *p) {
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(const void *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
