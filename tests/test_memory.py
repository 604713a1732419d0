"""The memory estimate of 3D training batches (the 2D one: tests/test_config.py)."""

import pytest

from napari_unet_seg import config as cfg
from napari_unet_seg import memory
from napari_unet_seg.config import TrainConfig
from napari_unet_seg.errors import UserError


@pytest.mark.parametrize("name", cfg.MODELS)
def test_3d_activation_table_matches_a_measurement(name):
    """The 3D table, measured again with forward hooks at width 0.5 on a 32³ input (within 25 %)."""
    import torch

    from napari_unet_seg.models import build_network, network_kwargs

    network = build_network(name, 1, 1, **network_kwargs(name, width=0.5, spatial_dims=3)).train()
    total = []
    hooks = [m.register_forward_hook(lambda m, i, o: total.append(o.numel() if isinstance(o, torch.Tensor) else 0))
             for m in network.modules() if not list(m.children())]
    with torch.no_grad():
        network(torch.zeros(1, 1, 32, 32, 32))
    for hook in hooks:
        hook.remove()
    assert 4 * sum(total) / 32**3 == pytest.approx(memory.ACTIVATION_BYTES_3D[name] * 0.5, rel=0.25)


def test_3d_patches_are_counted_per_voxel():
    batch, network = memory.training_bytes("unet", 1.0, 64, 2, shape=(32, 64, 64))
    flat_batch, _ = memory.training_bytes("unet", 1.0, 64, 2)
    assert batch == 32 * flat_batch  # 32 slices of 64²
    assert network == pytest.approx(2 * 32 * 64 * 64 * 1.3 * memory.ACTIVATION_BYTES_3D["unet"], rel=1e-6)
    config = TrainConfig(patch_size=64, batch_size=2, device="cpu")
    memory.check_training_memory(config, ram=10 * (batch + network), shape=(32, 64, 64))
    with pytest.raises(UserError, match=r"--patch-size 64 \(32x64x64 voxels\) with --batch-size 2 needs about "
                                        r".* use --patch-size (\d+) or less") as error:
        memory.check_training_memory(config, ram=(batch + network) // 4, shape=(32, 64, 64))
    fits = int(str(error.value).split("use --patch-size ")[1].split()[0])
    assert 16 <= fits < 64 and sum(memory.training_bytes("unet", 1.0, fits, 2, shape=(fits,) * 3)) <= (
        0.8 * (batch + network) // 4)
