// A CPU emulator of the CUDA execution model, just enough for kernels/cuda/*.cu, so the CPU test
// suite can run the real kernel sources (and the CuPy backend's launch code, through
// tests/cuda_emulator/fake_cupy.py) without a GPU.
//
// The .cu files are included as C++: __global__/__device__ vanish, threadIdx/blockIdx are
// thread_local, __shared__ is static (blocks run one after another). Kernels that synchronise
// (__syncthreads, __shfl_down_sync) run with one fiber per CUDA thread of a block and real
// barriers (user-level fibers on one OS thread: deterministic and fast); the others run thread by
// thread. The arithmetic is the shared
// header's host path (IEEE single operations, portable float16 rounding), which the GPU matches
// bit for bit (__f*_rn, cvt.rn.f16.f32); what this cannot show is GPU-only behaviour (memory model,
// real warp scheduling, the PTX conversion instruction itself).
//
// C API (ctypes): emu_signature(name) -> "p:i2,i,i,..." or null; emu_launch(name, grid, block, args).
#include <ucontext.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

struct emu_dim3 {
    unsigned x = 1, y = 1, z = 1;
};
thread_local emu_dim3 threadIdx, blockIdx;
emu_dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

namespace emu {
// Cooperative execution: one fiber (ucontext) per CUDA thread of the block, scheduled round-robin
// on this OS thread; a barrier parks a fiber until every participant has arrived.
struct Barrier {
    unsigned count = 0, arrived = 0, generation = 0;
};
struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    emu_dim3 idx;
    Barrier* waiting = nullptr;
    unsigned wait_generation = 0;
    bool done = false;
};
struct WarpExchange {
    Barrier bar;
    uint32_t slot[32];
};
bool cooperative_launch = false;
ucontext_t scheduler_ctx;
std::vector<Fiber>* fibers = nullptr;
unsigned current = 0;
Barrier block_barrier;
std::vector<WarpExchange> warps;

inline void barrier_wait(Barrier& b) {
    if (++b.arrived == b.count) {  // last to arrive: open the barrier, keep running
        b.arrived = 0;
        ++b.generation;
        return;
    }
    Fiber& f = (*fibers)[current];
    f.waiting = &b;
    f.wait_generation = b.generation;
    swapcontext(&f.ctx, &scheduler_ctx);
}
inline unsigned lane() { return current % 32; }
inline WarpExchange& warp() { return warps[current / 32]; }
}  // namespace emu

inline void __syncthreads() {
    if (!emu::cooperative_launch) std::abort();  // a kernel that syncs must be registered cooperative
    emu::barrier_wait(emu::block_barrier);
}

template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta) {
    static_assert(sizeof(T) == 4, "32-bit shuffles only");
    if (!emu::cooperative_launch) std::abort();
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    emu::WarpExchange& w = emu::warp();
    const unsigned lane = emu::lane();
    w.slot[lane] = bits;
    emu::barrier_wait(w.bar);
    const uint32_t r = lane + delta < 32 ? w.slot[lane + delta] : bits;
    emu::barrier_wait(w.bar);
    T out;
    std::memcpy(&out, &r, 4);
    return out;
}

inline unsigned atomicMin(unsigned* p, unsigned v) {
    unsigned old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (v < old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
inline unsigned atomicMax(unsigned* p, unsigned v) {
    unsigned old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (v > old && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }

#include "resample.cu"
#include "stats.cu"

namespace emu {

template <class T>
struct code;
template <> struct code<int> { static std::string get() { return "i"; } };
template <> struct code<long long> { static std::string get() { return "q"; } };
template <> struct code<float> { static std::string get() { return "f"; } };
template <class T>
struct code<T*> {
    static std::string get() {
        using U = std::remove_cv_t<T>;
        if constexpr (std::is_same_v<U, short>) return "p:i2";
        else if constexpr (std::is_same_v<U, unsigned short>) return "p:u2";
        else if constexpr (std::is_same_v<U, int>) return "p:i4";
        else if constexpr (std::is_same_v<U, unsigned int>) return "p:u4";
        else if constexpr (std::is_same_v<U, float>) return "p:f4";
        else static_assert(sizeof(U) == 0, "unsupported pointer type");
    }
};

struct Entry {
    std::string signature;
    bool cooperative;
    std::function<void(void**)> call;
};

template <class... A, std::size_t... I>
void call_with(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<std::decay_t<A>*>(args[I])...);
}

template <class... A>
Entry entry(void (*k)(A...), bool cooperative) {
    Entry e;
    std::string sig;
    ((sig += (sig.empty() ? "" : ",") + code<std::decay_t<A>>::get()), ...);
    e.signature = sig;
    e.cooperative = cooperative;
    e.call = [k](void** a) { call_with(k, a, std::index_sequence_for<A...>{}); };
    return e;
}

const std::map<std::string, Entry>& registry() {
    static const std::map<std::string, Entry> r = {
        {"cac_stats_init", entry(cac_stats_init, false)},
        {"cac_stats_i16", entry(cac_stats_i16, true)},
        {"cac_stats_u16", entry(cac_stats_u16, true)},
        {"cac_stats_f32", entry(cac_stats_f32, true)},
        {"cac_stats_finalize", entry(cac_stats_finalize, false)},
        {"cac_taps", entry(cac_taps, false)},
        {"cac_to_hu_i16", entry(cac_to_hu_i16, false)},
        {"cac_to_hu_u16", entry(cac_to_hu_u16, false)},
        {"cac_to_hu_f32", entry(cac_to_hu_f32, false)},
        {"cac_normalise", entry(cac_normalise, false)},
        {"cac_resize_f32", entry(cac_resize_f32, false)},
        {"cac_preprocess_i16_f16", entry(cac_preprocess_i16_f16, false)},
        {"cac_preprocess_u16_f16", entry(cac_preprocess_u16_f16, false)},
        {"cac_preprocess_f32_f16", entry(cac_preprocess_f32_f16, false)},
        {"cac_preprocess_i16_f32", entry(cac_preprocess_i16_f32, false)},
        {"cac_preprocess_u16_f32", entry(cac_preprocess_u16_f32, false)},
        {"cac_preprocess_f32_f32", entry(cac_preprocess_f32_f32, false)},
    };
    return r;
}

void run_sequential(const Entry& e, void** args) {
    for (unsigned bz = 0; bz < gridDim.z; ++bz)
        for (unsigned by = 0; by < gridDim.y; ++by)
            for (unsigned bx = 0; bx < gridDim.x; ++bx) {
                blockIdx = {bx, by, bz};
                for (unsigned tz = 0; tz < blockDim.z; ++tz)
                    for (unsigned ty = 0; ty < blockDim.y; ++ty)
                        for (unsigned tx = 0; tx < blockDim.x; ++tx) {
                            threadIdx = {tx, ty, tz};
                            e.call(args);
                        }
            }
}

const Entry* fiber_entry = nullptr;
void** fiber_args = nullptr;

void fiber_main() {
    fiber_entry->call(fiber_args);
    (*fibers)[current].done = true;
    swapcontext(&(*fibers)[current].ctx, &scheduler_ctx);
}

// Separate, not inlined: getcontext "returns twice" in principle, which must not touch the
// scheduler loop's variables.
__attribute__((noinline)) void init_fiber(Fiber& f, emu_dim3 idx) {
    if (f.stack.empty()) f.stack.resize(64 * 1024);  // allocated once per launch, reused per block
    f.idx = idx;
    f.waiting = nullptr;
    f.wait_generation = 0;
    f.done = false;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
}

void run_cooperative(const Entry& e, void** args) {
    const unsigned n = blockDim.x * blockDim.y * blockDim.z;
    std::vector<Fiber> fs(n);
    fibers = &fs;
    fiber_entry = &e;
    fiber_args = args;
    warps.assign((n + 31) / 32, WarpExchange{});
    for (auto& w : warps) w.bar.count = 32;
    for (unsigned bz = 0; bz < gridDim.z; ++bz)
        for (unsigned by = 0; by < gridDim.y; ++by)
            for (unsigned bx = 0; bx < gridDim.x; ++bx) {
                blockIdx = {bx, by, bz};
                block_barrier = Barrier{n, 0, 0};
                for (auto& w : warps) w.bar.arrived = 0;
                for (unsigned t = 0; t < n; ++t)
                    init_fiber(fs[t], {t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y)});
                for (unsigned remaining = n; remaining > 0;) {
                    bool progressed = false;
                    for (unsigned t = 0; t < n; ++t) {
                        Fiber& f = fs[t];
                        if (f.done) continue;
                        if (f.waiting && f.waiting->generation == f.wait_generation) continue;  // still parked
                        f.waiting = nullptr;
                        current = t;
                        threadIdx = f.idx;
                        swapcontext(&scheduler_ctx, &f.ctx);
                        progressed = true;
                        if (f.done) --remaining;
                    }
                    if (!progressed) {
                        std::fprintf(stderr, "emulator: deadlock (threads wait at a barrier others never reach)\n");
                        std::abort();
                    }
                }
            }
    fibers = nullptr;
}

}  // namespace emu

extern "C" const char* emu_signature(const char* name) {
    auto it = emu::registry().find(name);
    return it == emu::registry().end() ? nullptr : it->second.signature.c_str();
}

extern "C" int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                          unsigned bz, void** args) {
    auto it = emu::registry().find(name);
    if (it == emu::registry().end()) return 1;
    if (bx * by * bz == 0 || bx * by * bz > 1024 || gx * gy * gz == 0) return 2;
    gridDim = {gx, gy, gz};
    blockDim = {bx, by, bz};
    emu::cooperative_launch = it->second.cooperative;
    if (it->second.cooperative) {
        if ((bx * by * bz) % 32 != 0) return 3;  // whole warps only
        emu::run_cooperative(it->second, args);
    } else {
        emu::run_sequential(it->second, args);
    }
    return 0;
}
