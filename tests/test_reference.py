"""The reference proves itself right: conservation on a real network, and each rule against numpy by hand."""

import numpy as np
import pytest
import torch
from torch import nn

import zoo
from reference import propagate, rcam_maps, reference

EPS = 1e-6


def stabilized(z):
    return z + EPS * np.where(z >= 0, 1.0, -1.0)


def contrastive(num_classes, target):
    seed = np.full(num_classes, -1.0 / num_classes)
    seed[target] = 1.0
    return seed


def set_linear(layer: nn.Module, weight, bias=None):
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight, dtype=layer.weight.dtype).reshape(layer.weight.shape))
        if layer.bias is not None:
            layer.bias.copy_(torch.zeros_like(layer.bias) if bias is None else torch.tensor(bias))


def test_zplus_conserves_relevance_through_vgg16():
    """Why this is exact: for a non-negative image every Conv/Linear input is non-negative (the image, then ReLU
    outputs), so z = sum x W+ >= 0 and z+ hands each output's R to its inputs in full wherever z > 0, which random
    positive inputs make true everywhere; ReLU passes R and max-pool routes it whole. The biases, ignored by z+, cannot
    leak relevance. At 224 x 224 the 7 x 7 adaptive average pool is the identity map, where the pools' exact norm
    rule gives R_in = R * A / A = R."""
    model = zoo.randomize(zoo.vgg16(width=1 / 8, num_classes=10), seed=0)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    convs = ["features.4", "features.16", "features.23", "features.30"]
    result = propagate(model, x, convs + ["avgpool"])

    def total(path):
        return result.relevance[path].sum(dim=(1, 2, 3))

    initial = result.initial.sum(dim=1)
    np.testing.assert_allclose(initial, 1 / 10, rtol=1e-12)  # contrastive: 1 - (K - 1) / K
    np.testing.assert_allclose(total("avgpool"), initial, rtol=1e-6)
    np.testing.assert_allclose(result.relevance["features.30"], result.relevance["avgpool"], rtol=1e-10, atol=1e-18)
    for path in convs:
        np.testing.assert_allclose(total(path), initial, rtol=1e-6)


def test_zplus_on_conv_and_linear_by_hand():
    model = nn.Sequential(nn.Identity(), nn.Conv2d(1, 1, 2), nn.Flatten(), nn.Linear(4, 3))
    conv_weight = np.array([[0.5, -1.0], [2.0, -0.25]])
    linear_weight = np.array([[1.0, -2.0, 0.5, 0.25], [-1.0, 0.5, 1.5, -0.5], [0.75, 1.0, -0.25, 2.0]])
    set_linear(model[1], conv_weight, [1.5])  # biases are ignored by z+: large ones prove it
    set_linear(model[3], linear_weight, [5.0, -3.0, 1.0])
    image = np.array([[1.0, -2.0, 0.5], [3.0, 0.25, -1.0], [-0.5, 2.0, 1.5]])

    def zplus(x, forward, transpose):
        """R_in = x+ W+^T (R / z) + x- W-^T (R / z), z = W+ x+ + W- x-."""
        def back(relevance, w):
            xp, xn, wp, wn = np.maximum(x, 0), np.minimum(x, 0), np.maximum(w, 0), np.minimum(w, 0)
            c = relevance / (forward(xp, wp) + forward(xn, wn))
            return xp * transpose(c, wp) + xn * transpose(c, wn)
        return back

    def conv(x, w):
        return np.array([[np.sum(x[i:i + 2, j:j + 2] * w) for j in range(2)] for i in range(2)])

    def conv_transpose(c, w):
        out = np.zeros((3, 3))
        for i in range(2):
            for j in range(2):
                out[i:i + 2, j:j + 2] += c[i, j] * w
        return out

    features = conv(image, conv_weight) + 1.5
    logits = linear_weight @ features.ravel() + [5.0, -3.0, 1.0]
    target = int(np.argmax(logits))
    at_features = zplus(features.ravel(), lambda x, w: w @ x, lambda c, w: w.T @ c)(
        contrastive(3, target), linear_weight).reshape(2, 2)
    at_image = zplus(image, conv, conv_transpose)(at_features, conv_weight)

    result = reference(model, torch.tensor(image).reshape(1, 1, 3, 3), ["0", "1"])
    assert result.classes.tolist() == [target]
    np.testing.assert_allclose(result.relevance["1"][0, 0], at_features, rtol=1e-6)
    np.testing.assert_allclose(result.relevance["0"][0, 0], at_image, rtol=1e-6)


def test_maxpool_routes_to_the_winners_and_overlapping_windows_add_up():
    model = nn.Sequential(nn.Identity(), nn.MaxPool2d(2, stride=1), nn.Flatten(), nn.Linear(9, 9, bias=False))
    set_linear(model[3], np.eye(9))  # z+ on a positive identity passes R unchanged: R_pool = R at the logits
    image = np.array([[1, 5, 2, 3], [4, 16, 6, 7], [8, 9, 15, 10], [11, 12, 13, 14]], dtype=float)
    seed = contrastive(9, target=8)

    expected = np.zeros((4, 4))
    for i in range(3):
        for j in range(3):
            p, q = np.unravel_index(np.argmax(image[i:i + 2, j:j + 2]), (2, 2))
            expected[i + p, j + q] += seed[3 * i + j]
    assert expected[1, 1] == pytest.approx(-4 / 9)  # the 16 wins four overlapping windows

    result = reference(model, torch.tensor(image).reshape(1, 1, 4, 4), ["0", "1"], targets=[8])
    np.testing.assert_allclose(result.relevance["1"].ravel(), seed, rtol=1e-6)
    np.testing.assert_allclose(result.relevance["0"][0, 0], expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("relu, normalized", [
    (False, [[0.6, 0.0], [1.0, 0.4]]),  # raw [[0.5, -1], [1.5, 0]], min -1, max 1.5
    (True, [[1 / 3, 0.0], [1.0, 0.0]]),  # ReLU first: [[0.5, 0], [1.5, 0]]
])
def test_rcam_head_by_hand(relu, normalized):
    activation = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]], dtype=torch.float64)
    relevance = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]], [[-4.0, 0.0], [-2.0, -2.0]]]], dtype=torch.float64)
    raw, upsampled = rcam_maps(activation, relevance, (4, 4), relu=relu)  # alpha = (0.5, -2)

    np.testing.assert_allclose(raw[0], [[0.5, -1.0], [1.5, 0.0]])  # the raw map is the signed one either way
    # Half-pixel bilinear 2 -> 4: output i samples input coordinate (i + 0.5) / 2 - 0.5, clamped to [0, 1].
    interpolation = np.array([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    np.testing.assert_allclose(upsampled[0], interpolation @ np.array(normalized) @ interpolation.T, atol=1e-12)


def test_rcam_head_of_a_constant_map_is_zero():
    raw, upsampled = rcam_maps(torch.ones(2, 3, 2, 2), torch.ones(2, 3, 2, 2), (5, 5))
    assert torch.all(raw == 3) and torch.all(upsampled == 0)


def test_epsilon_rule_on_linear_by_hand():
    model = nn.Sequential(nn.Identity(), nn.Flatten(), nn.Linear(4, 3))
    weight = np.array([[1.0, -2.0, 0.5, 0.25], [0.5, 0.25, 1.0, -1.0], [-1.0, 0.5, 2.0, 0.75]])
    bias = np.array([0.5, 2.5, -0.5])  # makes z[1] exactly 0: the stabiliser must take sign(0) = +1
    set_linear(model[2], weight, bias)
    x = np.array([1.0, -2.0, 0.5, 3.0])
    z = weight @ x + bias
    assert z[1] == 0

    seed = contrastive(3, target=2)
    expected = x * (weight.T @ (seed / stabilized(z)))
    result = reference(model, torch.tensor(x).reshape(1, 1, 2, 2), ["0"], targets=[2], composite="epsilon_plus")
    np.testing.assert_allclose(result.relevance["0"].ravel(), expected, rtol=1e-6)


class Residual(nn.Module):
    """Two channels of the input meet in an Add; an identity head passes R unchanged to the sum."""

    def __init__(self):
        super().__init__()
        self.left, self.right, self.add = nn.Identity(), nn.Identity(), zoo.Add()
        self.head = nn.Linear(4, 4, bias=False)
        set_linear(self.head, np.eye(4))

    def forward(self, x):
        return self.head(torch.flatten(self.add(self.left(x[:, :1]), self.right(x[:, 1:])), 1))


def test_add_splits_relevance_in_proportion():
    a = np.array([[3.0, -1.0], [0.5, 2.0]])
    b = np.array([[-1.0, 2.0], [0.5, 0.0]])
    seed = contrastive(4, target=1).reshape(2, 2)

    result = reference(Residual(), torch.tensor(np.stack([a, b]))[None], ["left", "right", "add"], targets=[1])
    np.testing.assert_allclose(result.relevance["add"][0, 0], seed, rtol=1e-6)
    np.testing.assert_allclose(result.relevance["left"][0, 0], a * seed / stabilized(a + b), rtol=1e-6)
    np.testing.assert_allclose(result.relevance["right"][0, 0], b * seed / stabilized(a + b), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("build, folded_pair", [
    (lambda: zoo.resnet18(width=1 / 8, num_classes=10), ("layer1.0.conv1", "layer1.0.bn1")),
    (lambda: zoo.vgg16(width=1 / 8, batch_norm=True, num_classes=10), ("features.7", "features.8")),
])
def test_batchnorm_folding_keeps_the_function_and_the_callers_model(build, folded_pair):
    model = zoo.randomize(build(), seed=1)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)

    result = reference(model, x, list(folded_pair))
    np.testing.assert_allclose(result.logits, logits, rtol=1e-5, atol=1e-5)
    conv, batchnorm = folded_pair  # after folding, the BN output is the folded conv's output
    np.testing.assert_array_equal(result.relevance[conv], result.relevance[batchnorm])
    assert all(torch.equal(value, state[name]) for name, value in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())
