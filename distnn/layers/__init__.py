"""Layers with Keras names: ``from distnn.layers import Dense, Conv2D``."""
from distnn.layers.base import Layer, Variable, register_serializable
from distnn.layers.core import Activation, Dense, Dropout, Flatten, Input, InputLayer, Reshape
from distnn.layers.conv import Conv1D, Conv2D, Convolution1D, Convolution2D
from distnn.layers.merging import (Add, Average, Concatenate, Maximum, Minimum, Multiply, Subtract, add, average,
                                   concatenate, maximum, minimum, multiply, subtract)
from distnn.layers.normalization import BatchNormalization, Normalization
from distnn.layers.embedding import Embedding, Masking
from distnn.layers.recurrent_cells import GRU, LSTM, SimpleRNN
from distnn.layers.reshaping import Permute, RepeatVector
from distnn.layers.wrappers import Bidirectional, TimeDistributed
from distnn.layers.pooling import (
    AveragePooling1D, AveragePooling2D, AvgPool1D, AvgPool2D, GlobalAveragePooling1D, GlobalAveragePooling2D,
    GlobalAvgPool1D, GlobalAvgPool2D, GlobalMaxPool1D, GlobalMaxPool2D, GlobalMaxPooling1D, GlobalMaxPooling2D,
    MaxPool1D, MaxPool2D, MaxPooling1D, MaxPooling2D, ZeroPadding1D, ZeroPadding2D)

__all__ = ["Layer", "Variable", "register_serializable", "Input", "InputLayer", "Dense", "Activation",
           "Dropout", "Flatten", "Reshape",
           "Conv1D", "Conv2D", "Convolution1D", "Convolution2D", "BatchNormalization", "Normalization",
           "AveragePooling1D", "AveragePooling2D", "AvgPool1D", "AvgPool2D", "GlobalAveragePooling1D",
           "GlobalAveragePooling2D", "GlobalAvgPool1D", "GlobalAvgPool2D", "GlobalMaxPool1D", "GlobalMaxPool2D",
           "GlobalMaxPooling1D", "GlobalMaxPooling2D", "MaxPool1D", "MaxPool2D", "MaxPooling1D", "MaxPooling2D",
           "ZeroPadding1D", "ZeroPadding2D", "Add", "Average", "Concatenate", "Maximum", "Minimum", "Multiply",
           "Subtract", "add", "average", "concatenate", "maximum", "minimum", "multiply", "subtract",
           "Embedding", "Masking", "SimpleRNN", "LSTM", "GRU", "Bidirectional", "TimeDistributed", "RepeatVector",
           "Permute"]
