"""Settings: the rules of each value, the choice lists every front end reads, the memory estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_unet_seg import config as cfg
from napari_unet_seg import memory
from napari_unet_seg.config import Rule, TrainConfig, check_keywords, check_value, shown
from napari_unet_seg.errors import UserError


@pytest.mark.parametrize("rule, value, expected", [
    (Rule("int", above=0), 3, 3), (Rule("int", above=0), 3.0, 3), (Rule("int", low=0), np.int64(2), 2),
    (Rule("float", above=0), 1, 1.0), (Rule("float", low=0, below=1), np.float32(0.5), 0.5),
    (Rule("flag"), np.bool_(True), True), (Rule("path"), __import__("pathlib").Path("a/b"), "a/b"),
    (Rule("int", optional=True), None, None), (Rule("device"), "cuda:1", "cuda:1"), (Rule("device"), "CPU", "CPU"),
    (Rule("choice", choices=("a", "b")), "b", "b"),
])
def test_accepted_values_come_back_normalized(rule, value, expected):
    got = check_value("x", value, rule)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("rule, value, message", [
    (Rule("int", above=0), "1", "x must be a whole number, got '1'"),
    (Rule("int", above=0), True, "x must be a whole number, got True"),
    (Rule("int", above=0), 2.5, "x must be a whole number, got 2.5"),
    (Rule("int", above=0), 0, "x must be > 0, got 0"),
    (Rule("int", low=8, unit="pixels"), 4, "x must be >= 8 pixels, got 4"),
    (Rule("int", low=0, high=9), 10, "x must be in [0, 9], got 10"),
    (Rule("float", above=0), math.inf, "x must be a finite number, got inf"),
    (Rule("float", low=0), math.nan, "x must be a finite number, got nan"),
    (Rule("float", low=0, below=1), 1.0, "x must be in [0, 1), got 1"),
    (Rule("float"), [1], "x must be a number, got [1]"),
    (Rule("flag"), "yes", "x must be true or false, got 'yes'"),
    (Rule("choice", choices=("a", "b")), "c", "x 'c' is unknown; use one of a, b"),
    (Rule("choice", choices=("a", "b")), 3, "x must be a name, got 3"),
    (Rule("device"), "tpu", "device 'tpu' is unknown; use auto, cuda, cuda:N, mps or cpu"),
    (Rule("path"), 5, "x must be a path, got 5"),
    (Rule("int"), None, "x needs a value"),
])
def test_refused_values_get_one_line_naming_them(rule, value, message):
    with pytest.raises(UserError) as info:
        check_value("x", value, rule)
    assert str(info.value) == message


def test_values_in_messages_are_cut_short():
    nested = [[list(range(1000))] * 1000] * 1000
    assert len(shown(nested)) < 100 and len(shown("x" * 10**6)) < 60
    assert "\n" not in shown(np.array([[None, 1], [2, 3]], dtype=object))  # an array's repr spans lines


def test_unknown_keywords_name_the_close_one_or_list_the_allowed():
    with pytest.raises(UserError, match=r"^train: unknown option 'batchsize'; did you mean 'batch_size'\?$"):
        check_keywords(["epochs", "batchsize"], ["epochs", "batch_size"], "train")
    with pytest.raises(UserError, match=r"unknown option 'zzz'; use one of epochs, batch_size$"):
        check_keywords(["zzz"], ["epochs", "batch_size"], "train")


def test_every_field_has_a_rule_and_defaults_pass_it():
    from dataclasses import fields

    assert set(cfg.TRAIN_RULES) == {f.name for f in fields(TrainConfig)}
    assert TrainConfig().validate(memory=False) == TrainConfig()


def test_choice_lists_are_the_ones_the_engine_and_the_parser_use():
    from napari_unet_seg import device, export, instances, losses, models, normalization
    from napari_unet_seg.cli import build_parser

    assert models.MODEL_NAMES is cfg.MODELS and losses.LOSS_NAMES is cfg.LOSSES
    assert normalization.NORMALIZATIONS is cfg.NORMALIZATIONS and device.DEVICES is cfg.DEVICES
    assert tuple(instances.INSTANCE_MODES) == cfg.INSTANCES and tuple(export.FORMATS) == cfg.EXPORT_FORMATS
    subparsers = build_parser()._subparsers._group_actions[0].choices
    choices = {a.dest: tuple(a.choices) for name in ("train", "predict", "export")
               for a in subparsers[name]._actions if a.choices}
    assert {k: choices[k] for k in ("model", "loss", "optimizer", "scheduler", "augment", "normalization")} == {
        "model": cfg.MODELS, "loss": cfg.LOSSES, "optimizer": cfg.OPTIMIZERS, "scheduler": cfg.SCHEDULERS,
        "augment": cfg.AUGMENTS, "normalization": cfg.NORMALIZATIONS}
    assert choices["instances"] == cfg.INSTANCES and choices["format"] == cfg.EXPORT_FORMATS


def test_precisions_are_the_ones_inference_takes():
    import torch

    from napari_unet_seg.inference import autocast_dtype

    for name in cfg.PRECISIONS:
        autocast_dtype(torch.device("cpu"), name)
    with pytest.raises(UserError):
        autocast_dtype(torch.device("cpu"), "fp8")


def test_check_options_refuses_typos_and_bad_values_but_allows_the_callers_extra_keywords():
    TrainConfig.check_options({"epochs": 2, "arrays": object()}, extra=("arrays",))
    with pytest.raises(UserError, match="did you mean 'epochs'"):
        TrainConfig.check_options({"epoch": 2})
    with pytest.raises(UserError, match="--lr must be a finite number"):
        TrainConfig.check_options({"lr": math.nan})


@pytest.mark.parametrize("name", cfg.MODELS)
def test_activation_table_matches_a_measurement(name):
    """The estimate's table, measured again with forward hooks at width 0.5 (within 25 %)."""
    import torch

    from napari_unet_seg.models import build_network, network_kwargs

    network = build_network(name, 1, 1, **network_kwargs(name, width=0.5)).train()
    total = []
    hooks = [m.register_forward_hook(lambda m, i, o: total.append(o.numel() if isinstance(o, torch.Tensor) else 0))
             for m in network.modules() if not list(m.children())]
    with torch.no_grad():
        network(torch.zeros(1, 1, 64, 64))
    for hook in hooks:
        hook.remove()
    measured = 4 * sum(total) / 64**2
    assert measured == pytest.approx(memory.ACTIVATION_BYTES[name] * 0.5, rel=0.25)


def test_memory_refusal_states_the_estimate_and_a_size_that_fits():
    config = TrainConfig(patch_size=4096, batch_size=8, device="cpu")
    batch, network = memory.training_bytes("unet", 1.0, 4096, 8)
    ram = (batch + network) // 2
    with pytest.raises(UserError) as info:
        memory.check_training_memory(config, ram=ram)
    text = str(info.value)
    assert f"needs about {memory.format_bytes(batch + network)} of RAM" in text
    fits = int(text.split("use --patch-size ")[1].split()[0])
    assert sum(memory.training_bytes("unet", 1.0, fits, 8)) <= 0.8 * ram
    assert sum(memory.training_bytes("unet", 1.0, fits + 16, 8)) > 0.8 * ram
    memory.check_training_memory(TrainConfig(patch_size=fits, batch_size=8, device="cpu"), ram=ram)


def test_on_a_gpu_the_activations_are_checked_against_gpu_memory():
    config = TrainConfig(resize=2048, batch_size=4, device="cuda")
    batch, network = memory.training_bytes("unet", 1.0, 2048, 4)
    memory.check_training_memory(config, ram=10 * batch, gpu=2 * network)  # fits
    with pytest.raises(UserError, match=r"--resize 2048 with --batch-size 4 needs about .* of GPU memory "
                                        r"\(network activations"):
        memory.check_training_memory(config, ram=10 * batch, gpu=network // 2)


def test_available_memory_is_read_from_the_system():
    ram = memory.available_ram()
    assert ram is None or ram > 0
    assert memory.available_gpu("cpu") is None
