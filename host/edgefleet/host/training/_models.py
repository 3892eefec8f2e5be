"""The seed article's MNIST ConvNet, its adaptation to GPR B-scans, and their training loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

SEED_BATCH_SIZE = 250


def build_seed_convnet(input_shape: tuple[int, int, int], num_classes: int) -> Any:  # noqa: ANN401 - keras.Model is untyped
    """Build and compile the seed's ConvNet (Adam, sparse categorical cross-entropy).

    Conv 32 3x3 relu, MaxPool, Dropout .25, Conv 64 3x3 relu, MaxPool, Dropout .25,
    Flatten, Dense 256 relu, Dense ``num_classes`` softmax.
    """
    model = keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(32, (3, 3), activation="relu"),
            keras.layers.MaxPooling2D((2, 2)),
            keras.layers.Dropout(0.25),
            keras.layers.Conv2D(64, (3, 3), activation="relu"),
            keras.layers.MaxPooling2D((2, 2)),
            keras.layers.Dropout(0.25),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(num_classes, activation="softmax"),
        ],
        name="seed_convnet",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def build_gpr_convnet(input_shape: tuple[int, int, int], num_classes: int) -> Any:  # noqa: ANN401 - keras.Model is untyped
    """Build (uncompiled) the seed ConvNet adapted to B-scans.

    The seed's 3x3 conv blocks of 32 and 64 filters with 2x2 max pooling, two more blocks
    (128, 128), "same" padding, then a global average over the feature map instead of the
    seed's Flatten + Dense 256. A hyperbola may sit anywhere along the survey line and at any
    depth; Flatten ties every dense weight to one place in the image, so the seed net had to
    learn each class at each position. Averaging the map makes the features the same
    wherever the target is, and it cuts the weights from 1.4 M to 0.26 M (docs/gpr.md).
    Every op (conv, max pool, mean, dense, softmax) maps to the Edge TPU.
    """
    layers = keras.layers
    return keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Conv2D(32, (3, 3), activation="relu", padding="same"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu", padding="same"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(128, (3, 3), activation="relu", padding="same"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(128, (3, 3), activation="relu", padding="same"),
            layers.GlobalAveragePooling2D(),
            layers.Dropout(0.3),
            layers.Dense(128, activation="relu"),
            layers.Dense(num_classes, activation="softmax"),
        ],
        name="gpr_convnet",
    )


def build_radar_convnet(input_shape: tuple[int, int, int], num_classes: int) -> Any:  # noqa: ANN401 - keras.Model is untyped
    """Build (uncompiled) the GPR ConvNet with batch normalisation, for the radar set.

    The layers of :func:`build_gpr_convnet`, each convolution followed by batch
    normalisation before its ReLU (so the convolution needs no bias). The converter folds
    each normalisation into its convolution: the .tflite has the same ops and nearly the same
    size. On the 3,600-scan radar set, same seed, it scored 85.6 / 80.8 % int8 in and out of
    distribution against 83.8 / 76.7 % without (docs/gpr.md).
    """
    layers = keras.layers

    def block(filters: int, *, pool: bool = True) -> list[Any]:
        out = [
            layers.Conv2D(filters, (3, 3), padding="same", use_bias=False),
            layers.BatchNormalization(),
            layers.ReLU(),
        ]
        return [*out, layers.MaxPooling2D((2, 2))] if pool else out

    return keras.Sequential(
        [
            keras.Input(input_shape),
            *block(32),
            *block(64),
            *block(128),
            *block(128, pool=False),
            layers.GlobalAveragePooling2D(),
            layers.Dropout(0.3),
            layers.Dense(128, activation="relu"),
            layers.Dense(num_classes, activation="softmax"),
        ],
        name="gpr_convnet",
    )


def train(
    model: Any,  # noqa: ANN401 - keras.Model is untyped
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    epochs: int,
    batch_size: int = SEED_BATCH_SIZE,
    seed: int = 0,
) -> None:
    """Fit ``model`` on preprocessed ``x`` (n, H, W, C) and class indices ``y``."""
    keras.utils.set_random_seed(seed)
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True)


def average_of(members: list[Any], name: str = "gpr_ensemble") -> Any:  # noqa: ANN401 - keras.Model is untyped
    """One model whose output is the mean of ``members``' outputs (same input and classes).

    Models trained from different seeds err on different scans; the mean of their softmax
    outputs is right more often than either (docs/gpr.md). The result is one ordinary Keras
    model, so it converts, quantizes and deploys as one file; the mean is an ADD and a MUL,
    both Edge TPU ops. Each member keeps its weights and gets a unique name.
    """
    if not members:
        raise ValueError("average_of needs at least one model")
    if len(members) == 1:
        return members[0]
    inputs = keras.Input(members[0].input_shape[1:])
    outputs = []
    for i, member in enumerate(members):
        copy = type(member).from_config({**member.get_config(), "name": f"member_{i}"})
        copy.set_weights(member.get_weights())
        outputs.append(copy(inputs))
    return keras.Model(inputs, keras.layers.Average()(outputs), name=name)
