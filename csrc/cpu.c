/* cpu.c — CPU detection, the one place that knows about CPU features, and the choice of a
 * SIMD path (LSTMRT_SIMD forces one). */
#include <stdlib.h>
#include <string.h>
#include "internal.h"

int lrt_cpu_supports(int32_t simd)
{
    switch (simd) {
    case LRT_SIMD_SCALAR: return 1;
#if defined(LRT_HAVE_X86) && (defined(__GNUC__) || defined(__clang__))
    case LRT_SIMD_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case LRT_SIMD_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
#endif
    default: return 0;
    }
}

int lrt_cpu_has_vnni(void)
{
#if defined(LRT_HAVE_X86) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

int lrt_resolve_simd(int32_t requested, int32_t *out)
{
    if (requested == LRT_SIMD_AUTO) {
        const char *env = getenv("LSTMRT_SIMD");
        if (env && *env) {
            if (!strcmp(env, "scalar")) requested = LRT_SIMD_SCALAR;
            else if (!strcmp(env, "avx2")) requested = LRT_SIMD_AVX2;
            else if (!strcmp(env, "avx512")) requested = LRT_SIMD_AVX512;
            else return LRT_E_SIMD;
        }
    }
    if (requested == LRT_SIMD_AUTO) {
        requested = lrt_cpu_supports(LRT_SIMD_AVX512) ? LRT_SIMD_AVX512
                  : lrt_cpu_supports(LRT_SIMD_AVX2)   ? LRT_SIMD_AVX2
                                                      : LRT_SIMD_SCALAR;
    }
    if (requested < LRT_SIMD_SCALAR || requested > LRT_SIMD_AVX512 || !lrt_cpu_supports(requested))
        return LRT_E_SIMD;
    *out = requested;
    return LRT_OK;
}

lrt_run_fn lrt_run_fn_of(int32_t simd)
{
#ifdef LRT_HAVE_X86
    if (simd == LRT_SIMD_AVX512) return lrt_run_avx512;
    if (simd == LRT_SIMD_AVX2) return lrt_run_avx2;
#endif
    (void)simd;
    return lrt_run_scalar;
}
