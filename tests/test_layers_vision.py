"""Vision layers against independent numpy references: transposed convolution as the adjoint of a
loop-written convolution, depthwise/separable/grouped convolutions channel by channel, up-sampling as
``np.repeat``, cropping as slicing, activation layers by their formulas, and the random layers by
their statistics, their inference identity and their per-sample exactness across shards."""
import numpy as np
import pytest

from conftest import run_mpi, run_python
from distnn import backend, layers, random
from distnn.ops.core import value_of


def reference_conv(x, kernel, strides=(1, 1), pads=((0, 0), (0, 0))):
    """NHWC convolution written as loops over output pixels (no im2col): kernel (kh, kw, cin, f)."""
    x = np.pad(x, ((0, 0), *pads, (0, 0)))
    kh, kw, _, filters = kernel.shape
    out_h = (x.shape[1] - kh) // strides[0] + 1
    out_w = (x.shape[2] - kw) // strides[1] + 1
    y = np.zeros((x.shape[0], out_h, out_w, filters))
    for i in range(out_h):
        for j in range(out_w):
            window = x[:, i * strides[0]:i * strides[0] + kh, j * strides[1]:j * strides[1] + kw, :]
            y[:, i, j] = np.tensordot(window, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return y


def as_numpy(y):
    return backend.to_numpy(value_of(y))


def random_array(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ------------------------------------------------------------------------------ convolutions
@pytest.mark.parametrize("strides, padding, pads", [((2, 2), "valid", ((0, 0), (0, 0))),
                                                    ((1, 1), "valid", ((0, 0), (0, 0))),
                                                    ((2, 2), "same", ((0, 1), (0, 1)))])
def test_conv2d_transpose_is_the_adjoint_of_conv2d(strides, padding, pads):
    """<conv(z), x> == <z, conv_transpose(x)> for the same kernel (kh, kw, filters, in_channels)."""
    x = random_array((2, 3, 4, 3), seed=1)
    layer = layers.Conv2DTranspose(2, 3, strides=strides, padding=padding, use_bias=False, dtype="float64")
    y = as_numpy(layer(x))
    kernel = layer.kernel.numpy()
    assert kernel.shape == (3, 3, 2, 3)
    z = random_array(y.shape, seed=2)
    conv_z = reference_conv(z, kernel, strides, pads)
    assert conv_z.shape == x.shape
    np.testing.assert_allclose(np.vdot(conv_z, x), np.vdot(z, y), rtol=1e-10)


def test_conv2d_transpose_output_sizes_bias_and_channels_first():
    x = random_array((1, 3, 2, 4), seed=3)
    assert layers.Conv2DTranspose(2, 3, strides=2)(x).shape == (1, 7, 5, 2)  # (n - 1) * s + max(k, s)
    assert layers.Conv2DTranspose(2, 3, strides=2, padding="same")(x).shape == (1, 6, 4, 2)  # n * s
    assert layers.Conv2DTranspose(2, 3, strides=2, output_padding=1)(x).shape == (1, 8, 6, 2)
    last = layers.Conv2DTranspose(2, 2, strides=2, bias_initializer="ones", dtype="float64")
    y_last = as_numpy(last(x))
    first = layers.Conv2DTranspose(2, 2, strides=2, data_format="channels_first", dtype="float64")
    first(x.transpose(0, 3, 1, 2))
    first.set_weights(last.get_weights())
    np.testing.assert_allclose(as_numpy(first(x.transpose(0, 3, 1, 2))), y_last.transpose(0, 3, 1, 2), atol=1e-12)
    no_bias = layers.Conv2DTranspose(2, 2, strides=2, use_bias=False, dtype="float64")
    no_bias(x)
    no_bias.set_weights([last.kernel.numpy()])
    np.testing.assert_allclose(y_last - as_numpy(no_bias(x)), 1.0, atol=1e-12)


def test_conv1d_transpose_matches_conv2d_transpose_of_height_one():
    x = random_array((2, 5, 3), seed=4)
    layer1 = layers.Conv1DTranspose(2, 3, strides=2, dtype="float64")
    y1 = as_numpy(layer1(x))
    layer2 = layers.Conv2DTranspose(2, (1, 3), strides=(1, 2), dtype="float64")
    layer2(x[:, None])
    layer2.set_weights([layer1.kernel.numpy()[None], layer1.bias.numpy()])
    np.testing.assert_allclose(y1, as_numpy(layer2(x[:, None]))[:, 0], atol=1e-12)


def test_depthwise_conv2d_convolves_each_channel_alone():
    x = random_array((2, 5, 4, 3), seed=5)
    layer = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", bias_initializer="ones", dtype="float64")
    y = as_numpy(layer(x))
    kernel = layer.kernel.numpy()
    assert kernel.shape == (3, 3, 3, 2) and layer.kernel.path.endswith("kernel")
    for c in range(3):
        for m in range(2):
            expected = reference_conv(x[..., c:c + 1], kernel[:, :, c:c + 1, m:m + 1], pads=((1, 1), (1, 1)))
            np.testing.assert_allclose(y[..., c * 2 + m], expected[..., 0] + 1.0, atol=1e-12)


def test_separable_conv2d_is_depthwise_then_pointwise():
    x = random_array((2, 5, 5, 2), seed=6)
    layer = layers.SeparableConv2D(4, 2, strides=2, depth_multiplier=3, activation="relu", dtype="float64")
    y = as_numpy(layer(x))
    depthwise, pointwise, bias = layer.get_weights()
    assert depthwise.shape == (2, 2, 2, 3) and pointwise.shape == (1, 1, 6, 4) and bias.shape == (4,)
    maps = np.concatenate([reference_conv(x[..., c:c + 1], depthwise[:, :, c:c + 1, m:m + 1], (2, 2))
                           for c in range(2) for m in range(3)], axis=-1)
    np.testing.assert_allclose(y, np.maximum(maps @ pointwise[0, 0] + bias, 0), atol=1e-12)


def test_grouped_conv2d_convolves_each_group_alone():
    x = random_array((2, 4, 4, 6), seed=7)
    layer = layers.Conv2D(4, 3, groups=2, dtype="float64")
    y = as_numpy(layer(x))
    kernel, bias = layer.get_weights()
    assert kernel.shape == (3, 3, 3, 4)
    expected = np.concatenate([reference_conv(x[..., 3 * g:3 * g + 3], kernel[..., 2 * g:2 * g + 2])
                               for g in range(2)], axis=-1) + bias
    np.testing.assert_allclose(y, expected, atol=1e-12)
    assert layer.get_config()["groups"] == 2
    assert layers.Conv2D.from_config(layer.get_config()).groups == 2


def test_grouped_conv1d_causal_channels_first():
    x = random_array((2, 4, 5), seed=8)  # (batch, channels, steps)
    layer = layers.Conv1D(2, 2, groups=2, padding="causal", data_format="channels_first", dtype="float64")
    y = as_numpy(layer(x))
    kernel, bias = layer.get_weights()
    steps_last = np.pad(x.transpose(0, 2, 1), ((0, 0), (1, 0), (0, 0)))[:, None]  # causal: pad 1 before
    expected = np.concatenate([reference_conv(steps_last[..., 2 * g:2 * g + 2], kernel[None, :, :, g:g + 1])
                               for g in range(2)], axis=-1)[:, 0] + bias
    np.testing.assert_allclose(y, expected.transpose(0, 2, 1), atol=1e-12)


@pytest.mark.parametrize("cls, kwargs", [(layers.DepthwiseConv2D, {"kernel_size": 2, "depth_multiplier": 2}),
                                         (layers.SeparableConv2D, {"filters": 3, "kernel_size": 2}),
                                         (layers.Conv2D, {"filters": 4, "kernel_size": 2, "groups": 2})])
def test_channels_first_is_channels_last_transposed(cls, kwargs):
    x = random_array((2, 4, 3, 2), seed=20)
    last = cls(**kwargs, bias_initializer="ones", activation="tanh", dtype="float64")
    y_last = as_numpy(last(x))
    first = cls(**kwargs, data_format="channels_first", activation="tanh", dtype="float64")
    first(x.transpose(0, 3, 1, 2))
    first.set_weights(last.get_weights())
    np.testing.assert_allclose(as_numpy(first(x.transpose(0, 3, 1, 2))), y_last.transpose(0, 3, 1, 2), atol=1e-12)


@pytest.mark.parametrize("make, message", [
    (lambda: layers.Conv2D(3, 2, groups=2), "filters=3"),
    (lambda: layers.Conv2D(4, 2, groups=0), "groups=0"),
    (lambda: layers.Conv2DTranspose(2, 3, strides=2, output_padding=2), "output_padding=2"),
    (lambda: layers.DepthwiseConv2D(2, depth_multiplier=0), "depth_multiplier=0"),
    (lambda: layers.SeparableConv2D(0, 2), "filters=0"),
])
def test_bad_convolution_arguments_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_groups_must_divide_the_input_channels():
    with pytest.raises(ValueError, match="divisible by the number of groups"):
        layers.Conv2D(4, 2, groups=2)(np.zeros((1, 3, 3, 3), dtype="float32"))


# --------------------------------------------------------------------------------- reshaping
def test_upsampling_nearest_is_np_repeat():
    x = random_array((2, 3, 2, 4), seed=9)
    np.testing.assert_array_equal(as_numpy(layers.UpSampling2D((2, 3))(x)), x.repeat(2, axis=1).repeat(3, axis=2))
    np.testing.assert_array_equal(as_numpy(layers.UpSampling2D(2, data_format="channels_first")(x)),
                                  x.repeat(2, axis=2).repeat(2, axis=3))
    np.testing.assert_array_equal(as_numpy(layers.UpSampling1D(3)(x[:, 0])), x[:, 0].repeat(3, axis=1))


def test_upsampling_bilinear_half_pixel_centres():
    # A row [0, 1] doubled samples at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped).
    x = np.array([0.0, 1.0]).reshape(1, 1, 2, 1)
    np.testing.assert_allclose(as_numpy(layers.UpSampling2D(2, interpolation="bilinear")(x))[0, :, :, 0],
                               [[0, 0.25, 0.75, 1]] * 2)
    # Separable: an outer product stays the outer product of the interpolated factors.
    a, b = random_array(3, seed=10), random_array(4, seed=11)
    image = np.multiply.outer(a, b)[None, :, :, None]
    y = as_numpy(layers.UpSampling2D(2, interpolation="bilinear")(image))[0, :, :, 0]
    rows = as_numpy(layers.UpSampling2D((2, 1), interpolation="bilinear")(a.reshape(1, 3, 1, 1)))[0, :, 0, 0]
    cols = as_numpy(layers.UpSampling2D((1, 2), interpolation="bilinear")(b.reshape(1, 1, 4, 1)))[0, 0, :, 0]
    np.testing.assert_allclose(y, np.multiply.outer(rows, cols), atol=1e-12)


def test_cropping_is_slicing():
    x = random_array((2, 6, 7, 3), seed=12)
    np.testing.assert_array_equal(as_numpy(layers.Cropping2D(((1, 2), (3, 0)))(x)), x[:, 1:4, 3:])
    np.testing.assert_array_equal(as_numpy(layers.Cropping2D(1, data_format="channels_first")(x)), x[:, :, 1:6, 1:2])
    np.testing.assert_array_equal(as_numpy(layers.Cropping1D((2, 1))(x[:, 0])), x[:, 0, 2:6])
    np.testing.assert_array_equal(as_numpy(layers.Cropping1D()(x[:, 0])), x[:, 0, 1:6])
    with pytest.raises(ValueError, match="cropping"):
        layers.Cropping1D((4, 3))(x[:, 0])
    with pytest.raises(ValueError, match="cropping=-1"):
        layers.Cropping2D(-1)


def test_interpolation_is_checked():
    with pytest.raises(ValueError, match="interpolation='cubic'"):
        layers.UpSampling2D(interpolation="cubic")


def test_global_pooling_keepdims_matches_numpy():
    x = random_array((2, 3, 5), seed=13)
    np.testing.assert_allclose(
        as_numpy(layers.GlobalAveragePooling1D(data_format="channels_first", keepdims=True)(x)),
        x.mean(axis=2, keepdims=True), atol=1e-12)
    y = random_array((2, 4, 3, 2), seed=14)
    np.testing.assert_allclose(as_numpy(layers.GlobalMaxPooling2D(keepdims=True)(y)),
                               y.max(axis=(1, 2), keepdims=True))


# ------------------------------------------------------------------------------- activations
def test_relu_arguments_follow_the_keras_formula():
    x = np.linspace(-2, 3, 41).reshape(1, -1)
    y = as_numpy(layers.ReLU(max_value=1.5, negative_slope=0.1, threshold=0.5)(x))
    expected = np.where(x >= 1.5, 1.5, np.where(x > 0.5, x, 0.1 * (x - 0.5)))
    np.testing.assert_allclose(y, expected, atol=1e-12)
    np.testing.assert_allclose(as_numpy(layers.ReLU()(x)), np.maximum(x, 0))
    with pytest.raises(ValueError, match="max_value=-1"):
        layers.ReLU(max_value=-1)


def test_leaky_relu_elu_prelu_softmax_formulas():
    x = random_array((2, 3, 4), seed=15)
    np.testing.assert_allclose(as_numpy(layers.LeakyReLU()(x)), np.where(x >= 0, x, 0.3 * x), atol=1e-12)
    np.testing.assert_allclose(as_numpy(layers.ELU(0.5)(x)), np.where(x > 0, x, 0.5 * np.expm1(x)), atol=1e-12)
    prelu = layers.PReLU(shared_axes=[1], dtype="float64")
    prelu(x)
    alpha = random_array((1, 4), seed=16)
    prelu.set_weights([alpha])
    np.testing.assert_allclose(as_numpy(prelu(x)), np.where(x >= 0, x, alpha * x), atol=1e-12)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(as_numpy(layers.Softmax(axis=1)(x)), e / e.sum(axis=1, keepdims=True), atol=1e-12)
    mask = np.array([[True, True, False, True]] * 3 * 2).reshape(2, 3, 4)
    masked = as_numpy(layers.Softmax()(x, mask=mask))
    e = np.exp(x) * mask
    np.testing.assert_allclose(masked, e / e.sum(axis=-1, keepdims=True), atol=1e-9)


# ------------------------------------------------------------------------------ random layers
def test_gaussian_noise_and_dropout_statistics_and_inference_identity():
    x = np.ones((400, 500), dtype="float64")
    noise = layers.GaussianNoise(0.5, seed=1)
    added = as_numpy(noise(x, training=True)) - 1
    assert abs(added.mean()) < 0.01 and abs(added.std() - 0.5) < 0.01
    np.testing.assert_array_equal(as_numpy(noise(x)), x)
    dropout = layers.GaussianDropout(0.2, seed=2)
    factor = as_numpy(dropout(x, training=True))
    assert abs(factor.mean() - 1) < 0.01 and abs(factor.std() - np.sqrt(0.2 / 0.8)) < 0.01
    np.testing.assert_array_equal(as_numpy(dropout(x)), x)
    with pytest.raises(ValueError, match="stddev=2"):
        layers.GaussianNoise(2)


def test_alpha_dropout_keeps_mean_and_variance():
    x = random_array((400, 500), seed=17)
    layer = layers.AlphaDropout(0.2, seed=3)
    y = as_numpy(layer(x, training=True))
    assert abs(y.mean()) < 0.02 and abs(y.var() - 1) < 0.03
    alpha_p = -1.6732632423543772848170429916717 * 1.0507009873554804934193349852946
    a = ((1 - 0.2) * (1 + 0.2 * alpha_p ** 2)) ** -0.5
    dropped = np.isclose(y, a * alpha_p - a * alpha_p * 0.2)
    assert abs(dropped.mean() - 0.2) < 0.01
    np.testing.assert_allclose(y[~dropped], a * x[~dropped] - a * alpha_p * 0.2, atol=1e-12)
    np.testing.assert_array_equal(as_numpy(layer(x)), x)


@pytest.mark.parametrize("make, shape, channel_axis", [
    (lambda: layers.SpatialDropout1D(0.4, seed=4), (300, 5, 20), 2),
    (lambda: layers.SpatialDropout2D(0.4, seed=5), (300, 3, 4, 20), 3),
    (lambda: layers.SpatialDropout2D(0.4, data_format="channels_first", seed=6), (300, 20, 3, 4), 1),
])
def test_spatial_dropout_drops_whole_channels(make, shape, channel_axis):
    x = random_array(shape, seed=18) + 10  # never zero
    y = as_numpy(make()(x, training=True))
    spatial = tuple(a for a in range(1, len(shape)) if a != channel_axis)
    zero = (y == 0).all(axis=spatial)
    kept = np.isclose(y, x / 0.6).all(axis=spatial)
    assert (zero | kept).all()  # each channel of each sample is dropped or kept whole
    assert abs(zero.mean() - 0.4) < 0.03
    np.testing.assert_array_equal(as_numpy(make()(x)), x)


@pytest.mark.parametrize("make", [lambda: layers.SpatialDropout2D(0.5, seed=7),
                                  lambda: layers.GaussianNoise(0.3, seed=8),
                                  lambda: layers.GaussianDropout(0.3, seed=9),
                                  lambda: layers.AlphaDropout(0.3, seed=10)])
def test_random_layers_draw_per_sample_so_shards_match_one_process(make):
    """Inside a training step, the noise of rows [offset, offset + count) of the global batch is the
    same whether one process holds the whole batch or a rank holds only that shard."""
    x = random_array((6, 3, 3, 2), seed=19)
    with random.training_step(11, (0, 4), 0, 6):
        whole = as_numpy(make()(x, training=True))
    with random.training_step(11, (0, 4), 2, 3):
        shard = as_numpy(make()(x[2:5], training=True))
    np.testing.assert_array_equal(shard, whole[2:5])
    assert not np.array_equal(whole, x)


# ------------------------------------------------------------------------ N ranks = 1 process
def _parity_run(out, n=None):
    argv = ["tests/mpi_scripts/train_parity.py", str(out), "--model", "cnn-vision", "--samples", "75",
            "--batch-size", "16"]
    if n is None:
        run_python(argv, timeout=60)
    else:
        run_mpi(n, argv, timeout=60)
    with np.load(out) as saved:
        return dict(saved)


@pytest.mark.mpi
def test_a_vision_model_with_random_layers_trains_on_ranks_like_one_process(tmp_path):
    """Every vision layer in one model (its four random layers drawing per global sample): 2 and 3
    ranks end each epoch with the weights of one process (75 samples, batch 16: uneven shards)."""
    reference = _parity_run(tmp_path / "one.npz")
    assert np.abs(reference["epoch1"] - reference["epoch0"]).max() > 1e-4  # it trained
    for n in (2, 3):
        result = _parity_run(tmp_path / f"n{n}.npz", n)
        assert int(result["identical_checks"]) == 2
        for key in ("epoch0", "epoch1", "loss_history", "predictions"):
            scale = max(np.abs(reference[key]).max(), 1e-12)
            assert np.abs(reference[key] - result[key]).max() / scale <= 1e-5, (n, key)
