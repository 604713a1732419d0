"""Device choice with torch's CUDA and MPS availability mocked: CPU-only, CUDA GPUs, Apple MPS."""

from __future__ import annotations

import pytest
import torch

from device_mocks import apple_mps, cpu_only, cuda_gpus
from napari_unet_seg.device import available_devices, describe_device, resolve_device, torch_build
from napari_unet_seg.errors import UserError


def names(devices):
    return [name for name, _ in devices]


def test_cpu_only_build(monkeypatch):
    cpu_only(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")
    assert torch_build() == "CPU-only"
    assert names(available_devices()) == ["auto", "cpu"]
    assert "no CUDA GPU (CPU-only torch build) and no MPS" in available_devices()[0][1]
    with pytest.raises(UserError, match=r"device 'cuda': this torch build .* has no CUDA support; install a CUDA "
                                        r"build of torch .*pip install torch --index-url"):
        resolve_device("cuda")
    with pytest.raises(UserError, match="device 'mps': MPS is Apple's GPU backend and exists only on Macs"):
        resolve_device("mps")


def test_cuda_build_without_a_visible_gpu(monkeypatch):
    cpu_only(monkeypatch)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert torch_build() == "CUDA 12.8"
    with pytest.raises(UserError, match="built for CUDA 12.8 but finds no GPU; check that `nvidia-smi`"):
        resolve_device("cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UserError, match="CUDA_VISIBLE_DEVICES='' hides every GPU; unset it"):
        resolve_device("cuda:0")


def test_cuda_gpus(monkeypatch):
    cuda_gpus(monkeypatch, count=2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("CUDA:1") == torch.device("cuda:1")
    with pytest.raises(UserError, match=r"torch sees 2 GPU\(s\), numbered cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    devices = available_devices()
    assert names(devices) == ["auto", "cuda:0", "cuda:1", "cpu"]
    assert devices[0][1].startswith("picks cuda:0 (NVIDIA Fake, 80.0 GiB, compute capability 9.0)")
    assert describe_device("cuda:1") == "cuda:1 (NVIDIA Fake, 80.0 GiB, compute capability 9.0)"


def test_one_gpu_is_listed_as_cuda(monkeypatch):
    cuda_gpus(monkeypatch, count=1)
    assert names(available_devices()) == ["auto", "cuda", "cpu"]


def test_apple_mps(monkeypatch):
    apple_mps(monkeypatch)
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device("mps") == torch.device("mps")
    assert names(available_devices()) == ["auto", "mps", "cpu"]
    assert available_devices()[0][1].startswith("picks mps (Apple GPU): no CUDA GPU")
    with pytest.raises(UserError, match="has no CUDA support"):
        resolve_device("cuda")


def test_cuda_wins_over_mps(monkeypatch):
    cuda_gpus(monkeypatch, count=1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_mac_without_mps_build(monkeypatch):
    apple_mps(monkeypatch)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="has no MPS support; on Apple Silicon install torch for macOS arm64"):
        resolve_device("mps")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "tpu", ""])
def test_unknown_device(name):
    with pytest.raises(UserError, match="is unknown; use auto, cuda, cuda:N, mps or cpu"):
        resolve_device(name)


def test_describe_cpu():
    assert describe_device(torch.device("cpu")) == f"cpu ({torch.get_num_threads()} threads)"


def test_jobs_beside_the_ui_leave_it_a_core(monkeypatch):
    import torch

    from napari_unet_seg import device

    before = torch.get_num_threads()
    try:
        for name in device.THREAD_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setattr(device, "physical_cores", lambda: 4)
        assert device.threads_beside_ui() == 3 == torch.get_num_threads()
        monkeypatch.setattr(device, "physical_cores", lambda: 1)
        assert device.threads_beside_ui() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own setting is left alone
        torch.set_num_threads(2)
        monkeypatch.setattr(device, "physical_cores", lambda: 8)
        assert device.threads_beside_ui() == 2
    finally:
        torch.set_num_threads(before)


def test_physical_cores_is_a_positive_count_or_unknown():
    from napari_unet_seg.device import physical_cores

    cores = physical_cores()
    assert cores is None or 1 <= cores <= (__import__("os").cpu_count() or cores)
