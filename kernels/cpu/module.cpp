// pybind11 bindings of the CPU preprocessing kernels: cacstream.kernels._cpu.
//
// The bindings take numpy arrays as they are (no conversion, no copy): inputs must be C-contiguous
// with the exact dtype and native byte order, outputs are preallocated by the caller (so the
// Python dispatch can hand in pinned host memory or a torch tensor's buffer). Anything else raises
// TypeError/ValueError naming the argument. The GIL is released around every computation.
// Use cacstream.kernels (kernels/__init__.py), which validates friendlier and allocates outputs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "preprocess_impl.h"
#include "preprocess_math.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace py = pybind11;

namespace {

bool cpu_supports_avx2_f16c() {
#if defined(CAC_HAVE_AVX2_TABLE) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#else
    return false;
#endif
}

std::vector<std::string> available_isas() {
    std::vector<std::string> v{"base"};
    if (cpu_supports_avx2_f16c()) v.push_back("avx2");
    return v;
}

const cac::KernelTable& table_for(const std::string& isa) {
    if (isa == "base") return cac::kernel_table_base();
#if defined(CAC_HAVE_AVX2_TABLE)
    if (isa == "avx2") {
        if (!cpu_supports_avx2_f16c())
            throw py::value_error("isa='avx2' requested but this CPU lacks AVX2/F16C");
        return cac::kernel_table_avx2();
    }
    if (isa == "auto") return cpu_supports_avx2_f16c() ? cac::kernel_table_avx2() : cac::kernel_table_base();
#else
    if (isa == "auto") return cac::kernel_table_base();
    if (isa == "avx2") throw py::value_error("this build has no AVX2 kernels (non-x86 or CACSTREAM_NO_AVX2)");
#endif
    throw py::value_error("isa must be 'auto', 'base' or 'avx2', got '" + isa + "'");
}

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) {
        if (i) s += ", ";
        s += std::to_string(a.shape(i));
    }
    if (a.ndim() == 1) s += ",";
    return s + ")";
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

void require_layout(const py::array& a, const char* name, bool writeable) {
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(name) + " must be C-contiguous");
    if (!a.dtype().attr("isnative").cast<bool>())
        throw py::value_error(std::string(name) + " must be in native byte order, got " + dtype_str(a));
    if (writeable && !a.writeable()) throw py::value_error(std::string(name) + " must be writeable");
}

void require_dtype(const py::array& a, const char* name, char code, const char* what) {
    if (a.dtype().char_() != code)
        throw py::type_error(std::string(name) + " must be " + what + ", got " + dtype_str(a));
}

void require_shape(const py::array& a, const char* name, std::vector<py::ssize_t> shape) {
    bool ok = a.ndim() == (py::ssize_t)shape.size();
    for (std::size_t i = 0; ok && i < shape.size(); ++i) ok = a.shape(i) == shape[i];
    if (!ok) {
        std::string want = "(";
        for (std::size_t i = 0; i < shape.size(); ++i) {
            if (i) want += ", ";
            want += std::to_string(shape[i]);
        }
        if (shape.size() == 1) want += ",";
        throw py::value_error(std::string(name) + " must have shape " + want + ")" + ", got " +
                              shape_str(a));
    }
}

int checked_int(py::ssize_t v, const char* what) {
    if (v <= 0 || v > (py::ssize_t)0x7fffffff)
        throw py::value_error(std::string(what) + " must be in 1..2^31-1, got " + std::to_string(v));
    return (int)v;
}

// A (n, h, w) stored batch: int16, uint16 or float32, plus per-slice slope/intercept (n,) float32.
cac::StoredBatch stored_batch(const py::array& stored, const py::array& slope,
                              const py::array& intercept, int bits_stored, bool is_signed) {
    require_layout(stored, "stored", false);
    if (stored.ndim() != 3)
        throw py::value_error("stored must be (slices, rows, columns), got shape " + shape_str(stored));
    cac::StoredBatch b{};
    switch (stored.dtype().char_()) {
        case 'h': b.dtype = cac::InDtype::i16; break;
        case 'H': b.dtype = cac::InDtype::u16; break;
        case 'f': b.dtype = cac::InDtype::f32; break;
        default:
            throw py::type_error("stored must be int16, uint16 or float32, got " + dtype_str(stored));
    }
    if (b.dtype != cac::InDtype::f32 && (bits_stored < 1 || bits_stored > 16))
        throw py::value_error("bits_stored must be in 1..16, got " + std::to_string(bits_stored));
    b.data = stored.data();
    b.n = checked_int(stored.shape(0), "slices");
    b.h = checked_int(stored.shape(1), "rows");
    b.w = checked_int(stored.shape(2), "columns");
    b.bits_stored = bits_stored;
    b.is_signed = is_signed;
    for (auto [arr, name] : {std::pair<const py::array*, const char*>{&slope, "slope"},
                             std::pair<const py::array*, const char*>{&intercept, "intercept"}}) {
        require_layout(*arr, name, false);
        require_dtype(*arr, name, 'f', "float32");
        require_shape(*arr, name, {stored.shape(0)});
    }
    b.slope = static_cast<const float*>(slope.data());
    b.intercept = static_cast<const float*>(intercept.data());
    return b;
}

// Transposed taps (width, out) as the kernels read them.
struct Taps {
    int in_size, out_size, width;
    std::vector<int32_t> idx;
    std::vector<float> w;
    std::vector<int32_t> used;
    cac::AxisTaps view() const { return {in_size, out_size, width, idx.data(), w.data(), used.data()}; }
};

Taps make_taps(int in_size, int out_size, bool antialias) {
    Taps t;
    t.in_size = in_size;
    t.out_size = out_size;
    t.width = cac::resample_width(in_size, out_size, antialias ? 1 : 0);
    t.idx.assign((std::size_t)t.width * out_size, 0);
    t.w.assign((std::size_t)t.width * out_size, 0.0f);
    t.used.assign((std::size_t)out_size, 1);
    std::vector<int> idx(t.width);
    std::vector<float> w(t.width);
    for (int i = 0; i < out_size; ++i) {
        cac::resample_taps(in_size, out_size, antialias ? 1 : 0, i, t.width, idx.data(), w.data());
        for (int k = 0; k < t.width; ++k) {
            t.idx[(std::size_t)k * out_size + i] = idx[k];
            t.w[(std::size_t)k * out_size + i] = w[k];
            if (w[k] != 0.0f) t.used[i] = k + 1;
        }
    }
    return t;
}

py::tuple py_resample_taps(int in_size, int out_size, bool antialias) {
    if (in_size < 1 || out_size < 1) throw py::value_error("sizes must be >= 1");
    Taps t = make_taps(in_size, out_size, antialias);
    py::array_t<int32_t> idx({(py::ssize_t)out_size, (py::ssize_t)t.width});
    py::array_t<float> w({(py::ssize_t)out_size, (py::ssize_t)t.width});
    auto I = idx.mutable_unchecked<2>();
    auto W = w.mutable_unchecked<2>();
    for (int i = 0; i < out_size; ++i)
        for (int k = 0; k < t.width; ++k) {
            I(i, k) = t.idx[(std::size_t)k * out_size + i];
            W(i, k) = t.w[(std::size_t)k * out_size + i];
        }
    return py::make_tuple(idx, w);
}

void py_to_hu(const py::array& stored, const py::array& slope, const py::array& intercept,
              int bits_stored, bool is_signed, const py::array& out, int threads,
              const std::string& isa) {
    const cac::KernelTable& t = table_for(isa);
    cac::StoredBatch b = stored_batch(stored, slope, intercept, bits_stored, is_signed);
    require_layout(out, "out", true);
    require_dtype(out, "out", 'f', "float32");
    require_shape(out, "out", {stored.shape(0), stored.shape(1), stored.shape(2)});
    float* o = static_cast<float*>(const_cast<void*>(out.data()));
    py::gil_scoped_release nogil;
    t.to_hu(b, o, threads);
}

void py_stats(const py::array& hu, float calcium_threshold, float body_threshold,
              const py::object& minmax, const py::object& counts, const py::object& nonfinite,
              int threads, const std::string& isa) {
    const cac::KernelTable& t = table_for(isa);
    require_layout(hu, "hu", false);
    require_dtype(hu, "hu", 'f', "float32");
    if (hu.ndim() != 3) throw py::value_error("hu must be (slices, rows, columns), got " + shape_str(hu));
    const int n = checked_int(hu.shape(0), "slices"), h = checked_int(hu.shape(1), "rows"),
              w = checked_int(hu.shape(2), "columns");
    float* mm = nullptr;
    int32_t* cnt = nullptr;
    int32_t* bad = nullptr;
    if (!minmax.is_none()) {
        py::array a = minmax.cast<py::array>();
        require_layout(a, "minmax", true);
        require_dtype(a, "minmax", 'f', "float32");
        require_shape(a, "minmax", {hu.shape(0), 2});
        mm = static_cast<float*>(a.mutable_data());
    }
    for (auto [obj, name, ptr] : {std::tuple<const py::object*, const char*, int32_t**>{&counts, "counts", &cnt},
                                  std::tuple<const py::object*, const char*, int32_t**>{&nonfinite, "nonfinite", &bad}}) {
        if (obj->is_none()) continue;
        py::array a = obj->cast<py::array>();
        require_layout(a, name, true);
        require_dtype(a, name, 'i', "int32");
        require_shape(a, name, {hu.shape(0)});
        *ptr = static_cast<int32_t*>(a.mutable_data());
    }
    const float* src = static_cast<const float*>(hu.data());
    py::gil_scoped_release nogil;
    t.stats(src, n, h, w, calcium_threshold, body_threshold, mm, cnt, bad, threads);
}

void py_normalise(const py::array& hu, const py::array& lo, const py::array& hi,
                  const py::array& inv, const py::array& out, int threads, const std::string& isa) {
    const cac::KernelTable& t = table_for(isa);
    require_layout(hu, "hu", false);
    require_dtype(hu, "hu", 'f', "float32");
    if (hu.ndim() != 3) throw py::value_error("hu must be (slices, rows, columns), got " + shape_str(hu));
    for (auto [arr, name] : {std::pair<const py::array*, const char*>{&lo, "lo"},
                             std::pair<const py::array*, const char*>{&hi, "hi"},
                             std::pair<const py::array*, const char*>{&inv, "inv"}}) {
        require_layout(*arr, name, false);
        require_dtype(*arr, name, 'f', "float32");
        require_shape(*arr, name, {hu.shape(0)});
    }
    require_layout(out, "out", true);
    require_dtype(out, "out", 'f', "float32");
    require_shape(out, "out", {hu.shape(0), hu.shape(1), hu.shape(2)});
    const int n = checked_int(hu.shape(0), "slices"), h = checked_int(hu.shape(1), "rows"),
              w = checked_int(hu.shape(2), "columns");
    const float* src = static_cast<const float*>(hu.data());
    const float *l = static_cast<const float*>(lo.data()), *u = static_cast<const float*>(hi.data()),
                *v = static_cast<const float*>(inv.data());
    float* o = static_cast<float*>(const_cast<void*>(out.data()));
    py::gil_scoped_release nogil;
    t.normalise(src, n, h, w, l, u, v, o, threads);
}

void py_resize(const py::array& img, const py::array& out, bool antialias, int threads,
               const std::string& isa) {
    const cac::KernelTable& t = table_for(isa);
    require_layout(img, "image", false);
    require_dtype(img, "image", 'f', "float32");
    if (img.ndim() != 3) throw py::value_error("image must be (slices, rows, columns), got " + shape_str(img));
    require_layout(out, "out", true);
    require_dtype(out, "out", 'f', "float32");
    if (out.ndim() != 3 || out.shape(0) != img.shape(0))
        throw py::value_error("out must be (slices, out_rows, out_columns) with the image's slice count, got " +
                              shape_str(out));
    const int n = checked_int(img.shape(0), "slices");
    Taps ty = make_taps(checked_int(img.shape(1), "rows"), checked_int(out.shape(1), "out rows"), antialias);
    Taps tx = make_taps(checked_int(img.shape(2), "columns"), checked_int(out.shape(2), "out columns"), antialias);
    const float* src = static_cast<const float*>(img.data());
    float* o = static_cast<float*>(const_cast<void*>(out.data()));
    py::gil_scoped_release nogil;
    t.resize(src, n, ty.view(), tx.view(), o, threads);
}

void py_preprocess(const py::array& stored, const py::array& slope, const py::array& intercept,
                   int bits_stored, bool is_signed, int mode, float window_lo, float window_hi,
                   float calcium_threshold, float body_threshold, bool antialias,
                   const py::array& out, const py::array& minmax, const py::array& counts,
                   const py::array& nonfinite, int threads, const std::string& isa) {
    const cac::KernelTable& t = table_for(isa);
    cac::StoredBatch b = stored_batch(stored, slope, intercept, bits_stored, is_signed);
    if (mode != 0 && mode != 1) throw py::value_error("mode must be 0 (minmax) or 1 (window)");
    if (mode == 1 && !(window_hi > window_lo))
        throw py::value_error("window must be (low, high) with high > low");
    require_layout(out, "out", true);
    const char oc = out.dtype().char_();
    if (oc != 'e' && oc != 'f') throw py::type_error("out must be float16 or float32, got " + dtype_str(out));
    if (out.ndim() != 4 || out.shape(0) != stored.shape(0) || out.shape(1) != 1)
        throw py::value_error("out must be (slices, 1, out_rows, out_columns), got " + shape_str(out));
    require_layout(minmax, "minmax", true);
    require_dtype(minmax, "minmax", 'f', "float32");
    require_shape(minmax, "minmax", {stored.shape(0), 2});
    require_layout(counts, "counts", true);
    require_dtype(counts, "counts", 'i', "int32");
    require_shape(counts, "counts", {stored.shape(0)});
    require_layout(nonfinite, "nonfinite", true);
    require_dtype(nonfinite, "nonfinite", 'i', "int32");
    require_shape(nonfinite, "nonfinite", {stored.shape(0)});
    Taps ty = make_taps(b.h, checked_int(out.shape(2), "out rows"), antialias);
    Taps tx = make_taps(b.w, checked_int(out.shape(3), "out columns"), antialias);
    cac::PreprocessParams p{mode, window_lo, window_hi, calcium_threshold, body_threshold};
    void* o = const_cast<void*>(out.data());
    float* mm = static_cast<float*>(const_cast<void*>(minmax.data()));
    int32_t* cnt = static_cast<int32_t*>(const_cast<void*>(counts.data()));
    int32_t* bad = static_cast<int32_t*>(const_cast<void*>(nonfinite.data()));
    py::gil_scoped_release nogil;
    t.preprocess(b, p, ty.view(), tx.view(), o, oc == 'e', mm, cnt, bad, threads);
}

void py_f32_to_f16(const py::array& in, const py::array& out, const std::string& isa) {
    const cac::KernelTable& t = table_for(isa);
    require_layout(in, "values", false);
    require_dtype(in, "values", 'f', "float32");
    require_layout(out, "out", true);
    if (out.dtype().char_() != 'H' && out.dtype().char_() != 'e')
        throw py::type_error("out must be uint16 or float16, got " + dtype_str(out));
    if (out.size() != in.size()) throw py::value_error("out must have as many elements as values");
    const float* src = static_cast<const float*>(in.data());
    uint16_t* dst = static_cast<uint16_t*>(const_cast<void*>(out.data()));
    const std::size_t count = (std::size_t)in.size();
    py::gil_scoped_release nogil;
    t.f32_to_f16(src, dst, count);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
    m.doc() =
        "CPU twins of the CUDA preprocessing kernels (cacstream.kernels). Raw bindings: inputs "
        "C-contiguous with exact dtypes, outputs preallocated; the GIL is released while computing.";
    const char* threads_doc = "threads: OpenMP threads (0 = OMP_NUM_THREADS / all cores)";
    (void)threads_doc;

    m.def("available_isas", &available_isas, "Kernel builds this CPU can run ('base', 'avx2').");
    m.def(
        "default_isa", []() { return std::string(table_for("auto").name); },
        "Name of the kernel build 'auto' selects on this CPU.");
    m.def(
        "openmp_threads",
        []() {
#if defined(_OPENMP)
            return omp_get_max_threads();
#else
            return 1;
#endif
        },
        "Threads OpenMP uses by default (1 when built without OpenMP).");
    m.def("resample_taps", &py_resample_taps, py::arg("in_size"), py::arg("out_size"),
          py::arg("antialias"),
          "(idx int32 (out, width), w float32 (out, width)): the resampling taps of the shared header.");
    m.def("to_hu", &py_to_hu, py::arg("stored"), py::arg("slope"), py::arg("intercept"),
          py::arg("bits_stored"), py::arg("is_signed"), py::arg("out"), py::arg("threads") = 0,
          py::arg("isa") = "auto", "stored (n,h,w) int16/uint16/float32 -> out float32 HU.");
    m.def("stats", &py_stats, py::arg("hu"), py::arg("calcium_threshold"), py::arg("body_threshold"),
          py::arg("minmax") = py::none(), py::arg("counts") = py::none(),
          py::arg("nonfinite") = py::none(), py::arg("threads") = 0, py::arg("isa") = "auto",
          "Per-slice HU min/max (n,2) float32, calcium-candidate counts and non-finite counts (n,) int32.");
    m.def("normalise", &py_normalise, py::arg("hu"), py::arg("lo"), py::arg("hi"), py::arg("inv"),
          py::arg("out"), py::arg("threads") = 0, py::arg("isa") = "auto",
          "out = (clamp(hu, lo, hi) - lo) * inv - 1 with per-slice lo/hi/inv.");
    m.def("resize", &py_resize, py::arg("image"), py::arg("out"), py::arg("antialias"),
          py::arg("threads") = 0, py::arg("isa") = "auto",
          "Bilinear resize (n,h,w) -> out (n,oh,ow), float32, half-pixel centres.");
    m.def("preprocess", &py_preprocess, py::arg("stored"), py::arg("slope"), py::arg("intercept"),
          py::arg("bits_stored"), py::arg("is_signed"), py::arg("mode"), py::arg("window_lo"),
          py::arg("window_hi"), py::arg("calcium_threshold"), py::arg("body_threshold"),
          py::arg("antialias"), py::arg("out"), py::arg("minmax"), py::arg("counts"),
          py::arg("nonfinite"), py::arg("threads") = 0, py::arg("isa") = "auto",
          "Fused stored -> model input (n,1,oh,ow) float16/float32, HU min/max, candidate counts.");
    m.def("f32_to_f16", &py_f32_to_f16, py::arg("values"), py::arg("out"), py::arg("isa") = "auto",
          "float32 -> float16 bits, round to nearest even (F16C on 'avx2', portable on 'base').");
}
