"""What a model expects and produces: tensor specs, the preprocessing recipe, model info.

These travel inside each ``.tflite`` (metadata) and inside the signed manifest, so that a
device given only the model can turn a sensor image into its input and name its output.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

DType = Literal["float32", "float16", "int8", "uint8", "int16", "int32", "int64"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One input or output tensor of a TFLite model."""

    name: str = Field(default="", description="Tensor name in the flatbuffer.")
    shape: tuple[int, ...] = Field(description="Static shape, batch first (batch is 1).")
    dtype: DType = Field(description="Element type.")
    scale: float = Field(default=0.0, description="Quantization scale; 0 if not quantized.")
    zero_point: int = Field(default=0, description="Quantization zero point.")

    @property
    def quantized(self) -> bool:
        """True when values are stored as integers with a scale and zero point."""
        return self.scale != 0.0


class GprOptions(_Strict):
    """GPR B-scan conditioning applied before resizing (see ``edgefleet.shared.gpr``)."""

    time_zero: bool = Field(default=True, description="Align traces on the first break.")
    background_removal: bool = Field(default=True, description="Subtract the mean trace.")
    gain: Literal["none", "linear", "exponential"] = Field(
        default="linear", description="Time-varying gain that lifts late, weak reflections."
    )
    gain_factor: float = Field(default=1.0, description="Strength of the gain.")
    stack: bool = Field(
        default=False,
        description=(
            "Three channels instead of one: the background-removed scan relative to the"
            " direct wave (log-compressed, so echo strength survives), the scan with its"
            " direct wave, and the background-removed scan (both scaled to their own peak)."
            " Needs channels = 3; background_removal then applies to none of them."
        ),
    )
    resample: bool = Field(
        default=False,
        description=(
            "Put every scan on one physical scale before resizing: `periods` centre periods"
            " of time from time zero and `line_wavelengths` free-space wavelengths along the"
            " line, from the scan's metadata (sample interval, trace spacing, antenna"
            " frequency) or estimated where it has none (docs/gpr.md)."
        ),
    )
    periods: float = Field(
        default=12.0, gt=0, le=1000, description="Time the model sees, in centre periods."
    )
    line_wavelengths: float = Field(
        default=2.0, gt=0, le=1000, description="Survey line the model sees, in wavelengths."
    )
    line_windows: bool = Field(
        default=False,
        description=(
            "Classify a survey line longer than the model's window in overlapping windows"
            " (half a window apart, covering the whole line) and report the most target-like"
            " window (docs/protocol.md 5.4). Needs `resample` and an `empty_label`."
        ),
    )
    empty_label: str = Field(
        default="",
        max_length=256,
        description=(
            "The label that means 'nothing here' (e.g. 'none'); required with `line_windows`:"
            " a window whose top label is another one is a target window."
        ),
    )
    frequency_plane: bool = Field(
        default=False,
        description=(
            "Give the model the antenna's centre frequency: one more input channel, after"
            " the others, filled with the scan's `antenna_mhz` on a log scale (0.1 at 250 MHz"
            " or below, 1 at 1600 MHz or above) or 0 when its metadata has no antenna"
            " frequency. The common scale counts wavelengths, so without it the model cannot"
            " tell a 2 cm stone under a 1.6 GHz antenna from a 13 cm pipe under a 250 MHz"
            " one (docs/gpr.md). Needs `resample`."
        ),
    )

    @model_validator(mode="after")
    def _line_windows_need_resample_and_empty_label(self) -> GprOptions:
        if self.line_windows and not self.resample:
            msg = "gpr.line_windows needs gpr.resample (windows are cut on the common scale)"
            raise ValueError(msg)
        if self.frequency_plane and not self.resample:
            msg = "gpr.frequency_plane needs gpr.resample (the plane goes with the common scale)"
            raise ValueError(msg)
        if self.line_windows and not self.empty_label:
            msg = (
                "gpr.line_windows needs gpr.empty_label: the label that means 'nothing here'"
                ' (e.g. "none"), so that the most target-like window can be told'
            )
            raise ValueError(msg)
        return self

    @model_serializer(mode="wrap")
    def _omit_common_scale_when_off(self, handler: SerializerFunctionWrapHandler) -> Any:  # noqa: ANN401
        # The three common-scale fields came with preprocess schema_version 2, the two
        # line-window fields and the frequency plane with 3. Fields of a feature that is
        # off are left out, so every recipe that does not use it is written byte for byte
        # as before and older agents still read it (docs/protocol.md 5.4).
        data = handler(self)
        if isinstance(data, dict):
            for flag, keys, _version in VERSIONED_FEATURES:
                if not getattr(self, flag):
                    for key in keys:
                        data.pop(key, None)
        return data


COMMON_SCALE_FIELDS = ("resample", "periods", "line_wavelengths")
LINE_WINDOW_FIELDS = ("line_windows", "empty_label")
# Each optional feature of the gpr options: the flag that turns it on, the keys it brings
# (written only when it is on) and the recipe version that brought them.
VERSIONED_FEATURES = (
    ("resample", COMMON_SCALE_FIELDS, 2),
    ("line_windows", LINE_WINDOW_FIELDS, 3),
    ("frequency_plane", ("frequency_plane",), 3),
)
SPEC_VERSIONS = (1, 2, 3)  # the versions of VERSIONED_FEATURES, and 1 for none of them


def check_spec_version(version: object) -> object:
    """Refuse, with the reason in words, a recipe version this code does not know.

    Other values (below 1, not an integer) are left to the field's own checks.

    Raises:
        ValueError: an integer above the newest of ``SPEC_VERSIONS``.
    """
    newest = max(SPEC_VERSIONS)
    if isinstance(version, int) and not isinstance(version, bool) and version > newest:
        known = ", ".join(map(str, SPEC_VERSIONS))
        msg = (
            f"preprocess schema_version {version} is not one this agent understands ({known}):"
            " upgrade the agent (edgefleet-agent) to run this model"
        )
        raise ValueError(msg)
    return version


class PreprocessSpec(_Strict):
    """The one image -> tensor recipe shared by calibration (host) and inference (device)."""

    schema_version: int = Field(
        default=1,
        ge=1,
        le=3,
        description=(
            "Version of this spec's format: 3 when gpr.line_windows or gpr.frequency_plane"
            " is used, 2 when gpr.resample is used (without them), else 1."
        ),
    )
    kind: Literal["image", "gpr"] = Field(
        default="image", description="Plain image, or a GPR B-scan (traces x samples)."
    )
    height: int = Field(gt=0, description="Model input height in pixels.")
    width: int = Field(gt=0, description="Model input width in pixels.")
    channels: Literal[1, 3] = Field(
        default=1,
        description=(
            "1 for grayscale, 3 for RGB (or stacked GPR views). With gpr.frequency_plane the"
            " model's input has one channel more."
        ),
    )
    scale: Literal["unit", "minus_one_one", "raw"] = Field(
        default="unit", description="Map 8-bit pixels to [0, 1], [-1, 1], or keep 0-255."
    )
    invert: bool = Field(default=False, description="Invert grayscale (dark ink on light paper).")
    gpr: GprOptions | None = Field(default=None, description="GPR conditioning (kind=gpr).")

    _known_version = field_validator("schema_version", mode="before")(check_spec_version)

    @model_validator(mode="after")
    def _stack_needs_three_channels(self) -> PreprocessSpec:
        if self.kind == "gpr" and self.gpr is not None and self.gpr.stack and self.channels != 3:  # noqa: PLR2004
            msg = "a stacked GPR spec (gpr.stack = true) needs channels = 3"
            raise ValueError(msg)
        for flag, _keys, version in VERSIONED_FEATURES:
            if self.gpr is not None and getattr(self.gpr, flag) and self.schema_version < version:
                msg = (
                    f"gpr.{flag} needs preprocess schema_version {version}"
                    " (older agents cannot read it)"
                )
                raise ValueError(msg)
        return self

    @property
    def input_channels(self) -> int:
        """Channels of the model's input: ``channels``, plus one for ``gpr.frequency_plane``."""
        plane = self.kind == "gpr" and self.gpr is not None and self.gpr.frequency_plane
        return self.channels + int(plane)


class ModelInfo(_Strict):
    """Self-description stored inside each ``.tflite`` that edgefleet writes."""

    schema_version: int = Field(default=1, description="Version of this format.")
    name: str = Field(description="Model name, e.g. 'mnist_convnet'.")
    mode: str = Field(description="Quantization mode: float32, float16, dynamic, int8, 16x8, qat.")
    labels: tuple[str, ...] = Field(description="Class names, index = output position.")
    preprocess: PreprocessSpec = Field(description="How to turn a sensor image into the input.")
    input: TensorSpec = Field(description="The single input tensor.")
    output: TensorSpec = Field(description="The single output tensor (class scores).")

    @model_validator(mode="after")
    def _empty_label_is_a_label(self) -> ModelInfo:
        options = self.preprocess.gpr
        if options is not None and options.line_windows and options.empty_label not in self.labels:
            msg = (
                f"gpr.empty_label {options.empty_label!r} is not one of the model's labels"
                f" {list(self.labels)[:20]}"
            )
            raise ValueError(msg)
        return self
