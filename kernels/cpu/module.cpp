#include <pybind11/pybind11.h>
namespace py = pybind11;
PYBIND11_MODULE(_cpu, m) { m.doc() = "skeleton"; m.def("openmp_threads", []() { return 1; }); }
