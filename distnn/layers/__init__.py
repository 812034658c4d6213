"""Layers with Keras names: ``from distnn.layers import Dense, Conv2D``."""
from distnn.layers.base import Layer, Variable, register_serializable
from distnn.layers.core import Activation, Dense, Dropout, Flatten, Input, InputLayer, Reshape

__all__ = ["Layer", "Variable", "register_serializable", "Input", "InputLayer", "Dense", "Activation",
           "Dropout", "Flatten", "Reshape"]
