"""Channel pruning's parts on tiny real Keras models: the coupled groups of the one planner, the
probe that removes channels by masks (equal to the physical model it slices), the least-squares
layouts checked against the layers themselves, Taylor importance against L1, the cost model
against counted MACs and parameters, and the allocation under a global target."""

import numpy as np
import pytest

from conftest import build_conditional, build_dcgan, build_image_to_image
from gencompress.calibration.sources import noise_set
from gencompress.compress.channels.cost import ChannelCost
from gencompress.compress.channels.graph import ChannelGraph
from gencompress.compress.channels.importance import l1_importance, ranking, taylor_importance
from gencompress.compress.channels.probe import Probe
from gencompress.compress.channels.refit import Normal, PatchLayout, refit_weights
from gencompress.compress.channels.slicing import sliced_model
from gencompress.model import _tensor_info
from gencompress.report.macs import count_macs


def _feeds(model, n=6, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, t in zip(model.input_names, model.inputs):
        shape = (n,) + tuple(t.shape[1:])
        feeds[name] = rng.integers(0, 5, shape).astype("int32") if t.dtype.is_integer else rng.standard_normal(shape).astype("float32")
    return feeds


def _run(model, feeds):
    xs = [feeds[n] for n in model.input_names]
    out = model(xs if len(xs) > 1 else xs[0], training=False)
    return np.asarray(out[0] if isinstance(out, list) else out)


def build_zoo(keras):
    """Every coupling the planner knows, in one generator: a label Embedding multiplied into a
    Dense, Dense -> BN -> Reshape, UpSampling, a residual Add, a channel Concatenate, a separable
    and a depthwise convolution, depth-to-space, a Flatten into a Dense side output."""
    from gencompress.tfenv import import_tf

    tf = import_tf()
    keras.utils.set_random_seed(7)
    z = keras.Input((6,), name="z")
    label = keras.Input((1,), dtype="int32", name="label")
    h = keras.layers.Dense(12, name="embed_match")(z)
    e = keras.layers.Flatten(name="label_flat")(keras.layers.Embedding(5, 12, name="label_embed")(label))
    x = keras.layers.Multiply(name="conditioned")([h, e])
    x = keras.layers.Dense(4 * 4 * 8, name="project")(x)
    x = keras.layers.BatchNormalization(name="project_bn")(x)
    x = keras.layers.Reshape((4, 4, 8), name="grid")(x)
    x = keras.layers.UpSampling2D(name="up")(x)
    a = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv_a")(x)
    b = keras.layers.Conv2D(6, 3, padding="same", name="conv_b")(a)
    r = keras.layers.Add(name="residual")([a, b])
    s = keras.layers.SeparableConv2D(5, 3, padding="same", name="sep")(r)
    d = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(s)
    c = keras.layers.Concatenate(name="cat")([r, d])
    c = keras.layers.Conv2D(8, 1, name="to_d2s")(c)
    y = tf.nn.depth_to_space(c, 2)
    y = keras.layers.PReLU(shared_axes=[1, 2], name="prelu")(y)
    image = keras.layers.Conv2D(1, 3, padding="same", activation="tanh", name="image")(y)
    side = keras.layers.Dense(3, name="side")(keras.layers.Flatten(name="flat")(a))
    return keras.Model([z, label], [image, side], name="zoo")


@pytest.fixture(scope="module")
def zoo(keras):
    return build_zoo(keras)


def test_zoo_groups_follow_every_coupling(zoo):
    graph = ChannelGraph(zoo)
    groups = graph.prunable()
    made_by = [set(g.producers) for g in groups]
    # The Embedding's output_dim and the Dense multiplied with it are one group; the Dense before
    # the Reshape follows the grid's channels; conv_a and conv_b meet in the residual Add; the
    # conv before depth-to-space makes 4 positions x 2 channels of its output.
    assert made_by == [{"embed_match", "label_embed"}, {"project", "grid"}, {"conv_a", "conv_b"}, {"sep"}, {"to_d2s"}]
    assert [g.channels for g in groups] == [12, 8, 6, 5, 2]
    # The outputs' channels are never touched.
    assert not any(p in ("image", "side") for g in groups for p in g.producers)


def test_zoo_masked_probe_is_the_sliced_model(zoo):
    graph = ChannelGraph(zoo)
    groups = graph.prunable()
    probe = Probe(zoo, graph, groups)
    feeds = _feeds(zoo)
    reference = _run(zoo, feeds)
    assert np.array_equal(probe.outputs(feeds)[0], reference)  # all masks one: the teacher
    rng = np.random.default_rng(3)
    selection = {g.root: np.sort(rng.choice(g.channels, max(1, g.channels // 2), replace=False)) for g in groups}
    pruned = sliced_model(zoo, graph, selection)
    masked = probe.outputs(feeds, selection)
    for got, want in zip(masked, [np.asarray(o) for o in pruned([feeds["z"], feeds["label"]], training=False)]):
        assert np.allclose(got, want, atol=1e-5)
    assert not np.allclose(masked[0], reference, atol=1e-3)  # channels did go
    assert [tuple(t.shape) for t in pruned.outputs] == [tuple(t.shape) for t in zoo.outputs]
    assert pruned.get_layer("label_embed").output_dim == 6 and pruned.get_layer("grid").output_shape[-1] == 4
    assert pruned.get_layer("project").units == 4 * 4 * 4 and pruned.get_layer("dw").depthwise_kernel.shape[2] == pruned.get_layer("sep").filters
    cost = ChannelCost(graph, groups)
    counts = {r: len(v) for r, v in selection.items()}
    assert cost.macs(counts) == count_macs(pruned).total < count_macs(zoo).total
    assert cost.params(counts) == pruned.count_params() < zoo.count_params()


@pytest.mark.parametrize("build", [build_dcgan, build_conditional, build_image_to_image], ids=["dcgan", "conditional", "sr"])
def test_conftest_models_prune_and_slice(keras, build):
    model = build(keras)
    graph = ChannelGraph(model)
    groups = graph.prunable()
    selection = {g.root: np.arange(max(1, g.channels // 2)) for g in groups}
    probe = Probe(model, graph, groups)
    feeds = _feeds(model)
    pruned = sliced_model(model, graph, selection)
    assert np.allclose(probe.outputs(feeds, selection)[0], _run(pruned, feeds), atol=1e-5)
    assert count_macs(pruned).total < count_macs(model).total


def test_width_students_and_pruning_share_the_planner(keras):
    """A width student's layer sizes are what pruning each group to the same share gives."""
    from gencompress.compress.distillation import derive_student
    from gencompress.config import DistillConfig

    model = build_dcgan(keras)
    student, _ = derive_student(model, DistillConfig(width=0.5))
    graph = ChannelGraph(model)
    sizes = graph.solve(0.5)
    pruned = sliced_model(model, graph, {g.root: np.arange(sizes[g.root]) for g in graph.prunable()})
    assert [tuple(w.shape) for w in pruned.weights] == [tuple(w.shape) for w in student.weights]


LAYOUT_CASES = [
    ((7, 7, 5), "Conv2D", dict(filters=4, kernel_size=3, padding="same")),
    ((8, 8, 5), "Conv2D", dict(filters=4, kernel_size=4, strides=2, padding="same")),
    ((8, 8, 5), "Conv2D", dict(filters=4, kernel_size=3, strides=2, padding="valid")),
    ((9, 9, 5), "Conv2D", dict(filters=4, kernel_size=3, dilation_rate=2, padding="same", activation="relu")),
    ((7, 7, 5), "Conv2DTranspose", dict(filters=4, kernel_size=5, strides=2, padding="same")),
    ((7, 7, 5), "Conv2DTranspose", dict(filters=4, kernel_size=4, strides=2, padding="same")),
    ((7, 7, 5), "Conv2DTranspose", dict(filters=4, kernel_size=3, strides=2, padding="valid")),
    ((7, 7, 5), "Conv2DTranspose", dict(filters=4, kernel_size=3, strides=2, padding="same", output_padding=1)),
    ((12, 5), "Conv1D", dict(filters=4, kernel_size=3, padding="causal", dilation_rate=2)),
    ((12, 5), "Conv1DTranspose", dict(filters=4, kernel_size=5, strides=2, padding="same")),
    ((3, 5), "Dense", dict(units=4, activation="sigmoid")),
]


@pytest.mark.parametrize("shape, cls, kwargs", LAYOUT_CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(LAYOUT_CASES)])
def test_patch_layouts_reproduce_the_layers(keras, shape, cls, kwargs):
    rng = np.random.default_rng(0)
    layer = getattr(keras.layers, cls)(**kwargs)
    out = layer(keras.Input(shape))
    for w in layer.weights:
        w.assign(rng.standard_normal(w.shape).astype("float32"))
    layout = PatchLayout(layer, shape, tuple(out.shape[1:]))
    assert layout.check(rng.standard_normal((3,) + shape).astype("float32"), rng)


def test_refit_recovers_a_channel_the_others_carry(keras):
    """Input channel 3 is channels 0 + 1: cutting it loses its share of the output, the
    least-squares re-fit moves that share onto channels 0 and 1 exactly."""
    rng = np.random.default_rng(1)
    layer = keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same")
    out = layer(keras.Input((5, 5, 4)))
    layer.set_weights([rng.standard_normal((3, 3, 3, 4)).astype("float32"), rng.standard_normal(3).astype("float32")])
    x = rng.standard_normal((64, 5, 5, 4)).astype("float32")
    x[..., 3] = x[..., 0] + x[..., 1]
    layout = PatchLayout(layer, (5, 5, 4), tuple(out.shape[1:]))
    where = layout.sample_positions(len(x), 10_000, rng)
    target = layout.linear(layout.patches(x, where), layer.get_weights())
    kept = np.array([0, 1, 2])
    normal = Normal(len(layout.columns(kept)), True, 3)
    normal.add(layout.patches(x, where, kept), target)
    refit = refit_weights(layout, layer.get_weights(), normal.solve(), kept)
    cut = [w.copy() for w in layer.get_weights()]
    cut[0][..., 3] = 0.0
    y = np.asarray(layer(x))

    def error(weights):
        layer.set_weights(weights)
        return float(np.max(np.abs(np.asarray(layer(x)) - y)))

    assert error(cut) > 0.5
    assert error(refit) < 2e-2 * float(np.abs(y).max())


def test_taylor_sees_what_the_outputs_use_and_l1_does_not(keras):
    """Hidden unit 0 has the largest weights but the next layer ignores it: L1 ranks it first,
    Taylor (its effect on the outputs) last."""
    keras.utils.set_random_seed(2)
    z = keras.Input((4,), name="z")
    h = keras.layers.Dense(6, activation="tanh", name="hidden")(z)
    model = keras.Model(z, keras.layers.Dense(8, name="out")(h))
    w1, b1 = model.get_layer("hidden").get_weights()
    w1[:, 0] *= 50.0
    model.get_layer("hidden").set_weights([w1, b1])
    w2, b2 = model.get_layer("out").get_weights()
    w2[0, :] = 0.0
    model.get_layer("out").set_weights([w2, b2])
    graph = ChannelGraph(model)
    groups = graph.prunable()
    (group,) = groups
    feeds = [{"z": np.random.default_rng(i).standard_normal((16, 4)).astype("float32")} for i in range(4)]
    taylor = taylor_importance(Probe(model, graph, groups), iter(feeds), 64)[group.root]
    l1 = l1_importance(model, graph, groups)[group.root]
    assert ranking(l1)[0] == 0 and ranking(taylor)[-1] == 0 and taylor[0] == 0.0


def test_allocation_meets_each_kind_of_target(keras):
    from gencompress.compress.channels.pruner import ChannelPruner
    from gencompress.compress.finetune import NoiseBatches

    model = build_image_to_image(keras)
    inputs = [_tensor_info(n, t.shape, t.dtype) for n, t in zip(model.input_names, model.inputs)]
    held = noise_set(inputs, 16, np.random.default_rng(4), None)
    pruner = ChannelPruner(model, NoiseBatches(inputs, 16, 0), held, (-3.0, 3.0))
    assert [g.producers for g in pruner.groups] == [["conv1"]]
    for kind, value in (("macs", 0.6), ("params", 0.7), ("channels", 0.5)):
        counts, met = pruner.counts_for(kind, value)
        measure = {"macs": pruner.cost.macs, "params": pruner.cost.params, "channels": pruner.cost.channels}[kind]
        assert met and measure(counts) <= value * measure({})
    cand = pruner.prune(pruner.counts_for("macs", 0.6)[0])
    assert cand.macs == count_macs(cand.model).total <= 0.6 * pruner.macs
    # The re-fit of the layer after the cut channels can only bring the outputs closer.
    assert cand.psnr_refit_db >= cand.psnr_removed_db and cand.refit_layers == ["residual"]


def test_refit_through_a_saturating_output(keras):
    """Under a tanh, logits far into saturation do not matter: the Gauss-Newton re-fit minimizes
    the error after the activation, the plain linear fit the logits' (spent on the saturated
    ones). Both drop the same input channel, which the others carry in part."""
    from gencompress.compress.channels.refit import activate, fit_through

    rng = np.random.default_rng(5)
    layer = keras.layers.Dense(2)
    layer(keras.Input((6,)))
    layer.set_weights([rng.standard_normal((6, 2)).astype("float32") * 3.0, np.zeros(2, "float32")])
    x = rng.standard_normal((4000, 6)).astype("float32")
    x[:, 5] = np.abs(x[:, 0]) * 2.0 + 0.3 * x[:, 5]  # the dropped input: a nonlinear function of a kept one
    layout = PatchLayout(layer, (6,), (2,))
    where = layout.sample_positions(len(x), len(x), rng)
    y = layout.linear(layout.patches(x, where), layer.get_weights())
    kept = np.arange(5)
    p = layout.patches(x, where, kept)
    plain = Normal(5, True, 2)
    plain.add(p, y)

    def output_error(solution):
        return float(np.mean((activate("tanh", p @ solution[:5] + solution[5]) - np.tanh(y)) ** 2))

    linear, gauss_newton = fit_through("tanh", p, y, True)
    assert np.allclose(linear, plain.solve()) and output_error(gauss_newton) < 0.8 * output_error(linear)


def test_learning_rate_follows_the_start():
    from gencompress.compress.channels.training import start_learning_rate

    assert start_learning_rate(1e-3, 15.0) == 1e-3 and start_learning_rate(1e-3, None) == 1e-3
    assert start_learning_rate(1e-3, 35.0) == 1e-4
    assert start_learning_rate(1e-3, 25.0) == pytest.approx(3.16e-4)


def test_macs_of_every_counted_layer(keras):
    from gencompress.report.macs import count_macs, layer_macs

    x = keras.Input((8, 8, 4))
    y = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="c")(x)  # 4x4 x 9 x 4 x 6
    y = keras.layers.Conv2DTranspose(5, 3, strides=2, padding="same", name="t")(y)  # 4x4 inputs x 9 x 6 x 5
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="d")(y)  # 8x8 x 9 x 5
    y = keras.layers.SeparableConv2D(2, 3, padding="same", name="s")(y)  # 8x8 x (9 x 5 + 5 x 2)
    y = keras.layers.Dense(3, name="fc")(keras.layers.Flatten()(y))  # 128 x 3
    counted = count_macs(keras.Model(x, y))
    want = {"c": 16 * 9 * 4 * 6, "t": 16 * 9 * 6 * 5, "d": 64 * 9 * 5, "s": 64 * (45 + 10), "fc": 128 * 3}
    assert {r["name"]: r["macs"] for r in counted.layers} == want and counted.total == sum(want.values())
    assert layer_macs(keras.layers.LSTM(7), (10, 3), (7,)) == 10 * 4 * (3 + 7) * 7
