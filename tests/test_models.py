"""Every registered model: input/output contract, named groups, normalisation inside."""
import pytest
import torch

from core.models import MODELS, build_model, count_parameters


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape_and_groups(name):
    model = build_model(name).eval()
    for n in (1, 7):
        out = model(torch.rand(n, 1, 28, 28))
        assert out.shape == (n, 10) and out.dtype == torch.float32
    names = model.group_names
    assert names[-1] == "head" and len(names) >= 2
    # groups cover every parameter, so freezing by group can reach all of them
    assert sum(count_parameters(g) for g in model.groups.values()) == count_parameters(model)


def test_classic_is_the_seeds_cnn():
    m = build_model("classic")
    assert count_parameters(m) == 1_199_882  # pytorch/examples' MNIST Net
    convs = [l for l in m.modules() if isinstance(l, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 32, (3, 3)), (32, 64, (3, 3))]
    assert build_model("mlp") and count_parameters(build_model("mlp")) == 784 * 128 + 128 + 128 * 10 + 10


def test_normalisation_is_inside_the_model():
    m = build_model("mlp").eval()
    # state_dict has no mean/std: they are constants of the architecture, not weights
    assert not any("mean" in k or "std" in k for k in m.state_dict())
    x = torch.rand(2, 1, 28, 28)
    manual = m.groups["head"](m.groups["hidden"]((x - 0.1307) / 0.3081))
    assert torch.allclose(m(x), manual)


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet")
