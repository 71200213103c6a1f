// CPU preprocessing kernels (the C++ twins of kernels/cuda/*.cu).
//
// Compiled twice by CMakeLists.txt: -DCAC_ISA_AVX2 with -mavx2 -mf16c gives kernel_table_avx2(),
// no define gives kernel_table_base() for any x86-64 (or other) CPU. Everything here has internal
// linkage and no std:: templates are instantiated, so the linker can never hand an AVX2-compiled
// function to the baseline path (the usual multi-versioning pitfall).
//
// Work is parallel over slices (OpenMP, one slice per thread at a time); inner loops are written
// for the auto-vectoriser (#pragma omp simd). Per slice the fused path makes one pass over the
// stored slice from memory (pass A: decode -> HU -> min/max, candidate count), then resamples
// (pass B) re-reading the slice, which is then in L2/L3, with normalised rows kept in a small ring.
#include "preprocess_impl.h"

#include <cfloat>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#if defined(_WIN32)
#include <malloc.h>
#endif

#include "preprocess_math.h"

#if defined(CAC_ISA_AVX2)
#include <immintrin.h>
#define CAC_TABLE_FN kernel_table_avx2
#define CAC_TABLE_NAME "avx2+f16c"
#else
#define CAC_TABLE_FN kernel_table_base
#define CAC_TABLE_NAME "baseline"
#endif

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace cac {
namespace {

// ---------------------------------------------------------------------------------------------
// Small helpers (no std templates: see the file comment).
// ---------------------------------------------------------------------------------------------
#if defined(_MSC_VER)
inline float abs_f(float v) { return fabsf(v); }
#else
inline float abs_f(float v) { return __builtin_fabsf(v); }
#endif
inline int imin(int a, int b) { return a < b ? a : b; }
inline int imax(int a, int b) { return a > b ? a : b; }

inline int resolve_threads(int threads, long long work_items) {
#if defined(_OPENMP)
    int t = threads > 0 ? threads : omp_get_max_threads();
#else
    int t = 1;
    (void)threads;
#endif
    if (work_items < t) t = (int)(work_items > 0 ? work_items : 1);
    return t < 1 ? 1 : t;
}

inline int thread_id() {
#if defined(_OPENMP)
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// One 64-byte aligned block of float scratch per thread, allocated before any parallel region so
// that an allocation failure becomes std::bad_alloc (MemoryError in Python), never an abort.
struct ThreadScratch {
    float* base = nullptr;
    std::size_t per_thread = 0;
    ThreadScratch(int threads, std::size_t floats_per_thread) {
        per_thread = (floats_per_thread + 15) & ~std::size_t(15);
        std::size_t bytes = per_thread * sizeof(float) * (std::size_t)threads;
        if (bytes == 0) bytes = 64;
#if defined(_WIN32)
        void* p = _aligned_malloc(bytes, 64);
        if (p == nullptr) throw std::bad_alloc();
#else
        void* p = nullptr;
        if (posix_memalign(&p, 64, bytes) != 0) throw std::bad_alloc();
#endif
        base = static_cast<float*>(p);
    }
#if defined(_WIN32)
    ~ThreadScratch() { _aligned_free(base); }
#else
    ~ThreadScratch() { std::free(base); }
#endif
    ThreadScratch(const ThreadScratch&) = delete;
    ThreadScratch& operator=(const ThreadScratch&) = delete;
    float* for_thread(int t) const { return base + per_thread * (std::size_t)t; }
};

// ---------------------------------------------------------------------------------------------
// Rows: stored -> HU, HU -> normalised.
// ---------------------------------------------------------------------------------------------
inline void hu_row(const int16_t* src, int w, StoredFormat f, float s, float b, float* dst) {
#pragma omp simd
    for (int x = 0; x < w; ++x)
        dst[x] = to_hu((float)decode_word((unsigned int)(uint16_t)src[x], f), s, b);
}
inline void hu_row(const uint16_t* src, int w, StoredFormat f, float s, float b, float* dst) {
#pragma omp simd
    for (int x = 0; x < w; ++x) dst[x] = to_hu((float)decode_word((unsigned int)src[x], f), s, b);
}
inline void hu_row(const float* src, int w, StoredFormat, float s, float b, float* dst) {
#pragma omp simd
    for (int x = 0; x < w; ++x) dst[x] = to_hu(src[x], s, b);
}

// Specialised loops for the common cases, bit-identical to the generic formula: a natural 16-bit
// word (bits_stored 16, signedness of the dtype) decodes to itself; x * 1.0f == x exactly; and in
// min-max mode every HU of the slice lies in [min, max] (same HU function as the statistics pass),
// so the clamp is the identity and is skipped.
template <class T, bool Natural, bool UnitSlope, bool Clamp>
inline void norm_row_t(const T* src, int w, StoredFormat f, float s, float b, NormParams p, float* dst) {
#pragma omp simd
    for (int x = 0; x < w; ++x) {
        const float v = Natural ? (float)src[x] : (float)decode_word((unsigned int)(uint16_t)src[x], f);
        const float hu = UnitSlope ? fadd(v, b) : to_hu(v, s, b);
        const float t = Clamp ? clamp_to(hu, p.lo, p.hi) : hu;
        dst[x] = fsub(fmul(fsub(t, p.lo), p.inv), 1.0f);
    }
}

template <class T>
inline bool natural_word(StoredFormat f) {
    return f.mask == 0xffffu && f.sign_bit == (std::is_same<T, int16_t>::value ? 0x8000u : 0u);
}

template <class T, bool Clamp>
inline void norm_row_c(const T* src, int w, StoredFormat f, float s, float b, NormParams p, float* dst) {
    const bool nat = natural_word<T>(f), unit = s == 1.0f;
    if (nat && unit) norm_row_t<T, true, true, Clamp>(src, w, f, s, b, p, dst);
    else if (nat) norm_row_t<T, true, false, Clamp>(src, w, f, s, b, p, dst);
    else if (unit) norm_row_t<T, false, true, Clamp>(src, w, f, s, b, p, dst);
    else norm_row_t<T, false, false, Clamp>(src, w, f, s, b, p, dst);
}

template <class T>
inline void norm_row(const T* src, int w, StoredFormat f, float s, float b, NormParams p, float* dst,
                     bool within_range = false) {
    if (within_range) norm_row_c<T, false>(src, w, f, s, b, p, dst);
    else norm_row_c<T, true>(src, w, f, s, b, p, dst);
}
inline void norm_row(const float* src, int w, StoredFormat, float s, float b, NormParams p,
                     float* dst, bool = false) {
#pragma omp simd
    for (int x = 0; x < w; ++x) dst[x] = normalise(to_hu(src[x], s, b), p.lo, p.hi, p.inv);
}

// Row sources for the two passes. get(y, slot) returns the row, computing it into slot if needed.
template <class T>
struct StoredHuRows {  // pass A of the fused path: stored row -> HU
    const T* base;
    int w;
    StoredFormat f;
    float s, b;
    const float* get(int y, float* slot) const {
        hu_row(base + (std::size_t)y * w, w, f, s, b, slot);
        return slot;
    }
};
template <class T>
struct StoredNormRows {  // pass B of the fused path: stored row -> HU -> normalised
    const T* base;
    int w;
    StoredFormat f;
    float s, b;
    NormParams p;
    bool within_range;  // every HU of the slice lies in [p.lo, p.hi] (min-max mode)
    const float* get(int y, float* slot) const {
        norm_row(base + (std::size_t)y * w, w, f, s, b, p, slot, within_range);
        return slot;
    }
};
struct FloatRows {  // already the values to use: no copy
    const float* base;
    int w;
    const float* get(int y, float*) const { return base + (std::size_t)y * w; }
};

// ---------------------------------------------------------------------------------------------
// Pass A: min/max, non-finite count, calcium-candidate count over one slice.
// ---------------------------------------------------------------------------------------------
struct SliceStats {
    float mn, mx;
    int32_t count, nonfinite;
};

inline void row_minmax(const float* r, int w, float& mn, float& mx, int32_t& bad) {
    float a = mn, b = mx;
    int32_t c = 0;
    const float big = FLT_MAX;
#pragma omp simd reduction(min : a) reduction(max : b) reduction(+ : c)
    for (int x = 0; x < w; ++x) {
        float v = r[x];
        a = v < a ? v : a;
        b = v > b ? v : b;
        c += (int32_t)(!(abs_f(v) <= big));
    }
    mn = a;
    mx = b;
    bad += c;
}

inline int32_t row_candidates(const float* up, const float* cur, const float* dn, int w, float ct,
                              float bt) {
    int32_t c = 0;
#pragma omp simd reduction(+ : c)
    for (int x = 1; x < w - 1; ++x)
        c += (int32_t)calcium_candidate(cur[x], cur[x - 1], cur[x + 1], up[x], dn[x], ct, bt);
    return c;
}

template <class Src>
SliceStats slice_stats(const Src& src, int h, int w, float ct, float bt, bool want_counts,
                       float* ring /* 3 * w */) {
    SliceStats st;
    st.mn = pos_inf();
    st.mx = -pos_inf();
    st.count = 0;
    st.nonfinite = 0;
    const float* rows[3] = {nullptr, nullptr, nullptr};
    for (int y = 0; y < h; ++y) {
        const float* r = src.get(y, ring + (std::size_t)(y % 3) * w);
        rows[y % 3] = r;
        row_minmax(r, w, st.mn, st.mx, st.nonfinite);
        if (want_counts && y >= 2 && w >= 3)
            st.count += row_candidates(rows[(y - 2) % 3], rows[(y - 1) % 3], r, w, ct, bt);
    }
    return st;
}

// Pass A for 16-bit stored input, in an exact integer "key" domain (16 lanes per AVX2 op, no
// float work): key = decoded value, order-mapped into int16 (offset for unsigned 16-bit, bitwise
// not when slope < 0) so that HU = f(key) is non-decreasing in key. f is monotone because every
// float32 rounding is, so min/max HU = f(min/max key) exactly, and "HU >= t" is exactly
// "key >= k(t)" with k(t) the smallest key whose HU reaches t (found by binary search with the
// same f). The result equals the float computation bit for bit.
struct KeyFormat {
    uint16_t mask, sign_bit, flip;
    bool unsigned16;
    float slope, intercept;
};

inline KeyFormat key_format(int bits_stored, bool is_signed, float slope, float intercept) {
    StoredFormat f = stored_format(bits_stored, is_signed);
    KeyFormat k;
    k.mask = (uint16_t)f.mask;
    k.sign_bit = (uint16_t)f.sign_bit;
    k.unsigned16 = !is_signed && bits_stored == 16;
    k.flip = (uint16_t)((k.unsigned16 ? 0x8000u : 0u) ^ (slope < 0.0f ? 0xffffu : 0u));
    k.slope = slope;
    k.intercept = intercept;
    return k;
}

inline int16_t word_key(uint16_t word, const KeyFormat& k) {
    uint16_t v = (uint16_t)((uint16_t)((word & k.mask) ^ k.sign_bit) - k.sign_bit);
    return (int16_t)(uint16_t)(v ^ k.flip);
}

inline float key_hu(int key, const KeyFormat& k) {
    uint16_t u = (uint16_t)((uint16_t)key ^ k.flip);
    int value = k.unsigned16 ? (int)u : (int)(int16_t)u;
    return to_hu((float)value, k.slope, k.intercept);
}

// Smallest key whose HU satisfies HU >= t (strict = false) or HU > t (strict = true); 32768 if none.
inline int threshold_key(const KeyFormat& k, float t, bool strict) {
    auto ok = [&](int key) {
        float hu = key_hu(key, k);
        return strict ? hu > t : hu >= t;
    };
    if (!ok(32767)) return 32768;
    int lo = -32768, hi = 32767;  // ok(hi) holds; find the first key that holds
    if (ok(lo)) return lo;
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2;
        if (ok(mid)) hi = mid;
        else lo = mid;
    }
    return hi;
}

template <class T, bool Natural>
inline void key_row_t(const T* src, int w, const KeyFormat& k, int16_t* dst, int16_t& mn, int16_t& mx) {
    int16_t a = mn, b = mx;
    const uint16_t flip = k.flip;
#pragma omp simd reduction(min : a) reduction(max : b)
    for (int x = 0; x < w; ++x) {
        // natural 16-bit word: the decode is the identity, the key is the word xor flip
        int16_t v = Natural ? (int16_t)(uint16_t)((uint16_t)src[x] ^ flip) : word_key((uint16_t)src[x], k);
        dst[x] = v;
        a = v < a ? v : a;
        b = v > b ? v : b;
    }
    mn = a;
    mx = b;
}

template <class T>
inline void key_row(const T* src, int w, const KeyFormat& k, int16_t* dst, int16_t& mn, int16_t& mx) {
    const bool natural = k.mask == 0xffffu && k.sign_bit == (std::is_same<T, int16_t>::value ? 0x8000u : 0u);
    if (natural) key_row_t<T, true>(src, w, k, dst, mn, mx);
    else key_row_t<T, false>(src, w, k, dst, mn, mx);
}

inline int32_t key_candidates(const int16_t* up, const int16_t* cur, const int16_t* dn, int w,
                              int16_t kc, int16_t kb) {
    int32_t total = 0;
    // int16 lane sums stay exact: each lane adds at most one per column of a chunk <= 16384.
    for (int x0 = 1; x0 < w - 1; x0 += 16384) {
        const int x1 = imin(w - 1, x0 + 16384);
        int16_t c = 0;
#pragma omp simd reduction(+ : c)
        for (int x = x0; x < x1; ++x)
            c += (int16_t)((cur[x] >= kc) & (cur[x - 1] >= kb) & (cur[x + 1] >= kb) & (up[x] >= kb) &
                           (dn[x] >= kb));
        total += (uint16_t)c;
    }
    return total;
}

template <class T>
SliceStats slice_stats_keys(const T* slice, int h, int w, const KeyFormat& k, float ct, float bt,
                            int16_t* ring /* 3 * w */) {
    const int kc = threshold_key(k, ct, false);
    const int kb = threshold_key(k, bt, true);
    const bool can_count = kc <= 32767 && kb <= 32767 && w >= 3;
    int16_t mn = 32767, mx = -32768;
    int16_t row_max[3] = {-32768, -32768, -32768};
    const int16_t* rows[3] = {nullptr, nullptr, nullptr};
    int32_t count = 0;
    for (int y = 0; y < h; ++y) {
        int16_t* r = ring + (std::size_t)(y % 3) * w;
        int16_t rmn = 32767, rmx = -32768;
        key_row(slice + (std::size_t)y * w, w, k, r, rmn, rmx);
        rows[y % 3] = r;
        row_max[y % 3] = rmx;
        mn = rmn < mn ? rmn : mn;
        mx = rmx > mx ? rmx : mx;
        // Row y-1 can hold a candidate only if its maximum reaches the calcium key.
        if (can_count && y >= 2 && row_max[(y - 1) % 3] >= kc)
            count += key_candidates(rows[(y - 2) % 3], rows[(y - 1) % 3], r, w, (int16_t)kc, (int16_t)kb);
    }
    SliceStats st;
    st.mn = key_hu(mn, k);
    st.mx = key_hu(mx, k);
    st.count = count;
    st.nonfinite = (int32_t)(!(abs_f(st.mn) <= FLT_MAX)) + (int32_t)(!(abs_f(st.mx) <= FLT_MAX));
    return st;
}

// ---------------------------------------------------------------------------------------------
// Pass B: separable resampling, vertical first (vectorised over columns), then horizontal.
// out[oy][ox] = sum_k wx[k] * (sum_j wy[j] * row(iy[j])[ix[k]]), sums in tap order, first term a
// product (not 0 + product): the same sequence as the CUDA kernel and kernels/reference.py.
// ---------------------------------------------------------------------------------------------
constexpr int kMaxRing = 64;

inline int ring_slots(const AxisTaps& ty) { return imin(imax(ty.width, 2), kMaxRing); }

inline std::size_t resample_scratch_floats(const AxisTaps& ty, const AxisTaps& tx) {
    return (std::size_t)ring_slots(ty) * tx.in_size + tx.in_size + tx.out_size;
}

template <class Src, class Sink>
void resample_slice(const Src& src, const AxisTaps& ty, const AxisTaps& tx, float* scratch,
                    Sink& sink) {
    const int w = tx.in_size, oh = ty.out_size, ow = tx.out_size;
    const int R = ring_slots(ty);
    float* cache = scratch;
    float* tmp = cache + (std::size_t)R * w;
    float* acc = tmp + w;
    int slot_row[kMaxRing];
    const float* slot_ptr[kMaxRing];
    for (int s = 0; s < R; ++s) {
        slot_row[s] = -1;
        slot_ptr[s] = nullptr;
    }
    for (int oy = 0; oy < oh; ++oy) {
        for (int j = 0; j < ty.width; ++j) {
            const int r = ty.idx[(std::size_t)j * oh + oy];
            const float wj = ty.w[(std::size_t)j * oh + oy];
            const int s = r % R;
            if (slot_row[s] != r) {
                slot_ptr[s] = src.get(r, cache + (std::size_t)s * w);
                slot_row[s] = r;
            }
            const float* row = slot_ptr[s];
            if (j == 0) {
#pragma omp simd
                for (int x = 0; x < w; ++x) tmp[x] = fmul(wj, row[x]);
            } else {
#pragma omp simd
                for (int x = 0; x < w; ++x) tmp[x] = fadd(tmp[x], fmul(wj, row[x]));
            }
        }
        {
            const int32_t* ix = tx.idx;
            const float* wx = tx.w;
#pragma omp simd
            for (int ox = 0; ox < ow; ++ox) acc[ox] = fmul(wx[ox], tmp[ix[ox]]);
        }
        for (int k = 1; k < tx.width; ++k) {
            const int32_t* ix = tx.idx + (std::size_t)k * ow;
            const float* wx = tx.w + (std::size_t)k * ow;
#pragma omp simd
            for (int ox = 0; ox < ow; ++ox) acc[ox] = fadd(acc[ox], fmul(wx[ox], tmp[ix[ox]]));
        }
        sink(oy, acc);
    }
}

#if defined(CAC_ISA_AVX2)
// AVX2 pass B: the same arithmetic as resample_slice (each output's sums in the same tap order,
// separate multiply and add; trailing zero-weight taps skipped, see AxisTaps::used), organised for
// SIMD without gathers. Output rows are done 8 at a
// time: their vertical sums tmp[8][w] are transposed (8x8 blocks) to tmpT[w][8], so the horizontal
// taps become one aligned 8-lane load per tap (the 8 lanes are 8 output rows), and the 8-lane
// results are transposed back to rows.
inline void transpose8(__m256& r0, __m256& r1, __m256& r2, __m256& r3, __m256& r4, __m256& r5,
                       __m256& r6, __m256& r7) {
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r0 = _mm256_permute2f128_ps(u0, u4, 0x20);
    r1 = _mm256_permute2f128_ps(u1, u5, 0x20);
    r2 = _mm256_permute2f128_ps(u2, u6, 0x20);
    r3 = _mm256_permute2f128_ps(u3, u7, 0x20);
    r4 = _mm256_permute2f128_ps(u0, u4, 0x31);
    r5 = _mm256_permute2f128_ps(u1, u5, 0x31);
    r6 = _mm256_permute2f128_ps(u2, u6, 0x31);
    r7 = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// rows[8][stride] (columns c0..c0+n) -> colsT[(c0 + i) * 8 + lane]
inline void rows_to_lanes(const float* rows, std::size_t stride, int n, float* colsT) {
    int c = 0;
    for (; c + 8 <= n; c += 8) {
        __m256 r0 = _mm256_loadu_ps(rows + 0 * stride + c), r1 = _mm256_loadu_ps(rows + 1 * stride + c);
        __m256 r2 = _mm256_loadu_ps(rows + 2 * stride + c), r3 = _mm256_loadu_ps(rows + 3 * stride + c);
        __m256 r4 = _mm256_loadu_ps(rows + 4 * stride + c), r5 = _mm256_loadu_ps(rows + 5 * stride + c);
        __m256 r6 = _mm256_loadu_ps(rows + 6 * stride + c), r7 = _mm256_loadu_ps(rows + 7 * stride + c);
        transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
        float* d = colsT + (std::size_t)c * 8;
        _mm256_store_ps(d + 0, r0);
        _mm256_store_ps(d + 8, r1);
        _mm256_store_ps(d + 16, r2);
        _mm256_store_ps(d + 24, r3);
        _mm256_store_ps(d + 32, r4);
        _mm256_store_ps(d + 40, r5);
        _mm256_store_ps(d + 48, r6);
        _mm256_store_ps(d + 56, r7);
    }
    for (; c < n; ++c)
        for (int l = 0; l < 8; ++l) colsT[(std::size_t)c * 8 + l] = rows[l * stride + c];
}

// colsT[c * 8 + lane] -> rows[lane * stride + c]
inline void lanes_to_rows(const float* colsT, int n, float* rows, std::size_t stride) {
    int c = 0;
    for (; c + 8 <= n; c += 8) {
        const float* s = colsT + (std::size_t)c * 8;
        __m256 r0 = _mm256_load_ps(s + 0), r1 = _mm256_load_ps(s + 8), r2 = _mm256_load_ps(s + 16);
        __m256 r3 = _mm256_load_ps(s + 24), r4 = _mm256_load_ps(s + 32), r5 = _mm256_load_ps(s + 40);
        __m256 r6 = _mm256_load_ps(s + 48), r7 = _mm256_load_ps(s + 56);
        transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
        _mm256_storeu_ps(rows + 0 * stride + c, r0);
        _mm256_storeu_ps(rows + 1 * stride + c, r1);
        _mm256_storeu_ps(rows + 2 * stride + c, r2);
        _mm256_storeu_ps(rows + 3 * stride + c, r3);
        _mm256_storeu_ps(rows + 4 * stride + c, r4);
        _mm256_storeu_ps(rows + 5 * stride + c, r5);
        _mm256_storeu_ps(rows + 6 * stride + c, r6);
        _mm256_storeu_ps(rows + 7 * stride + c, r7);
    }
    for (; c < n; ++c)
        for (int l = 0; l < 8; ++l) rows[l * stride + c] = colsT[(std::size_t)c * 8 + l];
}

inline std::size_t round16(std::size_t v) { return (v + 15) & ~std::size_t(15); }

inline std::size_t resample_scratch_floats_avx2(const AxisTaps& ty, const AxisTaps& tx) {
    const std::size_t w = (std::size_t)tx.in_size, ow = (std::size_t)tx.out_size;
    return round16((std::size_t)ring_slots(ty) * w) + round16(8 * w) * 2 + round16(8 * ow) * 2 + 16;
}

template <class Src, class Sink>
void resample_slice_avx2(const Src& src, const AxisTaps& ty, const AxisTaps& tx, float* scratch,
                         Sink& sink) {
    const int w = tx.in_size, oh = ty.out_size, ow = tx.out_size;
    const int R = ring_slots(ty);
    float* cache = scratch;
    float* tmp = cache + round16((std::size_t)R * w);   // [8][w]
    float* tmpT = tmp + round16(8 * (std::size_t)w);     // [w][8]
    float* outT = tmpT + round16(8 * (std::size_t)w);    // [ow][8]
    float* orows = outT + round16(8 * (std::size_t)ow);  // [8][ow]
    int slot_row[kMaxRing];
    const float* slot_ptr[kMaxRing];
    for (int s = 0; s < R; ++s) {
        slot_row[s] = -1;
        slot_ptr[s] = nullptr;
    }
    for (int oy0 = 0; oy0 < oh; oy0 += 8) {
        const int lanes = imin(8, oh - oy0);
        for (int l = 0; l < 8; ++l) {
            float* t = tmp + (std::size_t)l * w;
            if (l >= lanes) {  // padding lanes of the last block: defined values, never stored
                std::memset(t, 0, sizeof(float) * (std::size_t)w);
                continue;
            }
            const int oy = oy0 + l;
            const int taps = ty.used[oy];
            const float* rows[kMaxRing];
            float wts[kMaxRing];
            for (int j = 0; j < taps; ++j) {
                const int r = ty.idx[(std::size_t)j * oh + oy];
                wts[j] = ty.w[(std::size_t)j * oh + oy];
                const int s = r % R;
                if (slot_row[s] != r) {
                    slot_ptr[s] = src.get(r, cache + (std::size_t)s * w);
                    slot_row[s] = r;
                }
                rows[j] = slot_ptr[s];
            }
            // A fetched row stays valid for this output row: the ring holds >= width rows and the
            // taps of one output row are distinct consecutive rows (or repeats of the last one).
            int x = 0;
            for (; x + 32 <= w; x += 32) {
                __m256 wv = _mm256_set1_ps(wts[0]);
                __m256 a0 = _mm256_mul_ps(wv, _mm256_loadu_ps(rows[0] + x));
                __m256 a1 = _mm256_mul_ps(wv, _mm256_loadu_ps(rows[0] + x + 8));
                __m256 a2 = _mm256_mul_ps(wv, _mm256_loadu_ps(rows[0] + x + 16));
                __m256 a3 = _mm256_mul_ps(wv, _mm256_loadu_ps(rows[0] + x + 24));
                for (int j = 1; j < taps; ++j) {
                    wv = _mm256_set1_ps(wts[j]);
                    const float* r = rows[j] + x;
                    a0 = _mm256_add_ps(a0, _mm256_mul_ps(wv, _mm256_loadu_ps(r)));
                    a1 = _mm256_add_ps(a1, _mm256_mul_ps(wv, _mm256_loadu_ps(r + 8)));
                    a2 = _mm256_add_ps(a2, _mm256_mul_ps(wv, _mm256_loadu_ps(r + 16)));
                    a3 = _mm256_add_ps(a3, _mm256_mul_ps(wv, _mm256_loadu_ps(r + 24)));
                }
                _mm256_storeu_ps(t + x, a0);
                _mm256_storeu_ps(t + x + 8, a1);
                _mm256_storeu_ps(t + x + 16, a2);
                _mm256_storeu_ps(t + x + 24, a3);
            }
            for (; x < w; ++x) {
                float a = fmul(wts[0], rows[0][x]);
                for (int j = 1; j < taps; ++j) a = fadd(a, fmul(wts[j], rows[j][x]));
                t[x] = a;
            }
        }
        rows_to_lanes(tmp, (std::size_t)w, w, tmpT);
        for (int ox = 0; ox < ow; ++ox) {
            __m256 acc = _mm256_mul_ps(_mm256_set1_ps(tx.w[ox]),
                                       _mm256_load_ps(tmpT + (std::size_t)tx.idx[ox] * 8));
            const int taps = tx.used[ox];
            for (int k = 1; k < taps; ++k) {
                const std::size_t o = (std::size_t)k * ow + ox;
                acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(tx.w[o]),
                                                       _mm256_load_ps(tmpT + (std::size_t)tx.idx[o] * 8)));
            }
            _mm256_store_ps(outT + (std::size_t)ox * 8, acc);
        }
        lanes_to_rows(outT, ow, orows, (std::size_t)ow);
        for (int l = 0; l < lanes; ++l) sink(oy0 + l, orows + (std::size_t)l * ow);
    }
}
#endif

template <class Src, class Sink>
void resample_any(const Src& src, const AxisTaps& ty, const AxisTaps& tx, float* scratch, Sink& sink) {
#if defined(CAC_ISA_AVX2)
    resample_slice_avx2(src, ty, tx, scratch, sink);
#else
    resample_slice(src, ty, tx, scratch, sink);
#endif
}

inline std::size_t resample_any_scratch(const AxisTaps& ty, const AxisTaps& tx) {
#if defined(CAC_ISA_AVX2)
    return resample_scratch_floats_avx2(ty, tx);
#else
    return resample_scratch_floats(ty, tx);
#endif
}

// ---------------------------------------------------------------------------------------------
// float32 -> float16.
// ---------------------------------------------------------------------------------------------
inline void f16_row(const float* in, uint16_t* out, std::size_t n) {
    std::size_t i = 0;
#if defined(CAC_ISA_AVX2)
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(in + i);
        __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
    }
    for (; i < n; ++i) {
        __m128i h = _mm_cvtps_ph(_mm_set_ss(in[i]), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        out[i] = (uint16_t)_mm_extract_epi16(h, 0);
    }
#else
    for (; i < n; ++i) out[i] = f32_to_f16_bits(in[i]);
#endif
}

struct ClampSink {  // model input: clamp to [-1, 1], store float16 or float32
    void* out;
    bool f16;
    int ow;
    void operator()(int oy, float* acc) const {
#pragma omp simd
        for (int x = 0; x < ow; ++x) acc[x] = clamp_to(acc[x], -1.0f, 1.0f);
        if (f16) {
            f16_row(acc, static_cast<uint16_t*>(out) + (std::size_t)oy * ow, (std::size_t)ow);
        } else {
            std::memcpy(static_cast<float*>(out) + (std::size_t)oy * ow, acc,
                        sizeof(float) * (std::size_t)ow);
        }
    }
};

struct CopySink {  // plain resize: float32 as computed
    float* out;
    int ow;
    void operator()(int oy, const float* acc) const {
        std::memcpy(out + (std::size_t)oy * ow, acc, sizeof(float) * (std::size_t)ow);
    }
};

// ---------------------------------------------------------------------------------------------
// Table entries.
// ---------------------------------------------------------------------------------------------
void k_to_hu(const StoredBatch& in, float* out, int threads) {
    const long long rows = (long long)in.n * in.h;
    const int nt = resolve_threads(threads, rows);
    const StoredFormat f = stored_format(in.bits_stored, in.is_signed);
    const int w = in.w, h = in.h;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (long long r = 0; r < rows; ++r) {
        const int z = (int)(r / h);
        const float s = in.slope[z], b = in.intercept[z];
        float* dst = out + (std::size_t)r * w;
        switch (in.dtype) {
            case InDtype::i16:
                hu_row(static_cast<const int16_t*>(in.data) + (std::size_t)r * w, w, f, s, b, dst);
                break;
            case InDtype::u16:
                hu_row(static_cast<const uint16_t*>(in.data) + (std::size_t)r * w, w, f, s, b, dst);
                break;
            case InDtype::f32:
                hu_row(static_cast<const float*>(in.data) + (std::size_t)r * w, w, f, s, b, dst);
                break;
        }
    }
}

void k_stats(const float* hu, int n, int h, int w, float ct, float bt, float* minmax,
             int32_t* counts, int32_t* nonfinite, int threads) {
    const int nt = resolve_threads(threads, n);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int z = 0; z < n; ++z) {
        FloatRows src{hu + (std::size_t)z * h * w, w};
        SliceStats st = slice_stats(src, h, w, ct, bt, counts != nullptr, nullptr);
        if (minmax) {
            minmax[2 * z] = st.mn;
            minmax[2 * z + 1] = st.mx;
        }
        if (counts) counts[z] = st.count;
        if (nonfinite) nonfinite[z] = st.nonfinite;
    }
}

void k_normalise(const float* hu, int n, int h, int w, const float* lo, const float* hi,
                 const float* inv, float* out, int threads) {
    const long long rows = (long long)n * h;
    const int nt = resolve_threads(threads, rows);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (long long r = 0; r < rows; ++r) {
        const int z = (int)(r / h);
        const float l = lo[z], u = hi[z], v = inv[z];
        const float* src = hu + (std::size_t)r * w;
        float* dst = out + (std::size_t)r * w;
#pragma omp simd
        for (int x = 0; x < w; ++x) dst[x] = normalise(src[x], l, u, v);
    }
}

void k_resize(const float* img, int n, const AxisTaps& ty, const AxisTaps& tx, float* out,
              int threads) {
    const int nt = resolve_threads(threads, n);
    ThreadScratch scratch(nt, resample_any_scratch(ty, tx));
    const int h = ty.in_size, w = tx.in_size;
    const std::size_t out_plane = (std::size_t)ty.out_size * tx.out_size;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int z = 0; z < n; ++z) {
        FloatRows src{img + (std::size_t)z * h * w, w};
        CopySink sink{out + (std::size_t)z * out_plane, tx.out_size};
        resample_any(src, ty, tx, scratch.for_thread(thread_id()), sink);
    }
}

template <class T>
void preprocess_slice(const T* base, const StoredBatch& in, int z, const PreprocessParams& p,
                      const AxisTaps& ty, const AxisTaps& tx, void* out, bool out_f16,
                      float* minmax, int32_t* counts, int32_t* nonfinite, float* scratch) {
    const int h = in.h, w = in.w;
    const StoredFormat f = stored_format(in.bits_stored, in.is_signed);
    const T* slice = base + (std::size_t)z * h * w;
    const float s = in.slope[z], b = in.intercept[z];

    SliceStats st;
    if constexpr (std::is_same<T, float>::value) {
        StoredHuRows<T> hu_src{slice, w, f, s, b};
        st = slice_stats(hu_src, h, w, p.calcium_threshold, p.body_threshold, true, scratch);
    } else {
        KeyFormat k = key_format(in.bits_stored, in.is_signed, s, b);
        st = slice_stats_keys(slice, h, w, k, p.calcium_threshold, p.body_threshold,
                              reinterpret_cast<int16_t*>(scratch));
    }
    minmax[2 * z] = st.mn;
    minmax[2 * z + 1] = st.mx;
    counts[z] = st.count;
    nonfinite[z] = st.nonfinite;

    NormParams np = p.mode == 0 ? minmax_params(st.mn, st.mx) : window_params(p.window_lo, p.window_hi);
    StoredNormRows<T> norm_src{slice, w, f, s, b, np, p.mode == 0};
    const std::size_t out_plane = (std::size_t)ty.out_size * tx.out_size;
    void* out_slice = out_f16 ? (void*)(static_cast<uint16_t*>(out) + (std::size_t)z * out_plane)
                              : (void*)(static_cast<float*>(out) + (std::size_t)z * out_plane);
    ClampSink sink{out_slice, out_f16, tx.out_size};
    resample_any(norm_src, ty, tx, scratch, sink);
}

void k_preprocess(const StoredBatch& in, const PreprocessParams& p, const AxisTaps& ty,
                  const AxisTaps& tx, void* out, bool out_f16, float* minmax, int32_t* counts,
                  int32_t* nonfinite, int threads) {
    const int nt = resolve_threads(threads, in.n);
    std::size_t per = resample_any_scratch(ty, tx);
    if (per < (std::size_t)3 * in.w) per = (std::size_t)3 * in.w;
    ThreadScratch scratch(nt, per);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int z = 0; z < in.n; ++z) {
        float* s = scratch.for_thread(thread_id());
        switch (in.dtype) {
            case InDtype::i16:
                preprocess_slice(static_cast<const int16_t*>(in.data), in, z, p, ty, tx, out,
                                 out_f16, minmax, counts, nonfinite, s);
                break;
            case InDtype::u16:
                preprocess_slice(static_cast<const uint16_t*>(in.data), in, z, p, ty, tx, out,
                                 out_f16, minmax, counts, nonfinite, s);
                break;
            case InDtype::f32:
                preprocess_slice(static_cast<const float*>(in.data), in, z, p, ty, tx, out,
                                 out_f16, minmax, counts, nonfinite, s);
                break;
        }
    }
}

void k_f32_to_f16(const float* in, uint16_t* out, std::size_t count) { f16_row(in, out, count); }

}  // namespace

const KernelTable& CAC_TABLE_FN() {
    static const KernelTable table = {CAC_TABLE_NAME, k_to_hu,  k_stats,      k_normalise,
                                      k_resize,       k_preprocess, k_f32_to_f16};
    return table;
}

}  // namespace cac
