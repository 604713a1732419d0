import warnings

import pytest
import torch
from torch import nn

from napari_unet_seg.fusion import fold_batch_norms, inference_network
from napari_unet_seg.models import MODEL_NAMES, build_network, network_kwargs


def _batch_norms(network: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in network.modules())


def _randomize_norms(network: nn.Module, seed: int = 0) -> None:
    """Batch-norm statistics and affine parameters far from identity, so that a wrong fold shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.BatchNorm2d) and module.running_mean is not None:
                module.running_mean.normal_(0.0, 0.3, generator=generator)
                module.running_var.uniform_(0.2, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.3, generator=generator)


def _network(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    network = build_network(name, 1, 2, **network_kwargs(name, width=0.25))
    _randomize_norms(network, seed)
    return network


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fused_copy_equals_the_network(name):
    network = _network(name).double().eval()
    fused = inference_network(network, "cpu")
    assert _batch_norms(network) > 0 and _batch_norms(fused) == 0  # every norm of ours follows a convolution
    x = torch.randn(2, 1, 48, 80, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, got = network(x), fused(x.contiguous(memory_format=torch.channels_last))
    assert expected.std() > 1e-3  # the output varies, so agreement means something
    # Folding is exact algebra; only the order of float64 roundings changes (~1e-16 relative per operation,
    # summed over a few hundred products per output and ~20 layers), so 1e-9 of the output's scale is ample.
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9 * expected.abs().max().item())


@pytest.mark.parametrize("name", ["unet", "segnet"])
def test_fused_copy_in_float32_keeps_the_output(name):
    network = _network(name).eval()
    fused = inference_network(network)
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected, got = network(x), fused(x)
    # float32 (eps 1.2e-7): rounding differences grow through the layers to ~1e-6 of the output's scale.
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_the_callers_network_is_unchanged():
    network = _network("unet").train()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    fused = inference_network(network, "cpu")
    assert network.training and not fused.training
    assert all(p.requires_grad for p in network.parameters())
    assert not any(p.requires_grad for p in fused.parameters())
    after = network.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.is_contiguous() for p in network.parameters())
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert _batch_norms(network) == 17


def test_a_network_without_batch_norm_passes_through():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1)).eval()
    fused = inference_network(network, channels_last=False)
    assert fused is not network and [type(m) for m in fused] == [type(m) for m in network]
    x = torch.randn(1, 1, 16, 16)
    with torch.inference_mode():
        assert torch.equal(fused(x), network(x))


class _SharedOutput(nn.Module):
    """A convolution whose output also bypasses the norm: folding would change the bypass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.norm(y) + y


def test_only_norms_fed_by_a_convolution_alone_are_folded():
    network = nn.Sequential(
        nn.BatchNorm2d(1), nn.Conv2d(1, 2, 3, padding=1),  # norm before the convolution: stays
        nn.Sequential(nn.BatchNorm2d(2), nn.ReLU()),  # the next block's first layer: folded
        _SharedOutput(),  # not a sequence: stays
        nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2, track_running_stats=False),  # no running statistics: stays
    )
    _randomize_norms(network)
    network.eval()
    fused = inference_network(network)
    assert isinstance(fused[2][0], nn.Identity)
    assert isinstance(fused[0], nn.BatchNorm2d) and isinstance(fused[3].norm, nn.BatchNorm2d)
    assert isinstance(fused[5], nn.BatchNorm2d)
    x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), network(x), rtol=1e-5, atol=1e-5)


def test_folding_needs_eval_mode():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))


def test_compile_falls_back_to_eager_when_it_fails(monkeypatch):
    def broken(network, **options):
        def call(*args, **kwargs):
            raise RuntimeError("no C++ compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    network = _network("segnet").eval()
    prepared = inference_network(network, compile=True)
    x = torch.randn(1, 1, 32, 32)
    with torch.inference_mode():
        with pytest.warns(UserWarning, match="torch.compile failed .*no C\\+\\+ compiler.*eagerly"):
            first = prepared(x)
        torch.testing.assert_close(first, network(x), rtol=1e-4, atol=1e-5)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once only
            torch.testing.assert_close(prepared(x), first, rtol=0, atol=0)


def _norms_3d(network: nn.Module) -> list[nn.BatchNorm3d]:
    return [m for m in network.modules() if isinstance(m, nn.BatchNorm3d)]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_folded_3d_network_equals_the_network(name):
    torch.manual_seed(0)
    network = build_network(name, 1, 2, **network_kwargs(name, width=0.125, spatial_dims=3)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for norm in _norms_3d(network):
            norm.running_mean.normal_(0.0, 0.3, generator=generator)
            norm.running_var.uniform_(0.2, 2.0, generator=generator)
            norm.weight.uniform_(0.5, 1.5, generator=generator)
    fused = inference_network(network, "cpu")
    assert _norms_3d(network) and not _norms_3d(fused)
    assert next(fused.parameters()).dim() == 5  # channels-last for volumes is NDHWC
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, got = network(x), fused(x.contiguous(memory_format=torch.channels_last_3d))
    assert expected.std() > 1e-3
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_a_transposed_3d_convolution_and_its_norm_are_folded():
    torch.manual_seed(0)
    network = nn.Sequential(nn.ConvTranspose3d(2, 3, 2, stride=2), nn.BatchNorm3d(3), nn.ReLU()).eval()
    with torch.no_grad():
        network[1].running_mean.normal_(0.0, 0.3)
        network[1].running_var.uniform_(0.2, 2.0)
        network[1].bias.normal_(0.0, 0.3)
    fused = inference_network(network, "cpu", channels_last=False)
    assert isinstance(fused[0], nn.ConvTranspose3d) and isinstance(fused[1], nn.Identity)
    x = torch.randn(2, 2, 4, 6, 8)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), network(x), rtol=1e-5, atol=1e-6)
