// Element-wise preprocessing math shared by the CUDA kernels (kernels/cuda/*.cu, compiled by NVRTC
// through CuPy RawModule, or by nvcc in the tests) and the C++ twins (kernels/cpu/*.cpp).
//
// Everything that decides a value lives here, once, so the GPU and CPU paths cannot drift apart:
// stored word -> integer, integer -> HU, normalisation parameters, normalisation, resampling taps,
// float -> float16 rounding, and the "calcium candidate" rule. Every float operation is a single
// IEEE-754 operation rounded to nearest: on the device through the __f*_rn intrinsics (which nvcc
// never contracts into an FMA), on the host by building with -ffp-contract=off and without
// -ffast-math. Same inputs, same sequence of roundings => bit-identical results on both sides and
// in the numpy reference (kernels/reference.py mirrors the same sequence with float32 arrays).
//
// The header must compile under NVRTC, which has no C/C++ standard headers: standard headers are
// included only when not compiling with NVRTC, and only builtin math (floorf, fabsf, ceilf) is used.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define CAC_HD __host__ __device__ __forceinline__
#else
// static: every translation unit gets its own copy, so the baseline and AVX2 builds of the CPU
// kernels (one binary) never share an out-of-line copy compiled for the other instruction set.
#define CAC_HD static inline
#endif

#if !defined(__CUDACC_RTC__)
#include <math.h>
#include <string.h>
#endif

#if defined(__FAST_MATH__)
#error "preprocess_math.h needs IEEE float semantics: do not build with -ffast-math"
#endif

namespace cac {

// ---------------------------------------------------------------------------------------------
// Single rounded float operations (never fused into FMA).
// ---------------------------------------------------------------------------------------------
CAC_HD float fmul(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
CAC_HD float fadd(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}
CAC_HD float fsub(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}
CAC_HD float fdiv(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fdiv_rn(a, b);
#else
    return a / b;
#endif
}

CAC_HD unsigned int float_bits(float f) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    unsigned int u;
    memcpy(&u, &f, sizeof u);
    return u;
#endif
}
CAC_HD float bits_float(unsigned int u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}
CAC_HD float pos_inf() { return bits_float(0x7f800000u); }
CAC_HD float float_max() { return bits_float(0x7f7fffffu); }

// ---------------------------------------------------------------------------------------------
// Stored value -> HU.
// ---------------------------------------------------------------------------------------------

// Bits of the 16-bit word that hold the value, and the sign bit to extend (0 when unsigned).
// DICOM CT: HighBit = BitsStored - 1, so the value is the low ``bits_stored`` bits; bits above it
// may hold garbage (overlays, vendor flags) and are ignored.
struct StoredFormat {
    unsigned int mask;
    unsigned int sign_bit;
};

CAC_HD StoredFormat stored_format(int bits_stored, bool is_signed) {
    StoredFormat f;
    f.mask = (bits_stored >= 32) ? 0xffffffffu : ((1u << bits_stored) - 1u);
    f.sign_bit = is_signed ? (1u << (bits_stored - 1)) : 0u;
    return f;
}

// Low bits of the word, sign-extended when signed: ((w & mask) ^ s) - s with s = sign bit or 0.
// Branch-free so that the CPU loops vectorise.
CAC_HD int decode_word(unsigned int word, StoredFormat f) {
    return (int)((word & f.mask) ^ f.sign_bit) - (int)f.sign_bit;
}

// HU = float(value) * slope + intercept, two float32 roundings (multiply, then add).
CAC_HD float to_hu(float value, float slope, float intercept) {
    return fadd(fmul(value, slope), intercept);
}

// ---------------------------------------------------------------------------------------------
// Normalisation to [-1, 1].
// ---------------------------------------------------------------------------------------------

// n(h) = (clamp(h, lo, hi) - lo) * inv - 1. For the paper's per-slice min-max, lo/hi are the
// slice's HU min/max (so the clamp is the identity) and inv = 2 / ((max - min) + 1e-7): the
// paper's (I - min) / (max - min + eps) * 2 - 1 with the division done once per slice. A constant
// slice (max == min) maps to -1 everywhere, as the paper's formula does. For a fixed window,
// lo/hi are the window and inv = 2 / (hi - lo).
struct NormParams {
    float lo;
    float hi;
    float inv;
};

CAC_HD NormParams minmax_params(float hu_min, float hu_max) {
    NormParams p;
    p.lo = hu_min;
    p.hi = hu_max;
    p.inv = fdiv(2.0f, fadd(fsub(hu_max, hu_min), 1e-7f));
    return p;
}

CAC_HD NormParams window_params(float window_lo, float window_hi) {
    NormParams p;
    p.lo = window_lo;
    p.hi = window_hi;
    p.inv = fdiv(2.0f, fsub(window_hi, window_lo));
    return p;
}

CAC_HD float clamp_to(float x, float lo, float hi) {
    float t = x < lo ? lo : x;
    return t > hi ? hi : t;
}

CAC_HD float normalise(float hu, float lo, float hi, float inv) {
    return fsub(fmul(fsub(clamp_to(hu, lo, hi), lo), inv), 1.0f);
}

// ---------------------------------------------------------------------------------------------
// Calcium candidates (the slice pre-filter count).
// ---------------------------------------------------------------------------------------------

// A voxel is a calcium candidate when its HU is >= calcium_threshold and its four edge neighbours
// are all "inside the body" (HU > body_threshold, default -500: soft tissue, fat, blood, bone,
// calcium; not air, lung or out-of-field padding). Coronary calcium sits in epicardial fat or
// the vessel wall, never next to air or lung, so the rule never drops a coronary candidate; it
// drops bright noise and streaks at air boundaries, calcified lung granulomas bordered by lung,
// and the thin edges of the table. Voxels on the slice border are never candidates.
CAC_HD bool calcium_candidate(float centre, float left, float right, float up, float down,
                              float calcium_threshold, float body_threshold) {
    return (centre >= calcium_threshold) & (left > body_threshold) & (right > body_threshold) &
           (up > body_threshold) & (down > body_threshold);
}

// Order-preserving map float -> uint32 (for atomicMin/atomicMax of floats on the GPU).
CAC_HD unsigned int float_to_ordered(float f) {
    unsigned int u = float_bits(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
CAC_HD float ordered_to_float(unsigned int k) {
    unsigned int u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    return bits_float(u);
}

// ---------------------------------------------------------------------------------------------
// Resampling taps.
//
// Sampling convention: pixel centres at half-integer coordinates, output pixel i covers
// [i, i+1) * scale with scale = in / out (float32), i.e. PyTorch's
// F.interpolate(mode="bilinear", align_corners=False) with antialias False or True:
//   antialias = 0: 2 taps, source coordinate s = scale * (i + 0.5) - 0.5 clamped at 0,
//                  i0 = min(floor(s), in - 1), i1 = i0 + (i0 < in - 1), weights (1 - l, l),
//                  l = s - i0 clamped to [0, 1].
//   antialias = 1: triangle filter stretched by the down-sampling factor (support = scale when
//                  scale >= 1, else 1), centred at scale * (i + 0.5), weights normalised to sum
//                  to 1 (the PIL / torchvision / torch antialias=True filter).
// Every output sample has exactly ``width`` taps; unused taps repeat the last index with weight
// exactly 0, so loops are uniform on CPU and GPU and the summation order is the same everywhere.
// ---------------------------------------------------------------------------------------------

CAC_HD float resample_scale(int in_size, int out_size) {
    return fdiv((float)in_size, (float)out_size);
}

CAC_HD int resample_width(int in_size, int out_size, int antialias) {
    if (!antialias) return 2;
    float scale = resample_scale(in_size, out_size);
    float support = scale >= 1.0f ? scale : 1.0f;
    return (int)ceilf(support) * 2 + 1;
}

// Taps of output sample i: ``width`` indices into the input axis and their weights.
CAC_HD void resample_taps(int in_size, int out_size, int antialias, int i, int width, int* idx,
                          float* w) {
    float scale = resample_scale(in_size, out_size);
    if (!antialias) {
        float src = fsub(fmul(scale, fadd((float)i, 0.5f)), 0.5f);
        if (src < 0.0f) src = 0.0f;
        int i0 = (int)floorf(src);
        if (i0 > in_size - 1) i0 = in_size - 1;
        float lam = fsub(src, (float)i0);
        lam = clamp_to(lam, 0.0f, 1.0f);
        int i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
        idx[0] = i0;
        idx[1] = i1;
        w[0] = fsub(1.0f, lam);
        w[1] = lam;
        for (int j = 2; j < width; ++j) {
            idx[j] = i1;
            w[j] = 0.0f;
        }
        return;
    }
    float support = scale >= 1.0f ? scale : 1.0f;
    float invscale = scale >= 1.0f ? fdiv(1.0f, scale) : 1.0f;
    float center = fmul(scale, fadd((float)i, 0.5f));
    int lo = (int)fadd(fsub(center, support), 0.5f);  // truncation toward zero, as torch
    if (lo < 0) lo = 0;
    int hi = (int)fadd(fadd(center, support), 0.5f);
    if (hi > in_size) hi = in_size;
    int n = hi - lo;
    if (n > width) n = width;
    if (n < 1) {  // cannot happen for valid sizes; keep the output defined (nearest sample)
        lo = (int)center;
        if (lo > in_size - 1) lo = in_size - 1;
        n = 1;
    }
    float total = 0.0f;
    for (int j = 0; j < n; ++j) {
        float x = fmul(fadd(fsub((float)(lo + j), center), 0.5f), invscale);
        float a = fabsf(x);
        float wj = a < 1.0f ? fsub(1.0f, a) : 0.0f;
        idx[j] = lo + j;
        w[j] = wj;
        total = fadd(total, wj);
    }
    for (int j = 0; j < n; ++j) w[j] = total != 0.0f ? fdiv(w[j], total) : (j == 0 ? 1.0f : 0.0f);
    for (int j = n; j < width; ++j) {
        idx[j] = lo + n - 1;
        w[j] = 0.0f;
    }
}

// ---------------------------------------------------------------------------------------------
// float32 -> float16 bits, round to nearest even (numpy's npy_floatbits_to_halfbits, without the
// floating-point status flags). On the device: the hardware conversion cvt.rn.f16.f32, which is
// what __float2half_rn compiles to, used directly so that NVRTC needs no cuda_fp16.h.
// ---------------------------------------------------------------------------------------------
CAC_HD unsigned short f32_to_f16_bits(float value) {
#if defined(__CUDA_ARCH__)
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(value));
    return h;
#else
    unsigned int f = float_bits(value);
    unsigned int h_sgn = (f & 0x80000000u) >> 16;
    unsigned int f_exp = f & 0x7f800000u;
    unsigned int f_sig;
    if (f_exp >= 0x47800000u) {  // overflow, inf or NaN
        if (f_exp == 0x7f800000u) {
            f_sig = f & 0x007fffffu;
            if (f_sig != 0) {  // NaN: keep the top payload bits, stay a NaN
                unsigned int ret = 0x7c00u + (f_sig >> 13);
                if (ret == 0x7c00u) ret++;
                return (unsigned short)(h_sgn + ret);
            }
            return (unsigned short)(h_sgn + 0x7c00u);
        }
        return (unsigned short)(h_sgn + 0x7c00u);
    }
    if (f_exp <= 0x38000000u) {  // half subnormal or zero
        if (f_exp < 0x33000000u) return (unsigned short)h_sgn;
        f_exp >>= 23;
        f_sig = 0x00800000u + (f & 0x007fffffu);
        f_sig >>= (113u - f_exp);
        if (((f_sig & 0x00003fffu) != 0x00001000u) || (f & 0x000007ffu)) f_sig += 0x00001000u;
        return (unsigned short)(h_sgn + (f_sig >> 13));
    }
    unsigned int h_exp = (f_exp - 0x38000000u) >> 13;
    f_sig = f & 0x007fffffu;
    if ((f_sig & 0x00003fffu) != 0x00001000u) f_sig += 0x00001000u;
    return (unsigned short)(h_sgn + h_exp + (f_sig >> 13));
#endif
}

}  // namespace cac
