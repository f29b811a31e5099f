/* Portable one-lane "vector" mapping: builds on any C99 compiler and CPU. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define LRT_VLEN 1
#define LRT_FN(name) name##_scalar
#define LRT_TARGET
#define LRT_PANEL LRT_PANEL_SCALAR
#define LRT_NRV 4
#define LRT_MR 4
#define LRT_KC 1024
#define LRT_MC 128

typedef float vf;

static inline vf vf_load(const float *p) { return *p; }
static inline void vf_store(float *p, vf v) { *p = v; }
static inline vf vf_set1(float x) { return x; }
static inline vf vf_add(vf a, vf b) { return a + b; }
static inline vf vf_sub(vf a, vf b) { return a - b; }
static inline vf vf_mul(vf a, vf b) { return a * b; }
static inline vf vf_div(vf a, vf b) { return a / b; }
/* a / b for b >= 1 (the AVX-512 mapping uses a reciprocal there) */
static inline vf vf_fastdiv(vf a, vf b) { return a / b; }
/* a / b for b in [1, +inf] (a / inf = 0) */
static inline vf vf_fastdiv_to_inf(vf a, vf b) { return a / b; }
static inline vf vf_fma(vf a, vf b, vf c) { return a * b + c; }
/* min/max return b when either is NaN, as x86 minps/maxps do (kernel_impl.h relies on it) */
static inline vf vf_min(vf a, vf b) { return a < b ? a : b; }
static inline vf vf_max(vf a, vf b) { return a > b ? a : b; }
static inline vf vf_abs(vf a) { return fabsf(a); }
static inline vf vf_round(vf a) { return rintf(a); }
/* copysign(magnitude, sign-source) */
static inline vf vf_copysign(vf mag, vf sgn) { return copysignf(mag, sgn); }
/* 2^n for integral-valued n in [-126, 127] */
static inline vf vf_pow2i(vf n) {
    /* NaN (from a NaN input) has no int32 form: converting it is undefined; any scale will do,
     * the polynomial it multiplies is NaN already */
    uint32_t bits = (uint32_t)((n == n ? (int32_t)n : 0) + 127) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}
static inline vf vf_load_bf16(const uint16_t *p) {
    uint32_t bits = (uint32_t)*p << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}
