"""Test helper: write our models in the official formats, by an inverse mapping written independently of
vil.weights.convert.

- ``to_training_checkpoint``: the released file format (``state_dict`` in the training code's names + ``ctor_kwargs``),
  for every block design and pooling (the training code has all of them).
- ``to_official_module_state_dict``: a plain state dict of the standalone ``VisionLSTM`` (v1) / ``VisionLSTM2`` (v2)
  modules (alternating design only, as those modules).
- ``official_hub_remap``: the official torch.hub's renaming of a released file to the standalone modules, following
  docs/design.md §5, to check the module layout against the golden fixtures.
"""

from __future__ import annotations

import re

import torch

from vil import ViLConfig, VisionLSTM

# our branch index -> training-code suffix (row forward, row reversed, column forward, column reversed)
_SUFFIX = {0: "", 1: "_rev", 2: "_du", 3: "_ud"}

# our block design -> the training code's constructor flags
_DESIGN_FLAGS = {
    "alternating": dict(alternation="bidirectional", bidirectional=False),
    "unidirectional": dict(alternation=None, bidirectional=False),
    "bidirectional": dict(alternation=None, bidirectional=True),
    "bidirectional_shared": dict(alternation=None, bidirectional=True, sharedirs=True),
    "quad": dict(alternation=None, quaddirectional=True),
    "quad_shared": dict(alternation=None, quaddirectional=True, sharedirs=True),
    "quad_alternating": dict(alternation="quaddirectional"),
}

# our pooling -> the training code's pooling config (middle_cls is a [CLS] token instead)
_POOLING = {
    "bilateral_concat": {"kind": "bilateral", "aggregate": "flatten"},
    "bilateral_avg": {"kind": "bilateral", "aggregate": "mean"},
    "mean": {"kind": "mean_patch"},
    "middle_patch": {"kind": "middle_tokens", "num_tokens": 1},
    "last": {"kind": "last_token"},
}


def _scalar_or_pair(pair):
    return pair[0] if pair[0] == pair[1] else list(pair)


def training_ctor_kwargs(config: ViLConfig) -> dict:
    """What the training code records as ``ctor_kwargs`` for a model of ``config``."""
    kwargs = dict(
        kind="models.single.vislstm",
        patch_size=_scalar_or_pair(config.patch_size),
        dim=config.dim,
        depth=config.depth,
        pos_embed_mode="learnable",
        mode="classifier" if config.num_classes else "features",
        bias=config.bias,
        conv1d_kernel_size=config.conv_kernel_size,
        use_conv2d=config.conv_kind == "2d",
        proj_factor=float(config.expansion),
        **_DESIGN_FLAGS[config.block_design],
    )
    if config.patch_stride != config.patch_size:
        kwargs["stride"] = _scalar_or_pair(config.patch_stride)
    if config.pooling == "middle_cls":
        kwargs["cls_tokens"] = dict(num_tokens=1, location="middle")
    else:
        kwargs["pooling"] = _POOLING[config.pooling]
    return kwargs


def training_name(key: str) -> str:
    """One of our keys -> the training code's name."""
    if key == "cls_token":
        return "cls_tokens.tokens"
    for ours, theirs in (("norm.", "xlstm.post_blocks_norm."), ("fc_norm.", "head.0."), ("head.", "head.1.")):
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if match is None:
        return key  # patch_embed.*, pos_embed.embed
    block, rest = match.groups()
    if rest.startswith("norm."):
        return f"xlstm.blocks.{block}.xlstm_norm.{rest[len('norm.') :]}"
    branch = re.fullmatch(r"layer\.branches\.(\d+)\.(\w+)(.*)", rest)
    if branch is not None:
        index, module, tail = branch.groups()
        module = "conv1d" if module == "conv" else module
        return f"xlstm.blocks.{block}.xlstm.{module}{_SUFFIX[int(index)]}{tail}"
    assert rest.startswith("layer."), key
    return f"xlstm.blocks.{block}.xlstm.{rest[len('layer.') :]}"


def to_training_checkpoint(model: VisionLSTM) -> dict:
    """The released file format of ``model``: what ``torch.save`` wrote in the official training code."""
    state_dict = {training_name(key): value.clone() for key, value in model.state_dict().items()}
    return dict(
        state_dict=state_dict,
        ctor_kwargs=training_ctor_kwargs(model.config),
        ckpt=dict(epoch=1, update=10, sample=100),
        abs_ckpt=dict(epoch=1, update=10, sample=100),
        stage_id="test",
    )


def to_official_module_state_dict(model: VisionLSTM) -> dict:
    """``model`` as a state dict of the standalone VisionLSTM (v1) or VisionLSTM2 (v2) module."""
    config = model.config
    assert config.block_design == "alternating", "the standalone modules only have the alternating design"
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("norm."):  # the norm over all tokens
            key = ("norm." if config.version == 2 else "legacy_norm.") + key[len("norm.") :]
        elif key.startswith("fc_norm."):  # the LayerNorm after pooling
            key = ("legacy_norm." if config.version == 2 else "norm.") + key[len("fc_norm.") :]
        elif match := re.fullmatch(r"blocks\.(\d+)\.(.+)", key):
            block, rest = int(match.group(1)), match.group(2).replace("layer.branches.0.", "layer.")
            if config.version == 1:  # VisionLSTM calls its conv "conv1d", VisionLSTM2 "conv"
                rest = rest.replace("layer.conv.", "layer.conv1d.")
            if config.version == 2:
                direction = "rowwise_from_top_left" if block % 2 == 0 else "rowwise_from_bot_right"
                key = f"blocks.{block // 2}.{direction}.{rest}"
            else:
                key = f"blocks.{block}.{rest}"
        out[key] = value.clone()
    return out


def official_hub_remap(state_dict: dict, version: int) -> dict:
    """The official hub's renaming of a released file (training names) to the standalone modules (docs/design.md §5)."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace(".xlstm.", ".layer.").replace(".xlstm_norm.", ".norm.")
        key = key.removeprefix("xlstm.")
        if version == 2:
            key = key.replace(".conv1d.", ".conv.")
            if match := re.fullmatch(r"blocks\.(\d+)\.(.+)", key):
                block = int(match.group(1))
                direction = "rowwise_from_top_left" if block % 2 == 0 else "rowwise_from_bot_right"
                key = f"blocks.{block // 2}.{direction}.{match.group(2)}"
        out[key] = value
    final = {
        2: {"post_blocks_norm.": "norm.", "head.0.": "legacy_norm.", "head.1.": "head."},
        1: {"post_blocks_norm.": "legacy_norm.", "head.0.": "norm.", "head.1.": "head."},
    }[version]
    renamed = {}
    for key, value in out.items():
        for old, new in final.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key] = value
    return renamed


def randomize_(model: VisionLSTM, seed: int = 0) -> VisionLSTM:
    """Give every tensor distinct random values: the initialisation leaves many equal (norm weights 0, skips 1), which
    would hide a mix-up of two tensors in a mapping.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
    return model
