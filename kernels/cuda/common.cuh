// Device helpers shared by stats.cu and resample.cu (the arithmetic itself is in
// kernels/common/preprocess_math.h, shared with the C++ twins).
#pragma once

#include "preprocess_math.h"

namespace cacdev {

// Element i of a slice as HU: stored word -> value -> value * slope + intercept.
__device__ __forceinline__ float load_hu(const short* __restrict__ p, long long i, cac::StoredFormat f,
                                        float slope, float intercept) {
    return cac::to_hu((float)cac::decode_word((unsigned int)(unsigned short)p[i], f), slope, intercept);
}
__device__ __forceinline__ float load_hu(const unsigned short* __restrict__ p, long long i,
                                        cac::StoredFormat f, float slope, float intercept) {
    return cac::to_hu((float)cac::decode_word((unsigned int)p[i], f), slope, intercept);
}
__device__ __forceinline__ float load_hu(const float* __restrict__ p, long long i, cac::StoredFormat,
                                        float slope, float intercept) {
    return cac::to_hu(p[i], slope, intercept);
}

__device__ __forceinline__ void store_out(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_out(unsigned short* p, float v) { *p = cac::f32_to_f16_bits(v); }

}  // namespace cacdev
