"""Every built-in layer through the one shared check, ``distnn.testing.run_layer_test``: configuration
round trip, eager and symbolic output shapes, masks, float64 gradients against finite differences,
one training step and save/load (tiny shapes, so the table stays fast)."""
import numpy as np
import pytest

import distnn
from distnn import layers, ops
from distnn.layers.base import Layer
from distnn.testing import run_layer_test


@layers.register_serializable(name="test_layer_test_all>scaled_square")
def scaled_square(x, factor=1.0):
    return ops.square(x) * factor


# (id, class, init kwargs, input shape(s), expected output shape, trainable, non-trainable, masking, extra)
CASES = [
    ("dense", layers.Dense, {"units": 3}, (2, 4), (2, 3), 2, 0, True, {}),
    ("dense_3d_relu_no_bias", layers.Dense, {"units": 3, "activation": "relu", "use_bias": False}, (2, 3, 4),
     (2, 3, 3), 1, 0, True, {}),
    ("activation_tanh", layers.Activation, {"activation": "tanh"}, (2, 3), (2, 3), 0, 0, True, {}),
    ("activation_softmax", layers.Activation, {"activation": "softmax"}, (2, 3, 4), (2, 3, 4), 0, 0, True, {}),
    ("dropout_training", layers.Dropout, {"rate": 0.5, "seed": 3}, (2, 3, 4), (2, 3, 4), 0, 0, True, {}),
    ("dropout_inference", layers.Dropout, {"rate": 0.5}, (2, 3, 4), (2, 3, 4), 0, 0, True,
     {"gradient_check_training": False}),
    ("flatten", layers.Flatten, {}, (2, 3, 4), (2, 12), 0, 0, False, {}),
    ("reshape", layers.Reshape, {"target_shape": [4, -1]}, (2, 3, 4), (2, 4, 3), 0, 0, False, {}),
    ("conv1d", layers.Conv1D, {"filters": 2, "kernel_size": 3}, (2, 6, 3), (2, 4, 2), 2, 0, False, {}),
    ("conv1d_same_strided", layers.Conv1D, {"filters": 2, "kernel_size": 3, "strides": 2, "padding": "same"},
     (2, 6, 3), (2, 3, 2), 2, 0, False, {}),
    ("conv2d", layers.Conv2D, {"filters": 2, "kernel_size": 2}, (2, 4, 4, 3), (2, 3, 3, 2), 2, 0, False, {}),
    ("conv2d_same_tanh", layers.Conv2D, {"filters": 2, "kernel_size": 3, "padding": "same", "activation": "tanh"},
     (2, 4, 4, 2), (2, 4, 4, 2), 2, 0, False, {}),
    ("max_pooling1d", layers.MaxPooling1D, {"pool_size": 2}, (2, 6, 3), (2, 3, 3), 0, 0, False, {}),
    ("average_pooling1d", layers.AveragePooling1D, {"pool_size": 3, "strides": 1}, (2, 5, 3), (2, 3, 3), 0, 0,
     False, {}),
    ("max_pooling2d", layers.MaxPooling2D, {"pool_size": 2}, (2, 4, 4, 3), (2, 2, 2, 3), 0, 0, False, {}),
    ("average_pooling2d_same", layers.AveragePooling2D, {"pool_size": 2, "padding": "same"}, (2, 3, 3, 2),
     (2, 2, 2, 2), 0, 0, False, {}),
    ("global_average_pooling1d", layers.GlobalAveragePooling1D, {}, (2, 5, 3), (2, 3), 0, 0, False, {}),
    ("global_max_pooling1d", layers.GlobalMaxPooling1D, {}, (2, 5, 3), (2, 3), 0, 0, False, {}),
    ("global_average_pooling2d", layers.GlobalAveragePooling2D, {}, (2, 3, 3, 2), (2, 2), 0, 0, False, {}),
    ("global_max_pooling2d_keepdims", layers.GlobalMaxPooling2D, {"keepdims": True}, (2, 3, 3, 2), (2, 1, 1, 2),
     0, 0, False, {}),
    ("zero_padding1d", layers.ZeroPadding1D, {"padding": 1}, (2, 4, 3), (2, 6, 3), 0, 0, False, {}),
    ("zero_padding2d", layers.ZeroPadding2D, {"padding": [1, 2]}, (2, 3, 3, 2), (2, 5, 7, 2), 0, 0, False, {}),
    ("batch_normalization", layers.BatchNormalization, {}, (4, 3), (4, 3), 2, 2, False, {}),
    ("batch_normalization_conv_inference", layers.BatchNormalization, {"axis": -1, "center": False}, (3, 2, 2, 3),
     (3, 2, 2, 3), 1, 2, False, {"gradient_check_training": False}),
    ("normalization_fixed", layers.Normalization, {"mean": [0.5, -1.0, 2.0], "variance": [1.0, 4.0, 0.25]},
     (2, 3), (2, 3), 0, 0, False, {}),
    ("normalization_adaptable", layers.Normalization, {}, (2, 3), (2, 3), 0, 3, False, {}),
    ("layer_normalization", layers.LayerNormalization, {}, (2, 3, 4), (2, 3, 4), 2, 0, True, {}),
    ("layer_normalization_rms_two_axes", layers.LayerNormalization, {"axis": [1, 2], "rms_scaling": True},
     (2, 3, 4), (2, 3, 4), 1, 0, True, {}),
    ("group_normalization", layers.GroupNormalization, {"groups": 2}, (2, 3, 4), (2, 3, 4), 2, 0, False, {}),
    ("unit_normalization", layers.UnitNormalization, {}, (2, 3, 4), (2, 3, 4), 0, 0, True, {}),
    # No biases: the key's has an exactly zero gradient (softmax ignores a shift shared by a row's scores),
    # which no relative error can check; tests/test_layers_attention.py checks the biases in whole models.
    ("multi_head_attention", layers.MultiHeadAttention, {"num_heads": 2, "key_dim": 2, "use_bias": False},
     [(2, 3, 4), (2, 5, 4)], (2, 3, 4), 4, 0, True, {}),
    ("multi_head_attention_causal_dropout", layers.MultiHeadAttention,
     {"num_heads": 2, "key_dim": 3, "value_dim": 2, "dropout": 0.3, "seed": 1, "output_shape": 5, "use_bias": False},
     [(2, 4, 4), (2, 4, 3), (2, 4, 2)], (2, 4, 5), 4, 0, True, {"call_kwargs": {"use_causal_mask": True}}),
    ("attention", layers.Attention, {}, [(2, 3, 4), (2, 5, 4)], (2, 3, 4), 0, 0, True, {}),
    ("attention_concat_scaled_dropout", layers.Attention,
     {"use_scale": True, "score_mode": "concat", "dropout": 0.2, "seed": 1}, [(2, 3, 4), (2, 5, 4)], (2, 3, 4), 2,
     0, True, {}),
    ("additive_attention_with_key", layers.AdditiveAttention, {}, [(2, 3, 4), (2, 5, 2), (2, 5, 4)], (2, 3, 2), 1,
     0, True, {"call_kwargs": {"use_causal_mask": True}}),
    ("add", layers.Add, {}, [(2, 3, 4), (2, 3, 4), (2, 3, 4)], (2, 3, 4), 0, 0, True, {}),
    ("add_broadcast", layers.Add, {}, [(2, 3, 4), (2, 4)], (2, 3, 4), 0, 0, True, {}),
    ("subtract", layers.Subtract, {}, [(2, 3), (2, 3)], (2, 3), 0, 0, True, {}),
    ("multiply", layers.Multiply, {}, [(2, 3, 4), (2, 1, 4)], (2, 3, 4), 0, 0, True, {}),
    ("average", layers.Average, {}, [(2, 3), (2, 3), (2, 3)], (2, 3), 0, 0, True, {}),
    ("maximum", layers.Maximum, {}, [(2, 3, 2), (2, 3, 2)], (2, 3, 2), 0, 0, True, {}),
    ("minimum", layers.Minimum, {}, [(2, 3), (2, 3), (2, 3)], (2, 3), 0, 0, True, {}),
    ("concatenate", layers.Concatenate, {}, [(2, 3, 4), (2, 3, 2)], (2, 3, 6), 0, 0, True, {}),
    ("concatenate_axis1", layers.Concatenate, {"axis": 1}, [(2, 3, 4), (2, 1, 4)], (2, 4, 4), 0, 0, True, {}),
    ("dot", layers.Dot, {"axes": -1}, [(2, 4), (2, 4)], (2, 1), 0, 0, True, {}),
    ("dot_axes_pair", layers.Dot, {"axes": [1, 2]}, [(2, 3, 4), (2, 5, 3)], (2, 4, 5), 0, 0, True, {}),
    ("dot_normalize", layers.Dot, {"axes": 1, "normalize": True}, [(2, 3), (2, 3, 2)], (2, 2), 0, 0, True, {}),
    ("lambda_ops_function", layers.Lambda, {"function": ops.tanh}, (2, 3), (2, 3), 0, 0, False, {}),
    ("lambda_registered_arguments", layers.Lambda,
     {"function": scaled_square, "arguments": {"factor": 0.5}, "output_shape": [3]}, (2, 3), (2, 3), 0, 0, False,
     {}),
    ("identity", layers.Identity, {}, (2, 3, 4), (2, 3, 4), 0, 0, True, {}),
    ("conv2d_groups", layers.Conv2D, {"filters": 4, "kernel_size": 2, "groups": 2}, (2, 3, 3, 4), (2, 2, 2, 4), 2, 0,
     False, {}),
    ("conv1d_groups_causal_relu", layers.Conv1D,
     {"filters": 2, "kernel_size": 2, "groups": 2, "padding": "causal", "activation": "relu"}, (2, 4, 2), (2, 4, 2),
     2, 0, False, {}),
    ("conv2d_transpose", layers.Conv2DTranspose, {"filters": 2, "kernel_size": 2, "strides": 2}, (2, 2, 3, 3),
     (2, 4, 6, 2), 2, 0, False, {}),
    ("conv2d_transpose_same_channels_first", layers.Conv2DTranspose,
     {"filters": 3, "kernel_size": 3, "padding": "same", "data_format": "channels_first", "activation": "tanh"},
     (2, 2, 3, 3), (2, 3, 3, 3), 2, 0, False, {}),
    ("conv1d_transpose_output_padding", layers.Conv1DTranspose,
     {"filters": 2, "kernel_size": 3, "strides": 2, "output_padding": 1}, (2, 3, 2), (2, 8, 2), 2, 0, False, {}),
    ("depthwise_conv2d", layers.DepthwiseConv2D, {"kernel_size": 2, "depth_multiplier": 2}, (2, 3, 3, 2),
     (2, 2, 2, 4), 2, 0, False, {}),
    ("depthwise_conv1d_same", layers.DepthwiseConv1D, {"kernel_size": 3, "padding": "same", "use_bias": False},
     (2, 4, 3), (2, 4, 3), 1, 0, False, {}),
    ("separable_conv2d", layers.SeparableConv2D, {"filters": 3, "kernel_size": 2, "depth_multiplier": 2},
     (2, 3, 3, 2), (2, 2, 2, 3), 3, 0, False, {}),
    ("separable_conv1d_strided", layers.SeparableConv1D, {"filters": 2, "kernel_size": 2, "strides": 2},
     (2, 5, 3), (2, 2, 2), 3, 0, False, {}),
    ("upsampling1d", layers.UpSampling1D, {"size": 3}, (2, 2, 3), (2, 6, 3), 0, 0, False, {}),
    ("upsampling2d", layers.UpSampling2D, {"size": [2, 3]}, (2, 2, 2, 3), (2, 4, 6, 3), 0, 0, False, {}),
    ("upsampling2d_bilinear_channels_first", layers.UpSampling2D,
     {"interpolation": "bilinear", "data_format": "channels_first"}, (2, 2, 3, 2), (2, 2, 6, 4), 0, 0, False, {}),
    ("cropping1d", layers.Cropping1D, {"cropping": [1, 2]}, (2, 6, 3), (2, 3, 3), 0, 0, False, {}),
    ("cropping2d", layers.Cropping2D, {"cropping": [[1, 0], [0, 2]]}, (2, 4, 5, 2), (2, 3, 3, 2), 0, 0, False,
     {}),
    ("spatial_dropout1d", layers.SpatialDropout1D, {"rate": 0.5, "seed": 1}, (2, 4, 3), (2, 4, 3), 0, 0, True,
     {}),
    ("spatial_dropout2d", layers.SpatialDropout2D, {"rate": 0.5, "seed": 2}, (2, 3, 3, 4), (2, 3, 3, 4), 0, 0,
     True, {}),
    ("gaussian_noise", layers.GaussianNoise, {"stddev": 0.5, "seed": 3}, (2, 3, 4), (2, 3, 4), 0, 0, True, {}),
    ("gaussian_dropout", layers.GaussianDropout, {"rate": 0.3, "seed": 4}, (2, 3, 4), (2, 3, 4), 0, 0, True, {}),
    ("alpha_dropout", layers.AlphaDropout, {"rate": 0.3, "seed": 5}, (2, 3, 4), (2, 3, 4), 0, 0, True, {}),
    ("relu_all_arguments", layers.ReLU, {"max_value": 1.0, "negative_slope": 0.1, "threshold": 0.2}, (2, 3, 4),
     (2, 3, 4), 0, 0, True, {}),
    ("leaky_relu", layers.LeakyReLU, {}, (2, 3, 4), (2, 3, 4), 0, 0, True, {}),
    ("prelu_shared", layers.PReLU, {"alpha_initializer": "ones", "shared_axes": [1]}, (2, 3, 4), (2, 3, 4), 1, 0,
     True, {}),
    ("elu", layers.ELU, {"alpha": 0.5}, (2, 3, 4), (2, 3, 4), 0, 0, True, {}),
    ("softmax_axes", layers.Softmax, {"axis": [1, 2]}, (2, 3, 4), (2, 3, 4), 0, 0, True, {}),
    ("softmax", layers.Softmax, {}, (2, 3, 4), (2, 3, 4), 0, 0, True, {}),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_layer(case):
    _, cls, kwargs, input_shape, output_shape, trainable, non_trainable, masking, extra = case
    report = run_layer_test(cls, kwargs, input_shape=input_shape, expected_output_shape=output_shape,
                            expected_num_trainable_weights=trainable,
                            expected_num_non_trainable_weights=non_trainable, supports_masking=masking, **extra)
    # Every check ran: none was switched off silently.
    assert report.checks == ["config", "eager", "config (built)", "symbolic", "masking", "gradients", "training",
                             "saving"]
    assert max(report.gradient_errors.values()) <= 1e-6
    assert np.isfinite(report.training_loss)


def test_every_exported_layer_is_in_the_table():
    """A new layer exported by distnn.layers must get a row (aliases count as their class)."""
    exported = {obj for name in layers.__all__ for obj in [getattr(layers, name)]
                if isinstance(obj, type) and issubclass(obj, Layer)}
    exempt = {Layer, layers.InputLayer}  # the base class; the input placeholder has no computation
    tested = {case[1] for case in CASES}
    assert exported - exempt - tested == set()


def test_functional_aliases_are_exported():
    a, b = distnn.Input((3,)), distnn.Input((3,))
    for alias, cls in [(layers.add, layers.Add), (layers.subtract, layers.Subtract),
                       (layers.multiply, layers.Multiply), (layers.average, layers.Average),
                       (layers.maximum, layers.Maximum), (layers.minimum, layers.Minimum),
                       (layers.concatenate, layers.Concatenate), (layers.dot, layers.Dot)]:
        out = alias([a, b])
        assert isinstance(out.node.operation, cls)
