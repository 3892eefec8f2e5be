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

    @model_serializer(mode="wrap")
    def _omit_common_scale_when_off(self, handler: SerializerFunctionWrapHandler) -> Any:  # noqa: ANN401
        # The three common-scale fields came with preprocess schema_version 2. Without
        # `resample` they are left out, so every recipe that does not use them is written
        # byte for byte as before and older agents still read it (docs/protocol.md 5.4).
        data = handler(self)
        if not self.resample and isinstance(data, dict):
            for key in COMMON_SCALE_FIELDS:
                data.pop(key, None)
        return data


COMMON_SCALE_FIELDS = ("resample", "periods", "line_wavelengths")
SPEC_VERSIONS = (1, 2)  # 2: gpr may carry COMMON_SCALE_FIELDS


class PreprocessSpec(_Strict):
    """The one image -> tensor recipe shared by calibration (host) and inference (device)."""

    schema_version: int = Field(
        default=1,
        ge=1,
        le=2,
        description="Version of this spec's format: 2 when gpr.resample is used, else 1.",
    )
    kind: Literal["image", "gpr"] = Field(
        default="image", description="Plain image, or a GPR B-scan (traces x samples)."
    )
    height: int = Field(gt=0, description="Model input height in pixels.")
    width: int = Field(gt=0, description="Model input width in pixels.")
    channels: Literal[1, 3] = Field(default=1, description="1 for grayscale, 3 for RGB.")
    scale: Literal["unit", "minus_one_one", "raw"] = Field(
        default="unit", description="Map 8-bit pixels to [0, 1], [-1, 1], or keep 0-255."
    )
    invert: bool = Field(default=False, description="Invert grayscale (dark ink on light paper).")
    gpr: GprOptions | None = Field(default=None, description="GPR conditioning (kind=gpr).")

    @model_validator(mode="after")
    def _stack_needs_three_channels(self) -> PreprocessSpec:
        if self.kind == "gpr" and self.gpr is not None and self.gpr.stack and self.channels != 3:  # noqa: PLR2004
            msg = "a stacked GPR spec (gpr.stack = true) needs channels = 3"
            raise ValueError(msg)
        if self.gpr is not None and self.gpr.resample and self.schema_version < 2:  # noqa: PLR2004
            msg = "gpr.resample needs preprocess schema_version 2 (older agents cannot read it)"
            raise ValueError(msg)
        return self


class ModelInfo(_Strict):
    """Self-description stored inside each ``.tflite`` that edgefleet writes."""

    schema_version: int = Field(default=1, description="Version of this format.")
    name: str = Field(description="Model name, e.g. 'mnist_convnet'.")
    mode: str = Field(description="Quantization mode: float32, float16, dynamic, int8, 16x8, qat.")
    labels: tuple[str, ...] = Field(description="Class names, index = output position.")
    preprocess: PreprocessSpec = Field(description="How to turn a sensor image into the input.")
    input: TensorSpec = Field(description="The single input tensor.")
    output: TensorSpec = Field(description="The single output tensor (class scores).")
