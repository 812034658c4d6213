"""Layers with Keras names: ``from distnn.layers import Dense, Conv2D``."""
from __future__ import annotations

from typing import Any

from distnn import serialization
from distnn.layers.base import Layer, Variable
from distnn.layers.core import Activation, Dense, Dropout, Flatten, Identity, Input, InputLayer, Lambda, Reshape
from distnn.layers.attention import AdditiveAttention, Attention
from distnn.layers.multi_head_attention import MultiHeadAttention
from distnn.layers.conv import Conv1D, Conv2D, Convolution1D, Convolution2D
from distnn.layers.activation_layers import ELU, LeakyReLU, PReLU, ReLU, Softmax
from distnn.layers.conv_transpose import (Conv1DTranspose, Conv2DTranspose, Convolution1DTranspose,
                                          Convolution2DTranspose, DepthwiseConv1D, DepthwiseConv2D, SeparableConv1D,
                                          SeparableConv2D, SeparableConvolution1D, SeparableConvolution2D)
from distnn.layers.noise import AlphaDropout, GaussianDropout, GaussianNoise, SpatialDropout1D, SpatialDropout2D
from distnn.layers.reshaping import Cropping1D, Cropping2D, UpSampling1D, UpSampling2D
from distnn.layers.merging import (Add, Average, Concatenate, Dot, Maximum, Minimum, Multiply, Subtract, add, average,
                                   concatenate, dot, maximum, minimum, multiply, subtract)
from distnn.layers.normalization import BatchNormalization, Normalization
from distnn.layers.layer_normalization import GroupNormalization, LayerNormalization, UnitNormalization
from distnn.layers.pooling import (
    AveragePooling1D, AveragePooling2D, AvgPool1D, AvgPool2D, GlobalAveragePooling1D, GlobalAveragePooling2D,
    GlobalAvgPool1D, GlobalAvgPool2D, GlobalMaxPool1D, GlobalMaxPool2D, GlobalMaxPooling1D, GlobalMaxPooling2D,
    MaxPool1D, MaxPool2D, MaxPooling1D, MaxPooling2D, ZeroPadding1D, ZeroPadding2D)
from distnn.serialization import register_serializable

__all__ = ["Layer", "Variable", "register_serializable", "serialize", "deserialize", "Input", "InputLayer", "Dense",
           "Activation", "Dropout", "Flatten", "Reshape", "Identity", "Lambda",
           "Conv1D", "Conv2D", "Convolution1D", "Convolution2D", "BatchNormalization", "Normalization",
           "LayerNormalization", "GroupNormalization", "UnitNormalization", "Attention", "AdditiveAttention",
           "MultiHeadAttention",
           "AveragePooling1D", "AveragePooling2D", "AvgPool1D", "AvgPool2D", "GlobalAveragePooling1D",
           "GlobalAveragePooling2D", "GlobalAvgPool1D", "GlobalAvgPool2D", "GlobalMaxPool1D", "GlobalMaxPool2D",
           "GlobalMaxPooling1D", "GlobalMaxPooling2D", "MaxPool1D", "MaxPool2D", "MaxPooling1D", "MaxPooling2D",
           "ZeroPadding1D", "ZeroPadding2D", "Add", "Average", "Concatenate", "Dot", "Maximum", "Minimum", "Multiply",
           "Subtract", "add", "average", "concatenate", "dot", "maximum", "minimum", "multiply", "subtract",
           "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax", "Conv1DTranspose", "Conv2DTranspose",
           "Convolution1DTranspose", "Convolution2DTranspose", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D",
           "SeparableConv2D", "SeparableConvolution1D", "SeparableConvolution2D", "SpatialDropout1D",
           "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "UpSampling1D", "UpSampling2D",
           "Cropping1D", "Cropping2D"]

serialization.register_builtins("distnn.layers", {name: obj for name, obj in globals().items()
                                                  if isinstance(obj, type) and issubclass(obj, Layer)})


def serialize(layer: Layer) -> dict:
    """``{"module", "class_name", "config"}`` of a layer or a model (Keras 3's ``layers.serialize``)."""
    return serialization.serialize_keras_object(layer)


def deserialize(config: dict, custom_objects: dict[str, Any] | None = None) -> Layer:
    """The layer or model ``serialize`` described, built only from a registered, built-in or given class."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"A layer configuration must be a dict with a class_name. Received: {config!r:.200}")
    # Models nest in models: their classes are listed by distnn.models, which imports this package.
    known = {**serialization.builtin_objects("distnn.layers"), **serialization.builtin_objects("distnn.models")}
    layer = serialization.deserialize_keras_object(config, custom_objects, known, printable_module_name="layer")
    if not isinstance(layer, Layer):
        raise ValueError(f"{config['class_name']!r} is not a layer class. Received: {config!r:.200}")
    return layer
