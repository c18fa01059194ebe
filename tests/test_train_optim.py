"""Parameter groups (weight decay, layer-wise lr decay over pairs of blocks) and the lr schedule."""

import pytest

import vil
from vil.train.config import TrainConfig
from vil.train.optim import create_optimizer, create_scheduler, current_lr, paired_layer_id


def _model(depth=6):
    return vil.create_model("vil2_tiny_patch16_224", dim=32, depth=depth, img_size=32, num_classes=10)


def _groups_by_name(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: group for group in optimizer.param_groups for p in group["params"]}


def test_no_weight_decay_on_biases_norms_and_position_embedding():
    model = _model()
    by_name = _groups_by_name(model, create_optimizer(model, TrainConfig(weight_decay=0.05)))
    assert len(by_name) == len(list(model.parameters()))
    for name, param in model.named_parameters():
        expected = 0.0 if (param.ndim <= 1 or name == "pos_embed.embed") else 0.05
        assert by_name[name]["weight_decay"] == expected, name
    assert by_name["blocks.0.layer.proj_up.weight"]["weight_decay"] == 0.05
    assert by_name["blocks.0.norm.weight"]["weight_decay"] == 0.0


def test_layer_decay_counts_two_mlstm_blocks_per_layer_as_the_paper():
    depth, decay = 6, 0.5
    model = _model(depth)
    by_name = _groups_by_name(model, create_optimizer(model, TrainConfig(layer_decay=decay)))
    num_layers = depth // 2 + 2  # stem, 3 pairs, head
    assert paired_layer_id("blocks.5.layer.proj_up.weight", depth) == 3
    # the official rule (vislstm/optim/layerwise_lr_decay.py, group_two_blocks): stem decay^(pairs + 1), block i
    # decay^(pairs - i // 2), final norm and head 1
    for name, _ in model.named_parameters():
        if name.startswith("blocks."):
            expected = decay ** (depth // 2 - int(name.split(".")[1]) // 2)
        elif name.startswith(("patch_embed", "pos_embed")):
            expected = decay ** (num_layers - 1)
        else:
            expected = 1.0
        assert by_name[name]["lr_scale"] == pytest.approx(expected), name


def test_schedule_warms_up_linearly_then_decays_to_min_lr():
    model = _model(2)
    config = TrainConfig(epochs=10, warmup_epochs=2, batch_size=2048, lr=1e-3, warmup_lr=1e-6, min_lr=1e-6)
    optimizer = create_optimizer(model, config)
    scheduler = create_scheduler(optimizer, config, steps_per_epoch=10)
    lrs = []
    for step in range(100):
        scheduler.step_update(step)
        lrs.append(current_lr(optimizer))
    peak = config.scaled_lr()
    assert peak == pytest.approx(2e-3)
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[10] == pytest.approx(1e-6 + (peak - 1e-6) / 2)  # half-way through the warm-up
    assert lrs[20] == pytest.approx(peak)  # warm-up done: the cosine starts at the peak
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:], strict=False))
    assert lrs[-1] == pytest.approx(1e-6, abs=1e-6)
    scheduler.step_update(20)  # the lr depends on the step alone (resume needs no scheduler state)
    assert current_lr(optimizer) == pytest.approx(peak)
