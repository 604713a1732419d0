import pytest
import torch

from napari_unet_seg.errors import UserError
from napari_unet_seg.models import MODEL_NAMES, build_network, network_kwargs, pooling_strides
from napari_unet_seg.models.segnet import SegNet

SMALL = 0.25  # width multiplier that keeps the shape tests fast


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("in_channels, out_channels, size", [
    (1, 1, (64, 64)), (3, 1, (64, 64)), (1, 3, (37, 50)), (3, 4, (33, 17)), (1, 1, (5, 7)),
])
def test_output_shape(name, in_channels, out_channels, size):
    net = build_network(name, in_channels, out_channels, **network_kwargs(name, width=SMALL)).eval()
    with torch.no_grad():
        out = net(torch.rand(2, in_channels, *size))
    assert out.shape == (2, out_channels, *size)
    assert torch.isfinite(out).all()


def test_segnet_is_vgg16_bn():
    net = SegNet(3, 1)
    convs = [m for m in net.encoders.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13 and [c.out_channels for c in convs][::3] == [64, 128, 256, 512, 512]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.encoders.modules()) == 13
    assert isinstance(net.unpools[0], torch.nn.MaxUnpool2d)


def test_segnet_upsamples_with_pooling_indices():
    # The unpooling puts each value back where the encoder's max was: a single bright pixel in a
    # constant field comes back at its own location after pool/unpool.
    net = SegNet(1, 1, features=(4,), blocks=(1,))
    x = torch.zeros(1, 4, 8, 8)
    x[0, :, 5, 2] = 1.0
    pooled, index = net.pools[0](x)
    restored = net.unpools[0](pooled, index, output_size=x.shape)
    assert torch.equal(restored, x)


def test_width_changes_size_and_kwargs_rebuild():
    small = network_kwargs("segnet", width=0.5)
    assert small["features"] == [32, 64, 128, 256, 256]
    net = build_network("segnet", 1, 1, **small)
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in SegNet(1, 1).parameters()) / 3


def test_unknown_model_and_bad_args():
    with pytest.raises(UserError, match="model 'vnet' is unknown"):
        network_kwargs("vnet")
    with pytest.raises(ValueError):
        SegNet(0, 1)
    with pytest.raises(ValueError):
        SegNet(1, 1, features=(8, 16), blocks=(2,))


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape", [(9, 37, 20), (16, 32, 32), (3, 5, 70)])
def test_3d_networks_keep_any_volume_shape(name, shape):
    net = build_network(name, 1, 2, **network_kwargs(name, width=0.125, spatial_dims=3)).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, *shape)).shape == (1, 2, *shape)


@pytest.mark.parametrize("name", ["unet", "attention_unet", "segnet"])
def test_3d_networks_pool_the_coarse_axis_later(name):
    # Sections 2.2 times thicker than the pixels: no pooling along z at the first level (nnU-Net's rule).
    kwargs = network_kwargs(name, width=0.125, spatial_dims=3, spacing=(2.2, 1.0, 1.0))
    assert kwargs["strides"][0] == [1, 2, 2] and kwargs["strides"][1] == [2, 2, 2]
    net = build_network(name, 1, 1, **kwargs).eval()
    assert net.multiples[0] * 2 == net.multiples[1]
    with torch.no_grad():
        assert net(torch.rand(1, 1, 5, 33, 40)).shape == (1, 1, 5, 33, 40)


def test_pooling_strides_follow_the_spacing():
    assert pooling_strides((1.0, 1.0, 1.0), 2) == [[2, 2, 2], [2, 2, 2]]
    assert pooling_strides((50.0, 4.0, 4.0), 4) == [[1, 2, 2], [1, 2, 2], [1, 2, 2], [2, 2, 2]]


def test_basic_unet_refuses_anisotropic_voxels_in_one_line():
    with pytest.raises(UserError, match="basic_unet pools every axis alike.*--model unet"):
        network_kwargs("basic_unet", spatial_dims=3, spacing=(50, 4, 4))


def test_spacing_must_have_one_value_per_axis():
    with pytest.raises(UserError, match="one per axis"):
        network_kwargs("unet", spatial_dims=3, spacing=(4, 4))
