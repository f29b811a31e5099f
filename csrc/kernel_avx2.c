/* AVX2+FMA instance of the kernel; compiled to nothing off x86. */
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include "simd_avx2.h"
#include "kernel_impl.h"
#include "ops_impl.h"
#else
typedef int lrt_kernel_avx2_unused;
#endif
