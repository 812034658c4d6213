"""Test utilities for layers, public so that users check their own layers as distnn checks its own:
``from distnn.testing import run_layer_test``."""
from distnn.testing.layer_test import LayerTestModel, LayerTestReport, run_layer_test

__all__ = ["LayerTestModel", "LayerTestReport", "run_layer_test"]
