// Element-wise conversion and resampling of a batch of slices. C++ twin:
// kernels/cpu/preprocess_impl.cpp; semantics: kernels/reference.py; arithmetic:
// kernels/common/preprocess_math.h.
//
// Resampling taps are (out, width) row-major here ([i * width + k]); cac_taps fills them with the
// shared header's resample_taps, so the GPU uses exactly the CPU's weights. One thread per output
// pixel computes, in the CPU's order, out = sum_k wx[k] * (sum_j wy[j] * v(iy[j], ix[k])): each
// column sum is the CPU's vertical pass for that column, then the horizontal sum, first term a
// product, separate multiply and add (__fmul_rn / __fadd_rn): bit-identical to the C++ result.
#include "common.cuh"

extern "C" __global__ void cac_taps(int in_size, int out_size, int antialias, int width,
                                    int* __restrict__ idx, float* __restrict__ w) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= out_size) return;
    cac::resample_taps(in_size, out_size, antialias, i, width, idx + (long long)i * width,
                       w + (long long)i * width);
}

// stored (n, h*w) -> float32 HU; grid (blocks, n).
#define CAC_TO_HU_ENTRY(NAME, T)                                                                  \
    extern "C" __global__ void NAME(const T* __restrict__ src, long long plane, int bits_stored,  \
                                    int is_signed, const float* __restrict__ slope,                \
                                    const float* __restrict__ intercept, float* __restrict__ out) { \
        const int z = blockIdx.y;                                                                  \
        const cac::StoredFormat f = cac::stored_format(bits_stored, is_signed != 0);               \
        const float sl = slope[z], ic = intercept[z];                                              \
        const T* s = src + (long long)z * plane;                                                   \
        float* o = out + (long long)z * plane;                                                     \
        for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < plane;            \
             i += (long long)gridDim.x * blockDim.x)                                               \
            o[i] = cacdev::load_hu(s, i, f, sl, ic);                                               \
    }

CAC_TO_HU_ENTRY(cac_to_hu_i16, short)
CAC_TO_HU_ENTRY(cac_to_hu_u16, unsigned short)
CAC_TO_HU_ENTRY(cac_to_hu_f32, float)

// HU (n, plane) -> (clamp(h, lo, hi) - lo) * inv - 1 with params (n, 3) [lo, hi, inv].
extern "C" __global__ void cac_normalise(const float* __restrict__ hu, long long plane,
                                         const float* __restrict__ params, float* __restrict__ out) {
    const int z = blockIdx.y;
    const float lo = params[3 * z], hi = params[3 * z + 1], inv = params[3 * z + 2];
    const float* s = hu + (long long)z * plane;
    float* o = out + (long long)z * plane;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < plane;
         i += (long long)gridDim.x * blockDim.x)
        o[i] = cac::normalise(s[i], lo, hi, inv);
}

namespace {

// MODE 0: plain resize of float32 values. MODE 1: the model input: stored -> HU -> normalised
// with params (n, 3), resized, clamped to [-1, 1].
template <int MODE, typename T, typename OutT>
__device__ void resample_body(const T* __restrict__ src, int h, int w, int bits_stored, int is_signed,
                              const float* __restrict__ slope, const float* __restrict__ intercept,
                              const float* __restrict__ params, int oh, int ow, int ky,
                              const int* __restrict__ iy, const float* __restrict__ wy, int kx,
                              const int* __restrict__ ix, const float* __restrict__ wx,
                              OutT* __restrict__ out) {
    const int z = blockIdx.y;
    const long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= (long long)oh * ow) return;
    const int oy = (int)(o / ow);
    const int ox = (int)(o - (long long)oy * ow);
    const T* s = src + (long long)z * h * w;
    const cac::StoredFormat f = cac::stored_format(bits_stored, is_signed != 0);
    float sl = 1.0f, ic = 0.0f, lo = 0.0f, hi = 0.0f, inv = 0.0f;
    if (MODE == 1) {
        sl = slope[z];
        ic = intercept[z];
        lo = params[3 * z];
        hi = params[3 * z + 1];
        inv = params[3 * z + 2];
    }
    const int* ty = iy + (long long)oy * ky;
    const float* tyw = wy + (long long)oy * ky;
    float acc = 0.0f;
    for (int k = 0; k < kx; ++k) {
        const int x = ix[(long long)ox * kx + k];
        float col = 0.0f;
        for (int j = 0; j < ky; ++j) {
            const long long e = (long long)ty[j] * w + x;
            float v;
            if (MODE == 1) v = cac::normalise(cacdev::load_hu(s, e, f, sl, ic), lo, hi, inv);
            else v = (float)s[e];
            const float p = cac::fmul(tyw[j], v);
            col = j == 0 ? p : cac::fadd(col, p);
        }
        const float p = cac::fmul(wx[(long long)ox * kx + k], col);
        acc = k == 0 ? p : cac::fadd(acc, p);
    }
    if (MODE == 1) acc = cac::clamp_to(acc, -1.0f, 1.0f);
    cacdev::store_out(out + (long long)z * oh * ow + o, acc);
}

}  // namespace

#define CAC_RESAMPLE_ARGS                                                                          \
    int h, int w, int bits_stored, int is_signed, const float *__restrict__ slope,                 \
        const float *__restrict__ intercept, const float *__restrict__ params, int oh, int ow,     \
        int ky, const int *__restrict__ iy, const float *__restrict__ wy, int kx,                  \
        const int *__restrict__ ix, const float *__restrict__ wx
#define CAC_RESAMPLE_PASS h, w, bits_stored, is_signed, slope, intercept, params, oh, ow, ky, iy, wy, kx, ix, wx

#define CAC_RESAMPLE_ENTRY(NAME, MODE, T, OUT_T)                                                  \
    extern "C" __global__ void NAME(const T* __restrict__ src, CAC_RESAMPLE_ARGS,                \
                                    OUT_T* __restrict__ out) {                                    \
        resample_body<MODE, T, OUT_T>(src, CAC_RESAMPLE_PASS, out);                              \
    }

// Grid (ceil(oh * ow / block), n). Plain resize (slope/intercept/params unused, may be null):
CAC_RESAMPLE_ENTRY(cac_resize_f32, 0, float, float)
// Model input, float16 (bits of IEEE half, round to nearest even) or float32:
CAC_RESAMPLE_ENTRY(cac_preprocess_i16_f16, 1, short, unsigned short)
CAC_RESAMPLE_ENTRY(cac_preprocess_u16_f16, 1, unsigned short, unsigned short)
CAC_RESAMPLE_ENTRY(cac_preprocess_f32_f16, 1, float, unsigned short)
CAC_RESAMPLE_ENTRY(cac_preprocess_i16_f32, 1, short, float)
CAC_RESAMPLE_ENTRY(cac_preprocess_u16_f32, 1, unsigned short, float)
CAC_RESAMPLE_ENTRY(cac_preprocess_f32_f32, 1, float, float)
