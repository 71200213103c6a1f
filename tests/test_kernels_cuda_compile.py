"""The CUDA sources compile, without a GPU, so a broken kernel fails CI on a CPU machine.

* nvcc: every ``kernels/cuda/*.cu`` to a cubin for sm_80 (A100) and sm_90 (H100), warnings as
  errors, ptxas spill/local-memory warnings as errors; the PTX holds every kernel the Python backend
  launches and no fused multiply-add (the GPU must round like the CPU).
* NVRTC (what CuPy's RawModule uses at run time): the exact text and options of
  ``cacstream.kernels.cuda_sources``, when a libnvrtc is installed (pip ``nvidia-cuda-nvrtc`` or a
  CUDA toolkit).
* The shared header as plain C++ (warnings as errors), and its refusal of -ffast-math.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cacstream.kernels import cuda_sources

CU_FILES = sorted(cuda_sources.CUDA_DIR.glob("*.cu"))
ARCHS = ("sm_80", "sm_90")


def _nvcc() -> str:
    for candidate in (shutil.which("nvcc"), os.environ.get("CUDA_PATH", "") + "/bin/nvcc", "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("nvcc not found (PATH, $CUDA_PATH/bin, /usr/local/cuda/bin): install the CUDA toolkit to compile the kernels")


def _cxx() -> str:
    for name in ("g++", "c++", "clang++"):
        if shutil.which(name):
            return shutil.which(name)  # type: ignore[return-value]
    pytest.skip("no C++ compiler found")


def test_every_launched_kernel_has_a_source() -> None:
    assert {p.name for p in CU_FILES} == set(cuda_sources.KERNELS)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_nvcc_compiles(cu: Path, arch: str, tmp_path: Path) -> None:
    nvcc = _nvcc()
    includes = [f"-I{cuda_sources.COMMON_DIR}", f"-I{cuda_sources.CUDA_DIR}"]
    common = [nvcc, "-std=c++17", "--fmad=false", *includes, f"-arch={arch}", "-Werror", "all-warnings"]
    cubin = subprocess.run(
        [*common, "-cubin", "-Xptxas", "-warn-spills,-warn-lmem-usage,-Werror", "-o", str(tmp_path / "k.cubin"), str(cu)],
        capture_output=True, text=True,
    )
    assert cubin.returncode == 0, f"nvcc -cubin {cu.name} for {arch} failed:\n{cubin.stderr}"
    if arch != ARCHS[0]:
        return  # the PTX checks below do not depend on the architecture
    ptx = subprocess.run([*common, "-ptx", "-o", str(tmp_path / "k.ptx"), str(cu)], capture_output=True, text=True)
    assert ptx.returncode == 0, ptx.stderr
    text = (tmp_path / "k.ptx").read_text()
    entries = set(re.findall(r"\.entry\s+(\w+)", text))
    missing = set(cuda_sources.KERNELS[cu.name]) - entries
    assert not missing, f"kernels launched from Python but not defined in {cu.name}: {sorted(missing)}"
    assert "fma.rn.f32" not in text, "a fused multiply-add would round differently from the CPU twin"


def _load_nvrtc() -> ctypes.CDLL:
    candidates: list[Path] = []
    try:
        import nvidia  # pip wheels: nvidia-cuda-nvrtc (cu13 layout) or nvidia-cuda-nvrtc-cu12

        for root in map(Path, nvidia.__path__):
            candidates += sorted(root.glob("cu13/lib/libnvrtc.so*")) + sorted(root.glob("cuda_nvrtc/lib/libnvrtc.so*"))
    except ImportError:
        pass
    for base in (os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if base:
            candidates += sorted(Path(base).glob("lib64/libnvrtc.so*")) + sorted(Path(base).glob("targets/*/lib/libnvrtc.so*"))
    for lib in candidates:
        if "builtins" in lib.name or "alt" in lib.name:
            continue
        for builtins in sorted(lib.parent.glob("libnvrtc-builtins.so*")):  # NVRTC dlopens it by name
            if "alt" not in builtins.name:
                ctypes.CDLL(str(builtins), mode=os.RTLD_GLOBAL)
        try:
            return ctypes.CDLL(str(lib))
        except OSError:
            continue
    pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc, or a CUDA toolkit with lib64/libnvrtc.so): "
                "the nvcc tests above still compile every kernel")


@pytest.mark.parametrize("arch", ("compute_80", "sm_90"))
@pytest.mark.parametrize("name", sorted(cuda_sources.KERNELS))
def test_nvrtc_compiles_what_cupy_compiles(name: str, arch: str, tmp_path: Path, monkeypatch) -> None:
    nvrtc = _load_nvrtc()
    monkeypatch.chdir(tmp_path)  # includes must resolve through the options, as in CuPy
    prog = ctypes.c_void_p()
    src = cuda_sources.source_text(name).encode()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, b"kern.cu", 0, None, None) == 0
    opts = [o.encode() for o in (*cuda_sources.NVRTC_OPTIONS, f"--gpu-architecture={arch}")]
    rc = nvrtc.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    assert rc == 0, f"NVRTC could not compile {name} for {arch}:\n{log.value.decode(errors='replace')}"


def test_header_digest_changes_the_source_text() -> None:
    """CuPy caches compiled kernels by source text: the header digest must be part of it."""
    text = cuda_sources.source_text("stats.cu")
    assert text.startswith("// headers sha256 ")
    assert (cuda_sources.CUDA_DIR / "stats.cu").read_text() in text


def test_shared_header_compiles_as_cpp(tmp_path: Path) -> None:
    cxx = _cxx()
    src = tmp_path / "use_header.cpp"
    src.write_text('#include "preprocess_math.h"\nint main() { return (int)cac::f32_to_f16_bits(1.0f) == 0x3c00 ? 0 : 1; }\n')
    exe = tmp_path / "use_header"
    r = subprocess.run([cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off",
                        f"-I{cuda_sources.COMMON_DIR}", str(src), "-o", str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert subprocess.run([str(exe)]).returncode == 0
    fast = subprocess.run([cxx, "-std=c++17", "-ffast-math", "-fsyntax-only", f"-I{cuda_sources.COMMON_DIR}", str(src)],
                          capture_output=True, text=True)
    assert fast.returncode != 0 and "ffast-math" in fast.stderr
