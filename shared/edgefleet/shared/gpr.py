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

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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


def condition(
    bscan: npt.NDArray[np.generic],
    options: GprOptions,
    meta: ScanMetadata | None = None,
    shape: tuple[int, int] | None = None,
) -> FloatArray:
    """Condition one B-scan for a model: float32 ``(samples, traces)`` in [-1, 1].

    Steps, each switchable in ``options``: time-zero alignment (traces shifted onto a
    common first break, samples before it dropped), background removal (the mean trace
    subtracted: removes the direct wave and flat layers, keeps hyperbolas), a gain that
    grows with time, then robust max-abs scaling.

    Args:
        bscan: ``(traces, samples)`` float array, or a uint8/16 PNG image (time down the rows).
        options: which steps to apply and how strong the gain is.
        meta: the scan's physical metadata (sidecar), for ``options.resample``.
        shape: the model's (rows, columns), for ``options.resample``.

    With ``options.stack`` it returns ``(samples, traces, 3)`` instead, see :func:`stacked`.
    With ``options.resample`` and a ``shape`` (rows, columns), the time-zeroed scan is first
    put on the common physical scale (:func:`common_scale`, using ``meta`` where given).

    Raises:
        InputError: the input is not a usable B-scan.
    """
    traces = as_traces(bscan)
    if options.time_zero:
        traces = align_time_zero(traces)
    if options.resample and shape is not None:
        traces = common_scale(traces, options, meta, shape)
    return _conditioned(traces, options)


def _conditioned(traces: npt.NDArray[np.float64], options: GprOptions) -> FloatArray:
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


# --- Physical metadata and the common scale (GprOptions.resample) ---------------------------

C0 = 299_792_458.0  # m/s
PERIOD_PER_MEDIAN = 1.17  # centre period x median power frequency, measured (docs/gpr.md)
METADATA_MAX_BYTES = 4096
_METADATA_FIELDS = ("sample_interval_ns", "time_window_ns", "trace_spacing_m", "antenna_mhz")


@dataclass(frozen=True)
class ScanMetadata:
    """What a radar knows about a scan (the sidecar ``<scan>.json``; docs/gpr.md, Metadata).

    Every field is optional: ``sample_interval_ns`` (or ``time_window_ns``, the whole
    trace's duration), ``trace_spacing_m`` and ``antenna_mhz`` (the antenna's centre
    frequency). With all three, a scan is put on the common scale exactly; what is missing
    is estimated or replaced, and :func:`metadata_note` says what.
    """

    sample_interval_ns: float | None = None
    time_window_ns: float | None = None
    trace_spacing_m: float | None = None
    antenna_mhz: float | None = None

    def interval_ns(self, samples: int) -> float | None:
        """The sample interval, from itself or from the time window over ``samples``."""
        if self.sample_interval_ns is not None:
            return self.sample_interval_ns
        if self.time_window_ns is not None and samples > 0:
            return self.time_window_ns / samples
        return None


def parse_metadata(raw: bytes | str | dict[str, Any]) -> ScanMetadata:
    """A sidecar's JSON (bytes, text or a parsed object) as :class:`ScanMetadata`.

    Raises:
        InputError: not a JSON object, an unknown key, or a value that is not a positive
            finite number (the message names the key).
    """
    if isinstance(raw, bytes | str):
        if len(raw) > METADATA_MAX_BYTES:
            raise InputError(f"scan metadata is {len(raw)} bytes; at most {METADATA_MAX_BYTES}")
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise InputError(f"scan metadata is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InputError(
            "scan metadata must be a JSON object, e.g. "
            '{"sample_interval_ns": 0.1, "trace_spacing_m": 0.02, "antenna_mhz": 400}'
        )
    unknown = sorted(set(raw) - set(_METADATA_FIELDS))
    if unknown:
        raise InputError(
            f"scan metadata: unknown key(s) {unknown}; known: {list(_METADATA_FIELDS)}"
        )
    values: dict[str, float] = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"scan metadata: {key} must be a number, got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise InputError(f"scan metadata: {key} must be positive and finite, got {value!r}")
        values[key] = float(value)
    return ScanMetadata(**values)


def metadata_note(options: GprOptions, meta: ScanMetadata | None) -> str | None:
    """What the common scale had to estimate or replace for this metadata (None: nothing)."""
    if not options.resample:
        return None
    meta = meta or ScanMetadata()
    missing = []
    if meta.sample_interval_ns is None and meta.time_window_ns is None:
        missing.append("sample interval (time scale estimated from the scan's spectrum)")
    if meta.antenna_mhz is None:
        told = "; the model was told it is unknown" if options.frequency_plane else ""
        missing.append(f"antenna frequency (estimated from the scan's spectrum{told})")
    if meta.trace_spacing_m is None or (
        meta.antenna_mhz is None and meta.sample_interval_ns is None and meta.time_window_ns is None
    ):
        missing.append("trace spacing (the whole scan was resized to the model's width)")
    if not missing:
        return None
    return "no scan metadata for: " + "; ".join(missing) + " - add a sidecar (docs/gpr.md)"


def samples_per_period(traces: npt.NDArray[np.float64]) -> float:
    """The antenna's centre period in samples, estimated from the scan alone.

    The mean trace is mostly the direct wave (noise and echoes average out); the frequency
    that splits its power spectrum in half, times :data:`PERIOD_PER_MEDIAN`, is the centre
    period. On the simulated scans the estimate is within 10 % of the truth for 80 % of
    scans (docs/gpr.md).
    """
    n = traces.shape[1]
    if n < 8:  # noqa: PLR2004 - too short for a spectrum: say 4 samples a period
        return 4.0
    power = np.abs(np.fft.rfft(traces.mean(axis=0))) ** 2
    power[0] = 0.0
    cumulative = np.cumsum(power)
    if cumulative[-1] <= 0:
        return 4.0
    median = float(np.fft.rfftfreq(n)[int(np.searchsorted(cumulative, cumulative[-1] / 2))])
    return float(PERIOD_PER_MEDIAN / max(median, 1.0 / n))


def common_scale(
    traces: npt.NDArray[np.float64],
    options: GprOptions,
    meta: ScanMetadata | None,
    shape: tuple[int, int],
) -> npt.NDArray[np.float64]:
    """Put a time-zeroed scan on the model's scale: ``shape`` = (rows, traces) out.

    Time: ``options.periods`` centre periods from time zero, band-limited to ``rows``
    samples (zero after the end of a shorter trace). Distance: ``options.line_wavelengths``
    free-space wavelengths, resampled to ``columns`` traces around the strongest echo
    (edge traces repeated beyond a shorter scan); without a trace spacing the whole scan is
    resized to ``columns`` instead. ``edgefleet.shared.gpr_windows`` gives every window.

    Returns float64 ``(columns, rows)`` (traces, samples), like its input.
    """
    columns = shape[1]
    timed, step = _on_time_scale(traces, options, meta, shape)
    if step is None:
        return _resize_traces(timed, columns)
    n_traces = timed.shape[0]
    half = (columns - 1) / 2.0 * step
    centre = (n_traces - 1) / 2.0  # a line no longer than the window: all of it, centred
    if n_traces - 1 > 2 * half:  # a longer line: the window on its strongest echo, inside it
        centre = min(max(_strongest_echo(timed, max(1.0, step)), half), n_traces - 1 - half)
    smoothed = _box_smooth(timed, step) if step > 1.0 else timed
    return _window(smoothed, centre, step, columns)


def _window(
    smoothed: npt.NDArray[np.float64], centre: float, step: float, columns: int
) -> npt.NDArray[np.float64]:
    positions = centre + (np.arange(columns, dtype=np.float64) - (columns - 1) / 2.0) * step
    return _interp_traces(smoothed, positions)


def _on_time_scale(
    traces: npt.NDArray[np.float64],
    options: GprOptions,
    meta: ScanMetadata | None,
    shape: tuple[int, int],
) -> tuple[npt.NDArray[np.float64], float | None]:
    """The scan on the common time scale, and the input traces per model column.

    The step is None when the scale along the line is unknown (no trace spacing, or no
    frequency from the metadata or the spectrum with a known sample interval).
    """
    meta = meta or ScanMetadata()
    rows, columns = shape
    n_traces, n_samples = traces.shape
    interval = meta.interval_ns(n_samples)
    freq_hz = meta.antenna_mhz * 1e6 if meta.antenna_mhz is not None else None
    if meta.antenna_mhz is not None and interval is not None:
        period = 1e3 / meta.antenna_mhz / interval  # samples per centre period
    else:  # the spectrum is read only when the metadata cannot give the period
        period = samples_per_period(traces)
        if freq_hz is None and interval is not None:
            freq_hz = 1e9 / (period * interval)
    window = max(2, round(options.periods * period))
    timed = np.zeros((n_traces, window))
    keep = min(window, n_samples)
    timed[:, :keep] = traces[:, :keep]
    if window != rows:
        timed = resample_samples(timed, rows)
    if meta.trace_spacing_m is None or freq_hz is None:
        return timed, None
    spacing = meta.trace_spacing_m
    return timed, options.line_wavelengths * C0 / freq_hz / (columns - 1) / spacing


def resample_samples(traces: npt.NDArray[np.float64], n_samples: int) -> npt.NDArray[np.float64]:
    """Band-limited resampling of each row to ``n_samples`` (FFT, spectrum truncated).

    The one resampler of the project: the conditioning's time axis and the gprMax
    generators' FDTD steps to samples.
    """
    n_in = traces.shape[-1]
    spectrum = np.fft.rfft(traces, axis=-1)
    keep = min(spectrum.shape[-1], n_samples // 2 + 1)
    out = np.fft.irfft(spectrum[..., :keep], n=n_samples, axis=-1)
    return np.asarray(out * (n_samples / n_in), dtype=np.float64)


def _resize_traces(traces: npt.NDArray[np.float64], columns: int) -> npt.NDArray[np.float64]:
    n = traces.shape[0]
    step = (n - 1) / (columns - 1) if columns > 1 else 0.0
    smoothed = _box_smooth(traces, step) if step > 1.0 else traces
    return _interp_traces(smoothed, np.linspace(0.0, n - 1.0, columns))


def _box_smooth(traces: npt.NDArray[np.float64], width: float) -> npt.NDArray[np.float64]:
    # A moving average over about `width` traces: no aliasing when keeping every width-th.
    k = max(1, round(width))
    if k <= 1:
        return traces
    padded = np.pad(traces, ((k // 2, k - 1 - k // 2), (0, 0)), mode="edge")
    csum = np.cumsum(np.pad(padded, ((1, 0), (0, 0))), axis=0)
    out: npt.NDArray[np.float64] = (csum[k:] - csum[:-k]) / k
    return out


def _interp_traces(
    traces: npt.NDArray[np.float64], positions: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    n = traces.shape[0]
    pos = np.clip(positions, 0.0, n - 1.0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = (pos - lo)[:, np.newaxis]
    out: npt.NDArray[np.float64] = traces[lo] * (1.0 - frac) + traces[hi] * frac
    return out


def _strongest_echo(traces: npt.NDArray[np.float64], width: float) -> float:
    """Trace index of the strongest echo: the most energy left once the median trace is gone.

    A hyperbola's echo is strongest at its apex (spreading and the antenna pattern weaken
    its flanks), so the window lands on the apex. Energy is summed over a few output
    columns' width, so a single bright stone counts less than a target's wide hyperbola.
    """
    n = traces.shape[0]
    echoes = traces - np.median(traces, axis=0, keepdims=True)
    energy = (echoes**2).sum(axis=1)
    energy = _box_smooth(energy[:, np.newaxis], 4.0 * width)[:, 0]
    if float(energy.max()) <= 0.0:
        return float(n - 1) / 2.0
    return float(np.argmax(energy))
