// Per-slice statistics of a batch of slices: HU min/max (block reduction), calcium-candidate count
// and non-finite count, in one pass over the input. C++ twin: slice_stats / slice_stats_keys in
// kernels/cpu/preprocess_impl.cpp; semantics: kernels/reference.py.
//
// Launch: cac_stats_init<<<ceil(n/256), 256>>>, then cac_stats_<dtype><<<(blocks_per_slice, n), 256>>>
// (any blocks_per_slice >= 1; blocks of one slice combine through atomics on order-preserving
// integer keys, so the result does not depend on the launch shape), then cac_stats_finalize.
// acc is (n, 4) uint32: [min key, max key, candidate count, non-finite count].
#include "common.cuh"

namespace {

constexpr unsigned int kFull = 0xffffffffu;

__device__ __forceinline__ void warp_reduce(float& mn, float& mx, unsigned int& cnt, unsigned int& bad) {
    for (int o = 16; o > 0; o >>= 1) {
        const float a = __shfl_down_sync(kFull, mn, o);
        const float b = __shfl_down_sync(kFull, mx, o);
        mn = a < mn ? a : mn;
        mx = b > mx ? b : mx;
        cnt += __shfl_down_sync(kFull, cnt, o);
        bad += __shfl_down_sync(kFull, bad, o);
    }
}

template <typename T>
__device__ void stats_body(const T* __restrict__ src, int h, int w, int bits_stored, int is_signed,
                           const float* __restrict__ slope, const float* __restrict__ intercept,
                           float calcium_threshold, float body_threshold, unsigned int* __restrict__ acc) {
    const int z = blockIdx.y;
    const long long plane = (long long)h * w;
    const T* s = src + (long long)z * plane;
    const cac::StoredFormat f = cac::stored_format(bits_stored, is_signed != 0);
    const float sl = slope[z], ic = intercept[z];
    const float big = cac::float_max();
    float mn = cac::pos_inf(), mx = -cac::pos_inf();
    unsigned int cnt = 0, bad = 0;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < plane; i += stride) {
        const float v = cacdev::load_hu(s, i, f, sl, ic);
        mn = v < mn ? v : mn;
        mx = v > mx ? v : mx;
        bad += (fabsf(v) <= big) ? 0u : 1u;
        if (v >= calcium_threshold) {  // rare: only then look at the four neighbours
            const int y = (int)(i / w);
            const int x = (int)(i - (long long)y * w);
            if (y > 0 && y < h - 1 && x > 0 && x < w - 1) {
                const bool c = cac::calcium_candidate(
                    v, cacdev::load_hu(s, i - 1, f, sl, ic), cacdev::load_hu(s, i + 1, f, sl, ic),
                    cacdev::load_hu(s, i - w, f, sl, ic), cacdev::load_hu(s, i + w, f, sl, ic),
                    calcium_threshold, body_threshold);
                cnt += c ? 1u : 0u;
            }
        }
    }
    warp_reduce(mn, mx, cnt, bad);
    __shared__ float s_mn[32], s_mx[32];
    __shared__ unsigned int s_cnt[32], s_bad[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        s_mn[warp] = mn;
        s_mx[warp] = mx;
        s_cnt[warp] = cnt;
        s_bad[warp] = bad;
    }
    __syncthreads();
    if (warp == 0) {
        const int warps = (blockDim.x + 31) >> 5;
        mn = lane < warps ? s_mn[lane] : cac::pos_inf();
        mx = lane < warps ? s_mx[lane] : -cac::pos_inf();
        cnt = lane < warps ? s_cnt[lane] : 0u;
        bad = lane < warps ? s_bad[lane] : 0u;
        warp_reduce(mn, mx, cnt, bad);
        if (lane == 0) {
            atomicMin(acc + 4 * z + 0, cac::float_to_ordered(mn));
            atomicMax(acc + 4 * z + 1, cac::float_to_ordered(mx));
            if (cnt) atomicAdd(acc + 4 * z + 2, cnt);
            if (bad) atomicAdd(acc + 4 * z + 3, bad);
        }
    }
}

}  // namespace

extern "C" __global__ void cac_stats_init(unsigned int* __restrict__ acc, int n) {
    const int z = blockIdx.x * blockDim.x + threadIdx.x;
    if (z >= n) return;
    acc[4 * z + 0] = 0xffffffffu;  // min key: larger than any float's key
    acc[4 * z + 1] = 0u;           // max key: smaller than any float's key
    acc[4 * z + 2] = 0u;
    acc[4 * z + 3] = 0u;
}

#define CAC_STATS_ENTRY(NAME, T)                                                                 \
    extern "C" __global__ void NAME(const T* __restrict__ src, int h, int w, int bits_stored,    \
                                    int is_signed, const float* __restrict__ slope,               \
                                    const float* __restrict__ intercept, float calcium_threshold, \
                                    float body_threshold, unsigned int* __restrict__ acc) {       \
        stats_body<T>(src, h, w, bits_stored, is_signed, slope, intercept, calcium_threshold,     \
                      body_threshold, acc);                                                       \
    }

CAC_STATS_ENTRY(cac_stats_i16, short)
CAC_STATS_ENTRY(cac_stats_u16, unsigned short)
CAC_STATS_ENTRY(cac_stats_f32, float)

// acc -> minmax (n, 2) float32, counts (n,) int32, nonfinite (n,) int32 and the normalisation
// parameters (n, 3) float32 [lo, hi, inv] for mode 0 (per-slice min-max) or 1 (fixed window).
extern "C" __global__ void cac_stats_finalize(const unsigned int* __restrict__ acc, int n, int mode,
                                              float window_lo, float window_hi,
                                              float* __restrict__ minmax, int* __restrict__ counts,
                                              int* __restrict__ nonfinite, float* __restrict__ params) {
    const int z = blockIdx.x * blockDim.x + threadIdx.x;
    if (z >= n) return;
    const float mn = cac::ordered_to_float(acc[4 * z + 0]);
    const float mx = cac::ordered_to_float(acc[4 * z + 1]);
    minmax[2 * z + 0] = mn;
    minmax[2 * z + 1] = mx;
    counts[z] = (int)acc[4 * z + 2];
    nonfinite[z] = (int)acc[4 * z + 3];
    const cac::NormParams p = mode == 0 ? cac::minmax_params(mn, mx) : cac::window_params(window_lo, window_hi);
    params[3 * z + 0] = p.lo;
    params[3 * z + 1] = p.hi;
    params[3 * z + 2] = p.inv;
}
