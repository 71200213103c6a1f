"""The scanner: protocol (vendor, kernel, spacing, thickness, dose), PSF, slice profile, noise, motion.

Models what turns an object into a reconstructed CT image:
- in-plane point-spread function: a Gaussian whose FWHM is the kernel's (0.7–1.2 mm);
- slice-sensitivity profile: a box of the slice thickness, integrated on sub-planes;
- quantum noise: white noise shaped like a filtered-back-projection noise power spectrum,
  NPS(f) ∝ f/(f + f0) · MTF(f)², σ from dose, patient size and thickness, higher in the
  middle of the body than at its edge, correlated between overlapping slices;
- cardiac motion: each coronary (and the heart edge) is sampled at several displaced positions
  within the exposure window (blur and ghost doubling of non-gated scans);
- HU quantisation to integers within the 12-bit stored range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi

#: (manufacturer, model, kernels for ECG-gated calcium scoring, kernels for chest scans).
SCANNERS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("SIEMENS", "SOMATOM Definition Flash", ("B35f", "I30f", "B30f"), ("B31f", "I31f", "B41f")),
    ("SIEMENS", "SOMATOM Force", ("Qr36d", "Br36d"), ("Br40d", "Br36d")),
    ("SIEMENS", "SOMATOM Definition Edge", ("B35f", "I30f"), ("I31f", "B31f")),
    ("GE MEDICAL SYSTEMS", "LightSpeed VCT", ("STANDARD",), ("STANDARD", "SOFT")),
    ("GE MEDICAL SYSTEMS", "Revolution CT", ("STANDARD", "SOFT"), ("STANDARD", "DETAIL")),
    ("Philips", "Brilliance 64", ("B", "A"), ("B", "C")),
    ("Philips", "iCT 256", ("B", "XCA"), ("B", "C")),
    ("TOSHIBA", "Aquilion ONE", ("FC12", "FC02"), ("FC03", "FC18")),
    ("CANON MEDICAL SYSTEMS", "Aquilion PRIME SP", ("FC12",), ("FC03", "FC13")),
)

#: Nominal in-plane PSF FWHM (mm) of each kernel: soft ≈ 1.1, standard ≈ 0.95, sharper ≈ 0.8.
KERNEL_FWHM_MM: dict[str, float] = {
    "B30f": 1.10, "I30f": 1.10, "B31f": 1.05, "I31f": 1.05, "B35f": 0.95, "Qr36d": 0.95,
    "Br36d": 0.95, "Br40d": 0.85, "B41f": 0.82, "STANDARD": 0.95, "SOFT": 1.10, "DETAIL": 0.80,
    "A": 1.10, "B": 0.95, "C": 0.82, "XCA": 1.00, "FC12": 1.05, "FC02": 1.00, "FC03": 0.95,
    "FC13": 0.90, "FC18": 0.82,
}

#: Attenuation of bone and calcium relative to 120 kVp (water stays 0 HU).
KVP_DENSE_SCALE: dict[float, float] = {100.0: 1.10, 120.0: 1.0, 140.0: 0.93}


@dataclass(frozen=True)
class Protocol:
    """One acquisition + reconstruction. ``noise_sigma_hu`` is the 1σ noise of soft tissue at the
    centre of this patient's chest, for this thickness."""

    manufacturer: str
    model: str
    kernel: str
    kvp: float
    ecg_gated: bool
    psf_fwhm_mm: float
    noise_sigma_hu: float
    thickness_mm: float
    increment_mm: float
    pixel_spacing_mm: float
    matrix: int
    motion: bool

    @property
    def dense_scale(self) -> float:
        return KVP_DENSE_SCALE.get(self.kvp, 1.0)

    @property
    def psf_sigma_mm(self) -> float:
        return self.psf_fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0)))

    @property
    def noise_corr_mm(self) -> float:
        """Gaussian roll-off (σ, mm) of the noise power spectrum: 1.2 × the PSF's, fitted to the NPS
        measured on the COCA gated scans (I30f: ≈ 0.38 of its peak at 0.31 cycles/mm, 0.16 at 0.42)."""
        return 1.2 * self.psf_sigma_mm


def draw_thickness(rng: np.random.Generator, kind: str) -> float:
    """Reconstructed slice thickness: 3 mm dominates gated scoring; chest scans are often 5 mm."""
    if kind == "cardiac_gated":
        values, probs = (3.0, 2.5, 2.0, 1.5), (0.65, 0.15, 0.1, 0.1)
    elif kind == "chest":
        values, probs = (5.0, 3.0, 2.5, 2.0, 1.5), (0.4, 0.25, 0.15, 0.1, 0.1)
    else:  # calibration
        values, probs = (3.0, 2.5, 1.5, 5.0), (0.55, 0.15, 0.15, 0.15)
    return float(rng.choice(values, p=probs))


def draw_protocol(
    rng: np.random.Generator,
    kind: str,
    *,
    matrix: int,
    spacing_range: tuple[float, float],
    fov_mm: float,
    body_diameter_mm: float,
    thickness_mm: float | None,
    increment_mm: float | None,
    overlap_probability: float,
    manufacturer: str | None,
    motion: bool | None,
) -> Protocol:
    """Draw a realistic scanner and protocol for this kind of scan and this patient."""
    catalogue = [s for s in SCANNERS if manufacturer is None or s[0].lower() == manufacturer.lower()]
    if not catalogue:
        raise ValueError(f"no scanner of manufacturer {manufacturer!r}; known: {sorted({s[0] for s in SCANNERS})}")
    vendor, model, gated_kernels, chest_kernels = catalogue[int(rng.integers(len(catalogue)))]
    kernels = chest_kernels if kind == "chest" else gated_kernels
    kernel = str(kernels[int(rng.integers(len(kernels)))])
    kvp = float(rng.choice((120.0, 100.0, 140.0), p=(0.85, 0.1, 0.05)))
    fwhm = KERNEL_FWHM_MM[kernel] * float(rng.uniform(0.95, 1.05))
    t = float(thickness_mm) if thickness_mm is not None else draw_thickness(rng, kind)
    if increment_mm is not None:
        inc = float(increment_mm)
    elif rng.random() < overlap_probability:
        inc = float(t * rng.choice((0.5, 0.8)))
    else:
        inc = t
    ps = float(np.clip(fov_mm / matrix, spacing_range[0], spacing_range[1]))
    ps = round(ps * 1024) / 1024  # scanners store spacings like 0.3828125 (FOV in 1/2 mm steps)
    ps = float(np.clip(ps, spacing_range[0], spacing_range[1]))
    # Noise: dose draw at 3 mm, a size factor (AEC compensates only part of the attenuation),
    # and the thickness factor (noise variance ∝ 1 / thickness).
    sigma3 = float(rng.uniform(9.0, 20.0)) if kind != "chest" else float(rng.uniform(8.0, 18.0))
    size = math.exp((body_diameter_mm - 275.0) / 200.0)
    sigma = float(np.clip(sigma3 * size * math.sqrt(3.0 / t), 6.0, 40.0))
    if motion is None:
        motion = kind == "chest"
    return Protocol(
        manufacturer=vendor, model=model, kernel=kernel, kvp=kvp, ecg_gated=(kind != "chest"),
        psf_fwhm_mm=fwhm, noise_sigma_hu=sigma, thickness_mm=t, increment_mm=inc,
        pixel_spacing_mm=ps, matrix=matrix, motion=bool(motion),
    )


def sub_planes(center_z: float, thickness: float, step_mm: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """z of the sub-planes that integrate a box slice profile, and their (equal) weights."""
    n = max(1, int(math.ceil(thickness / step_mm - 1e-9)))
    offs = (np.arange(n) + 0.5) / n - 0.5
    return center_z + thickness * offs, np.full(n, 1.0 / n)


def blur_inplane(vol: np.ndarray, sigma_mm: float, ps: float) -> np.ndarray:
    """Gaussian PSF in the slice plane (each slice independently), edges replicated."""
    s = sigma_mm / ps
    if s <= 0:
        return vol
    return ndi.gaussian_filter(vol, sigma=(0.0, s, s), mode="nearest", truncate=3.0)


def nps_filter(rows: int, cols: int, ps: float, corr_sigma_mm: float, f0: float = 0.05) -> tuple[np.ndarray, float]:
    """Amplitude filter for white noise in rfft2 layout, and the std of the filtered noise.

    NPS(f) ∝ f / (f + f0) · exp(−4π²σ²f²): the ramp of filtered back-projection rolled off by the
    kernel (the measured NPS of the COCA gated scans peaks near 0.1 cycles/mm and is ~0 by 0.6).
    """
    fy = sfft.fftfreq(rows, d=ps)[:, None]
    fx_full = sfft.fftfreq(cols, d=ps)[None, :]
    f_full = np.sqrt(fy**2 + fx_full**2)
    h_full = np.sqrt(f_full / (f_full + f0)) * np.exp(-2.0 * (math.pi * corr_sigma_mm * f_full) ** 2)
    std = float(np.sqrt(np.mean(h_full**2)))  # Parseval: std of irfft2(rfft2(white)·H)
    fx = sfft.rfftfreq(cols, d=ps)[None, :]
    f = np.sqrt(fy**2 + fx**2)
    h = np.sqrt(f / (f + f0)) * np.exp(-2.0 * (math.pi * corr_sigma_mm * f) ** 2)
    return h.astype(np.float32), std


def correlated_noise(
    rng: np.random.Generator,
    n_slices: int,
    rows: int,
    cols: int,
    ps: float,
    corr_sigma_mm: float,
    thickness: float,
    increment: float,
) -> np.ndarray:
    """Unit-σ noise with the kernel's in-plane texture; overlapping slices share noise.

    corr_sigma_mm: Gaussian roll-off of the NPS (Protocol.noise_corr_mm).

    z: without overlap every slice has its own field. With overlap the scan is cut into cells of
    half an increment (edges on the slice centres) and a slice of thickness T averages the cells
    its box profile covers, weighted by the overlap length: two slices overlapping by a fraction f
    share exactly that fraction of their noise (correlation f), as in a real overlapping
    reconstruction.
    """
    h, _ = nps_filter(rows, cols, ps, corr_sigma_mm)

    def field() -> np.ndarray:
        # white noise drawn directly as its (Hermitian half-)spectrum: one inverse FFT per field
        spec = rng.standard_normal(h.shape, dtype=np.float32) + 1j * rng.standard_normal(h.shape, dtype=np.float32)
        return sfft.irfft2(spec * h, s=(rows, cols)).astype(np.float32)

    if thickness <= increment + 1e-9:
        out = np.stack([field() for _ in range(n_slices)])
        out /= max(float(out.std()), 1e-12)
        return out
    m = 2
    g = increment / m
    e = int(math.ceil(thickness / 2.0 / g))
    offsets = np.arange(-e, e)
    lo = np.maximum(offsets * g, -thickness / 2.0)
    hi = np.minimum((offsets + 1) * g, thickness / 2.0)
    w = np.maximum(hi - lo, 0.0)
    w /= np.sqrt(np.sum(w**2))
    n_cells = (n_slices - 1) * m + 2 * e
    cells = np.stack([field() for _ in range(n_cells)])
    cells /= max(float(cells.std()), 1e-12)
    out = np.zeros((n_slices, rows, cols), dtype=np.float32)
    for o, wo in zip(offsets, w):
        if wo > 0:
            out += np.float32(wo) * cells[o + e : o + e + (n_slices - 1) * m + 1 : m]
    return out


def texture_field(rng: np.random.Generator, rows: int, cols: int, ps: float, corr_mm: float) -> np.ndarray:
    """Periodic unit-σ Gaussian random field with correlation length ``corr_mm`` (anatomical texture)."""
    white = rng.standard_normal((rows, cols)).astype(np.float32)
    fy = sfft.fftfreq(rows, d=ps)[:, None]
    fx = sfft.rfftfreq(cols, d=ps)[None, :]
    h = np.exp(-2.0 * (math.pi * corr_mm) ** 2 * (fx**2 + fy**2)).astype(np.float32)
    f = sfft.irfft2(sfft.rfft2(white) * h, s=(rows, cols))
    return (f / max(float(f.std()), 1e-6)).astype(np.float32)


def motion_samples(
    rng: np.random.Generator, extent_mm: float, n: int = 7, z_fraction: float = 0.4
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (n, 3) mm and weights of an object moving ``extent_mm`` during the exposure.

    The direction is random (through-plane motion damped by ``z_fraction``); the weights mix a
    uniform smear with end-heavy profiles (the ghost doubling of an object that stops and turns).
    """
    if extent_mm <= 0 or n <= 1:
        return np.zeros((1, 3)), np.ones(1)
    d = rng.normal(size=3)
    d[2] *= z_fraction
    d /= max(np.linalg.norm(d), 1e-9)
    t = np.linspace(-0.5, 0.5, n)
    beta = float(rng.uniform(0.0, 1.0))
    skew = float(rng.uniform(-0.6, 0.6))
    ends = (np.abs(t) + 0.08) ** 2
    w = (1 - beta) / n + beta * ends / ends.sum()
    w = w * (1 + skew * t)
    w = np.maximum(w, 1e-6)
    w /= w.sum()
    return np.outer(t * extent_mm, d), w


def quantise(hu: np.ndarray) -> np.ndarray:
    """Integer HU within the 12-bit stored range with intercept −1024 (what a scanner writes)."""
    return np.clip(np.rint(hu), -1024.0, 3071.0).astype(np.float32)
