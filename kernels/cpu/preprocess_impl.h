// Interface of the CPU preprocessing kernels. preprocess_impl.cpp is compiled twice (CMakeLists.txt):
// once for the baseline x86-64 / any CPU ("base") and once with AVX2 + F16C ("avx2"); module.cpp
// picks one table at import from what the running CPU supports, so one wheel is portable and still
// fast. Both tables compute the same values as the numpy reference and the CUDA kernels (same IEEE
// operations in the same order, round-to-nearest-even float16); the only freedom taken is skipping
// zero-weight padding taps in the AVX2 resampler, which can at most flip the sign of an exact zero.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cac {

enum class InDtype : int { i16 = 0, u16 = 1, f32 = 2 };

// A batch of slices as stored (or already HU when f32), C-contiguous (n, h, w).
struct StoredBatch {
    const void* data;
    InDtype dtype;
    int n, h, w;
    int bits_stored;        // 1..16; ignored for f32
    bool is_signed;         // two's complement in the low bits_stored bits; ignored for f32
    const float* slope;     // (n,)
    const float* intercept; // (n,)
};

// Taps along one axis, transposed: idx[k * out + i], w[k * out + i] for k < width. used[i] is the
// number of leading taps of output i up to its last non-zero weight: the rest is zero-weight
// padding, which may be skipped (adding w * x = +-0 never changes a non-zero sum).
struct AxisTaps {
    int in_size, out_size, width;
    const int32_t* idx;
    const float* w;
    const int32_t* used;
};

struct PreprocessParams {
    int mode;               // 0 = per-slice min-max, 1 = fixed window
    float window_lo, window_hi;
    float calcium_threshold, body_threshold;
};

struct KernelTable {
    const char* name;
    // stored -> float32 HU, same shape.
    void (*to_hu)(const StoredBatch& in, float* out, int threads);
    // Per-slice HU min/max (n, 2), calcium-candidate count (n,), count of non-finite values (n,).
    // Any output pointer may be null (not computed).
    void (*stats)(const float* hu, int n, int h, int w, float calcium_threshold,
                  float body_threshold, float* minmax, int32_t* counts, int32_t* nonfinite,
                  int threads);
    // n(h) = (clamp(h, lo, hi) - lo) * inv - 1 with per-slice lo/hi/inv (n,).
    void (*normalise)(const float* hu, int n, int h, int w, const float* lo, const float* hi,
                      const float* inv, float* out, int threads);
    // Separable resampling, vertical pass first, float32 in and out.
    void (*resize)(const float* img, int n, const AxisTaps& ty, const AxisTaps& tx, float* out,
                   int threads);
    // The fused path: stored -> HU -> stats -> normalise -> resize -> clamp [-1, 1] -> f16/f32.
    void (*preprocess)(const StoredBatch& in, const PreprocessParams& p, const AxisTaps& ty,
                       const AxisTaps& tx, void* out, bool out_f16, float* minmax,
                       int32_t* counts, int32_t* nonfinite, int threads);
    // float32 -> float16 bits, round to nearest even.
    void (*f32_to_f16)(const float* in, uint16_t* out, std::size_t count);
};

const KernelTable& kernel_table_base();
#if defined(CAC_HAVE_AVX2_TABLE)
const KernelTable& kernel_table_avx2();
#endif

}  // namespace cac
