"""GPR B-scan conditioning in pure numpy: layouts, time zero, background removal, gain.

Two input layouts, told apart by dtype (see :func:`as_traces`):

* a ``.npy`` B-scan: a 2-D float (or signed integer) array ``(traces, samples)``, one
  row per antenna position, the received amplitude over time along each row;
* a PNG rendering: uint16 or uint8 ``(rows, columns)`` (or ``HxWxC``), time going DOWN the rows
  and one column per trace, as written by :func:`render_png`. Its pixels are mu-law
  companded amplitudes (128 = zero), so that weak, late reflections survive 8 bits next to
  the strong direct wave; :func:`from_png` expands them back.

:func:`condition` returns float32 ``(samples, traces)`` - time down the rows, like the PNG -
scaled to [-1, 1], ready for ``edgefleet.shared.preprocess`` to resize.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edgefleet.shared.errors import InputError

if TYPE_CHECKING:
    from edgefleet.shared.spec import GprOptions

FloatArray = npt.NDArray[np.float32]
MU = 255.0  # mu-law constant of the PNG form (the G.711 value): ~75 dB in 8 bits
FIRST_BREAK = 0.25  # a trace "starts" where it first reaches this fraction of its peak
MAX_DRIFT = 0.05  # larger first-break shifts (fraction of samples) are not time-zero drift
COHERENT_FRACTION = 0.8  # share of traces that must agree on the first break to align at all
CLIP_PERCENTILE = 99.5  # robust max-abs: a few extreme samples do not flatten the rest
REFERENCE_MU = 100.0  # mu-law constant of the stacked form's direct-wave-relative channel
REFERENCE_SPAN = 3.0  # that channel's full scale, in units of the direct wave's peak
_PNG_FULL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}  # 8- and 16-bit PNGs


def from_png(image: npt.NDArray[np.generic]) -> FloatArray:
    """Turn a PNG rendering (time down the rows) into ``(traces, samples)`` in [-1, 1].

    16-bit renderings (uint16, what :func:`render_png` writes) and 8-bit ones (uint8, what
    an 8-bit viewer or an older edgefleet saves) are both mu-law pixels, 0 = -1, max = +1.

    Raises:
        InputError: not a uint8/uint16 ``HxW`` or ``HxWxC`` image.
    """
    full_scale = _PNG_FULL_SCALE.get(image.dtype)
    if full_scale is None:
        raise InputError(f"a GPR PNG must be 8- or 16-bit, got {image.dtype}")
    if image.ndim == 3 and image.shape[-1] in {1, 3, 4}:  # noqa: PLR2004 - HxWxC
        gray = image[:, :, : min(image.shape[-1], 3)].astype(np.float64).mean(axis=-1)
    elif image.ndim == 2:  # noqa: PLR2004 - HxW
        gray = image.astype(np.float64)
    else:
        raise InputError(f"a GPR PNG must be HxW or HxWxC (C = 1, 3, 4), got shape {image.shape}")
    companded = gray / (full_scale / 2.0) - 1.0
    amplitude = np.sign(companded) * np.expm1(np.abs(companded) * np.log1p(MU)) / MU
    return np.ascontiguousarray(amplitude.T, dtype=np.float32)


def render_png(bscan: npt.NDArray[np.generic], *, bits: int = 16) -> npt.NDArray[np.generic]:
    """Render a ``(traces, samples)`` B-scan as a grayscale image, time down the rows (mu-law).

    ``bits=16`` (the default) gives uint16 - save it as a 16-bit PNG
    (``PIL.Image.fromarray(pixels).save("scan.png")``). 8 bits lose the weak echoes once
    the much stronger direct wave is subtracted (measured in docs/gpr.md); use them only
    for viewing.

    Raises:
        InputError: not a finite 2-D numeric array, or ``bits`` not 8 or 16.
    """
    if bits not in {8, 16}:
        raise InputError(f"a GPR PNG has 8 or 16 bits per pixel, not {bits}")
    traces = _checked(bscan)
    peak = float(np.abs(traces).max())
    unit = traces / peak if peak > 0 else traces
    dtype = np.dtype(np.uint8 if bits == 8 else np.uint16)  # noqa: PLR2004
    top = _PNG_FULL_SCALE[dtype]
    pixels = np.rint((_compand(unit, MU) + 1.0) * (top / 2.0))
    return np.ascontiguousarray(np.clip(pixels, 0, top).astype(dtype).T)


def as_traces(array: npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
    """Any accepted input as float64 ``(traces, samples)``: uint8/16 is a PNG, the rest ``.npy``.

    Raises:
        InputError: wrong rank, empty, non-numeric or non-finite.
    """
    if array.dtype in _PNG_FULL_SCALE:
        return from_png(array).astype(np.float64)
    return _checked(array)


def _checked(array: npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
    if array.dtype.kind not in "uif":
        raise InputError(f"a GPR B-scan must be numeric, got {array.dtype}")
    if array.ndim != 2 or array.size == 0:  # noqa: PLR2004 - (traces, samples)
        raise InputError(
            f"a GPR B-scan .npy must be 2-D (traces, samples), got shape {array.shape}"
        )
    traces = array.astype(np.float64)
    if not np.isfinite(traces).all():
        raise InputError("the GPR B-scan contains NaN or infinite values")
    return traces


def condition(bscan: npt.NDArray[np.generic], options: GprOptions) -> FloatArray:
    """Condition one B-scan for a model: float32 ``(samples, traces)`` in [-1, 1].

    Steps, each switchable in ``options``: time-zero alignment (traces shifted onto a
    common first break, samples before it dropped), background removal (the mean trace
    subtracted: removes the direct wave and flat layers, keeps hyperbolas), a gain that
    grows with time, then robust max-abs scaling.

    Args:
        bscan: ``(traces, samples)`` float array, or a uint8/16 PNG image (time down the rows).
        options: which steps to apply and how strong the gain is.

    With ``options.stack`` it returns ``(samples, traces, 3)`` instead, see :func:`stacked`.

    Raises:
        InputError: the input is not a usable B-scan.
    """
    traces = as_traces(bscan)
    if options.time_zero:
        traces = align_time_zero(traces)
    if options.stack:
        return stacked(traces, options)
    if options.background_removal:
        traces = traces - traces.mean(axis=0, keepdims=True)
    traces = apply_gain(traces, kind=options.gain, factor=options.gain_factor)
    return np.ascontiguousarray(normalise(traces).T, dtype=np.float32)


def stacked(traces: npt.NDArray[np.float64], options: GprOptions) -> FloatArray:
    """Three views of one (time-zeroed) scan as float32 ``(samples, traces, 3)`` in [-1, 1].

    0. the echoes (mean trace removed, gained) relative to the direct wave's peak, mu-law
       compressed: a scan scaled to its own peak says nothing about how strong an echo is,
       yet echo strength is what tells an air-filled pipe (strong) from a concrete duct
       of similar permittivity to the soil (weak). The ratio does not depend on the scan's
       units, so the ``.npy`` and the PNG form agree.
    1. the gained scan with its direct wave, scaled to its own robust peak;
    2. the gained echoes, scaled to their own robust peak (the hyperbola's shape).
    """
    mean = traces.mean(axis=0, keepdims=True)
    echoes = apply_gain(traces - mean, kind=options.gain, factor=options.gain_factor)
    reference = _direct_wave_peak(traces, mean) * REFERENCE_SPAN
    relative = np.clip(echoes / reference, -1.0, 1.0) if reference > 0 else np.zeros_like(echoes)
    views = (
        _compand(relative, REFERENCE_MU),
        normalise(apply_gain(traces, kind=options.gain, factor=options.gain_factor)),
        normalise(echoes),
    )
    return np.ascontiguousarray(np.stack([v.T for v in views], axis=-1), dtype=np.float32)


def _direct_wave_peak(traces: npt.NDArray[np.float64], mean: npt.NDArray[np.float64]) -> float:
    """Peak of the mean trace (the direct wave, common to every trace), else of the scan."""
    peak = float(np.abs(mean).max(initial=0.0))
    return peak if peak > 0 else float(np.abs(traces).max(initial=0.0))


def _compand(x: npt.NDArray[np.float64], mu: float) -> npt.NDArray[np.float64]:
    companded: npt.NDArray[np.float64] = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    return companded


def first_breaks(traces: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Index of the first sample where each trace reaches ``FIRST_BREAK`` of its peak."""
    magnitude = np.abs(traces)
    peaks = magnitude.max(axis=1, keepdims=True)
    above = magnitude >= FIRST_BREAK * peaks
    return np.where(peaks[:, 0] > 0, above.argmax(axis=1), 0).astype(np.int64)


def align_time_zero(traces: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Shift drifting traces onto the median first break, then cut the samples before it.

    The first break is the direct wave only if most traces (``COHERENT_FRACTION``) agree on
    it within ``MAX_DRIFT`` of the trace length; otherwise (e.g. the direct wave was already
    removed and the first arrival is a hyperbola) the scan is returned unchanged, since
    flattening it would erase the very shape the model looks for. Traces further off than
    ``MAX_DRIFT`` are left where they are for the same reason.
    """
    breaks = first_breaks(traces)
    zero = int(np.median(breaks))
    limit = max(1, int(MAX_DRIFT * traces.shape[1]))
    if np.mean(np.abs(breaks - zero) <= limit) < COHERENT_FRACTION:
        return traces  # no common first arrival to align on
    aligned = traces.copy()
    for i, brk in enumerate(breaks):
        shift = zero - int(brk)
        if 0 < abs(shift) <= limit:
            aligned[i] = _shifted(traces[i], shift)
    if zero >= traces.shape[1] - 1:  # nothing left after time zero: keep the scan as is
        return aligned
    return aligned[:, zero:]


def _shifted(trace: npt.NDArray[np.float64], shift: int) -> npt.NDArray[np.float64]:
    out = np.zeros_like(trace)
    if shift > 0:
        out[shift:] = trace[:-shift]
    else:
        out[:shift] = trace[-shift:]
    return out


def apply_gain(
    traces: npt.NDArray[np.float64], *, kind: str, factor: float
) -> npt.NDArray[np.float64]:
    """Multiply by a gain over normalised time u in [0, 1] (time zero to the last sample).

    ``linear``: 1 + 10 * factor * u; ``exponential``: exp(3 * factor * u); ``none``: 1.
    Normalised time keeps the curve the same whatever the scan's time window and sampling.
    """
    samples = traces.shape[1]
    u = np.linspace(0.0, 1.0, samples) if samples > 1 else np.zeros(1)
    if kind == "linear":
        return traces * (1.0 + 10.0 * factor * u)
    if kind == "exponential":
        return traces * np.exp(3.0 * factor * u)
    if kind == "none":
        return traces
    raise InputError(f"unknown GPR gain {kind!r}; use none, linear or exponential")


def normalise(traces: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Scale by a robust max-abs (a high percentile of ``|x|``) and clip to [-1, 1]."""
    scale = float(np.percentile(np.abs(traces), CLIP_PERCENTILE))
    if scale <= 0.0:
        scale = float(np.abs(traces).max())
    if scale <= 0.0:
        return np.zeros_like(traces)
    return np.clip(traces / scale, -1.0, 1.0)
