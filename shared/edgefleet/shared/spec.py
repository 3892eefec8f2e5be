"""What a model expects and produces: tensor specs, the preprocessing recipe, model info.

These travel inside each ``.tflite`` (metadata) and inside the signed manifest, so that a
device given only the model can turn a sensor image into its input and name its output.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class PreprocessSpec(_Strict):
    """The one image -> tensor recipe shared by calibration (host) and inference (device)."""

    schema_version: int = Field(default=1, description="Version of this spec's format.")
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
