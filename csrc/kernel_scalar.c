/* Portable scalar instance of the kernel. */
#include "simd_scalar.h"
#include "kernel_impl.h"
#include "ops_impl.h"
