"""Official Vision-LSTM checkpoints -> our state-dict names and a ViLConfig. Pure functions: no files, no network.

Four naming schemes ("layouts") of ViL weights exist:

- ``training``: the training code that wrote the released files (``xlstm.blocks.{i}.xlstm.q_proj.weight``;
  the extra traversal directions of the bidirectional and quad designs are sub-modules with the suffixes
  ``_rev`` (row-wise reversed), ``_du`` (column-wise) and ``_ud`` (column-wise reversed); ``head.0`` is the
  LayerNorm after pooling, ``head.1`` the classifier). The released files wrap it in a dict with ``ctor_kwargs``.
- ``official_v2``: the standalone ``VisionLSTM2`` module, whose blocks come in pairs
  (``blocks.{j}.rowwise_from_top_left.*`` is our block 2j, ``blocks.{j}.rowwise_from_bot_right.*`` block 2j+1).
- ``official_v1``: the standalone ``VisionLSTM`` module (``blocks.{i}.layer.q_proj.weight``, ``layer.conv1d.conv``;
  its ``legacy_norm`` is the norm over all tokens and its ``norm`` the LayerNorm after pooling).
- ``vil``: ours (``blocks.{i}.layer.branches.{b}.q_proj.weight``), taken as is.

The architecture is read from the tensors (width, depth, patch, generation, number of classes, pooled width,
number of traversal branches) and from the ``ctor_kwargs`` of the official file format for what no tensor shows
(patch stride, traversal order, pooling among designs of equal width). What had to be assumed is reported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..layers.pooling import POOLINGS, pooled_dim
from ..layers.traversal import block_traversals
from ..models.config import ViLConfig
from .errors import CheckpointError

TRAINING = "training"
OFFICIAL_V2 = "official_v2"
OFFICIAL_V1 = "official_v1"
VIL = "vil"
LAYOUTS = (TRAINING, OFFICIAL_V2, OFFICIAL_V1, VIL)

# Sub-modules that each traversal branch owns, by their official name -> ours.
_BRANCH_MODULES = {
    "conv1d": "conv",  # training code and the standalone VisionLSTM (v1)
    "conv": "conv",  # the standalone VisionLSTM2
    "q_proj": "q_proj",
    "k_proj": "k_proj",
    "v_proj": "v_proj",
    "mlstm_cell": "mlstm_cell",
    "learnable_skip": "learnable_skip",
}
# Training-code suffix of a traversal direction -> our branch index (row fwd, row rev, column fwd, column rev).
_TRAINING_DIRECTIONS = {"": 0, "_rev": 1, "_du": 2, "_ud": 3}

_TRAINING_BLOCK = re.compile(r"^xlstm\.blocks\.(\d+)\.(.+)$")
_TRAINING_BRANCH = re.compile(r"^(conv1d|q_proj|k_proj|v_proj|mlstm_cell|learnable_skip)(_rev|_du|_ud)?(\..+)?$")
_OFFICIAL_V2_BLOCK = re.compile(r"^blocks\.(\d+)\.(rowwise_from_top_left|rowwise_from_bot_right)\.(.+)$")
_OFFICIAL_BRANCH = re.compile(r"^(conv1d|conv|q_proj|k_proj|v_proj|mlstm_cell|learnable_skip)(\..+)?$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_BRANCH = re.compile(r"^blocks\.(\d+)\.layer\.branches\.(\d+)\.")


@dataclass(frozen=True)
class ConvertedCheckpoint:
    """ViL weights in our names with the architecture they were read as."""

    state_dict: dict[str, torch.Tensor]
    config: ViLConfig
    layout: str  # the naming scheme found (see LAYOUTS)
    assumptions: dict[str, str] = field(default_factory=dict)  # config field -> why it had to be assumed


def convert_checkpoint(checkpoint, source: str = "checkpoint") -> ConvertedCheckpoint:
    """Any ViL checkpoint object (the official file format, or a plain state dict in any layout) -> our weights.

    ``source`` names the checkpoint in error messages (a file name or URL).
    """
    state_dict, ctor_kwargs = split_checkpoint(checkpoint, source)
    ours, layout = to_vil_names(state_dict, source)
    config, assumptions = infer_config(ours, ctor_kwargs, layout, source)
    return ConvertedCheckpoint(ours, config, layout, assumptions)


def to_vil_names(state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> tuple[dict, str]:
    """A state dict in any ViL layout -> (the same tensors in our names, the layout found)."""
    layout = detect_layout(state_dict)
    if layout is None:
        raise CheckpointError(f"{source} is not a Vision-LSTM checkpoint: {_describe_foreign_keys(state_dict)}")
    return map_keys(state_dict, layout, source), layout


def split_checkpoint(checkpoint, source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict | None]:
    """The official file format ({"state_dict", "ctor_kwargs", ...}) or a plain state dict -> (tensors, ctor_kwargs)."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"{source} does not hold a state dict: it holds a {type(checkpoint).__name__}, expected a dict of tensors "
            "or the official format (a dict with 'state_dict' and 'ctor_kwargs')"
        )
    ctor_kwargs = None
    if "state_dict" in checkpoint:
        ctor_kwargs = checkpoint.get("ctor_kwargs")
        if ctor_kwargs is not None and not isinstance(ctor_kwargs, Mapping):
            raise CheckpointError(f"{source}: 'ctor_kwargs' must be a dict, got a {type(ctor_kwargs).__name__}")
        checkpoint = checkpoint["state_dict"]
        if not isinstance(checkpoint, Mapping):
            raise CheckpointError(
                f"{source}: 'state_dict' must be a dict of tensors, got a {type(checkpoint).__name__}"
            )
    not_tensors = [key for key, value in checkpoint.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{source} is not a state dict: {_key_list(not_tensors)} are not tensors (top-level keys: "
            f"{_key_list(list(checkpoint))})"
        )
    if not checkpoint:
        raise CheckpointError(f"{source} holds an empty state dict")
    return dict(checkpoint), dict(ctor_kwargs) if ctor_kwargs is not None else None


def detect_layout(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Which naming scheme the keys follow (one of LAYOUTS), or None for something that is not a ViL."""
    keys = list(state_dict)
    if any(_TRAINING_BLOCK.match(key) for key in keys):
        return TRAINING
    if any(_OFFICIAL_V2_BLOCK.match(key) for key in keys):
        return OFFICIAL_V2
    if any(_BRANCH.match(key) for key in keys):
        return VIL
    if any(re.match(r"^blocks\.\d+\.layer\.(q_proj|mlstm_cell|proj_up)\.", key) for key in keys):
        return OFFICIAL_V1
    return None


# ----------------------------------------------------------------------------------------------------------------
# key mapping


def map_keys(state_dict: Mapping[str, torch.Tensor], layout: str, source: str = "checkpoint") -> dict:
    """Rename the keys of a state dict in ``layout`` to ours. Keys that have no counterpart are kept as they are,
    so that loading lists them as unexpected; legacy buffers (the training code's causal masks) are dropped.
    """
    rename = {TRAINING: training_key_to_vil, OFFICIAL_V2: official_v2_key_to_vil, OFFICIAL_V1: official_v1_key_to_vil}
    if layout == VIL:
        return dict(state_dict)
    if layout not in rename:
        raise ValueError(f"unknown layout {layout!r}; expected one of {list(LAYOUTS)}")
    mapped = {}
    for key, value in state_dict.items():
        new_key = rename[layout](key)
        if new_key is None:
            continue
        if new_key in mapped:
            raise CheckpointError(f"{source}: two keys map to {new_key!r} (the second is {key!r})")
        mapped[new_key] = value
    return mapped


def training_key_to_vil(key: str) -> str | None:
    """One key of the training code -> ours (None: a legacy buffer to drop)."""
    if key.endswith("causal_mask"):
        return None  # non-persistent in later versions of the training code; older files still carry it
    if key == "cls_tokens.tokens":
        return "cls_token"
    for prefix, ours in (("xlstm.post_blocks_norm.", "norm."), ("head.0.", "fc_norm."), ("head.1.", "head.")):
        if key.startswith(prefix):
            return ours + key[len(prefix) :]
    match = _TRAINING_BLOCK.match(key)
    if match is None:
        return key
    index, rest = match.groups()
    if rest.startswith("xlstm_norm."):
        return f"blocks.{index}.norm.{rest[len('xlstm_norm.') :]}"
    if not rest.startswith("xlstm."):
        return key
    inner = rest[len("xlstm.") :]
    if inner.startswith(("proj_up.", "proj_down.")):
        return f"blocks.{index}.layer.{inner}"
    branch = _TRAINING_BRANCH.match(inner)
    if branch is None:
        return key
    module, direction, tail = branch.groups()
    return (
        f"blocks.{index}.layer.branches.{_TRAINING_DIRECTIONS[direction or '']}.{_BRANCH_MODULES[module]}{tail or ''}"
    )


def official_v2_key_to_vil(key: str) -> str:
    """One key of the official VisionLSTM2 module -> ours (its block pairs become two of our blocks)."""
    match = _OFFICIAL_V2_BLOCK.match(key)
    if match is not None:
        pair, direction, rest = match.groups()
        index = 2 * int(pair) + (direction == "rowwise_from_bot_right")
        return f"blocks.{index}.{_official_block_rest(rest)}"
    if key.startswith("legacy_norm."):
        return "fc_norm." + key[len("legacy_norm.") :]
    return key  # patch_embed, pos_embed, norm (over all tokens), head: same names


def official_v1_key_to_vil(key: str) -> str:
    """One key of the official VisionLSTM (v1) module -> ours (its two final norms swap names)."""
    match = _BLOCK.match(key)
    if match is not None:
        index, rest = match.groups()
        return f"blocks.{index}.{_official_block_rest(rest)}"
    if key.startswith("legacy_norm."):
        return "norm." + key[len("legacy_norm.") :]
    if key.startswith("norm."):
        return "fc_norm." + key[len("norm.") :]
    return key


def _official_block_rest(rest: str) -> str:
    """Inside one block of the standalone modules: the per-direction sub-modules move into branch 0."""
    if rest.startswith("layer."):
        branch = _OFFICIAL_BRANCH.match(rest[len("layer.") :])
        if branch is not None:
            module, tail = branch.groups()
            return f"layer.branches.0.{_BRANCH_MODULES[module]}{tail or ''}"
    return rest


# ----------------------------------------------------------------------------------------------------------------
# architecture inference


def infer_config(
    state_dict: Mapping[str, torch.Tensor],
    ctor_kwargs: Mapping | None = None,
    layout: str = VIL,
    source: str = "checkpoint",
) -> tuple[ViLConfig, dict[str, str]]:
    """The ViLConfig of a state dict in our names, and the fields that had to be assumed (field -> reason).

    Tensors give: width, depth, patch size, input channels, generation (module layout, else conv rank), biases,
    inner width, heads, headwise block size, conv kernel, image size (position-embedding grid x patch), classes (0
    without a head), pooled width, [CLS] token and the number of traversal branches. ``ctor_kwargs`` give the patch
    stride, the traversal design and the pooling design; without them the stride is the patch size, one branch per
    block is read as the alternating design and a pooled width of D as bilateral averaging.
    """
    assumptions: dict[str, str] = {}
    _check_final_norms(state_dict, source)
    patch = _require(state_dict, "patch_embed.proj.weight", 4, source)  # (D, C, ph, pw)
    dim, in_chans, *patch_size = patch.shape
    pos_embed = _require(state_dict, "pos_embed.embed", 4, source)  # (1, h, w, D)
    grid = tuple(pos_embed.shape[1:3])
    depth = _count_blocks(state_dict, source)
    proj_up = _require(state_dict, "blocks.0.layer.proj_up.weight", 2, source)  # (2E, D)
    inner_dim = proj_up.shape[0] // 2
    if proj_up.shape[1] != dim or inner_dim % dim:
        raise CheckpointError(f"{source}: proj_up of shape {tuple(proj_up.shape)} does not fit width {dim}")
    conv_kind, conv_kernel_size = _conv(state_dict, source)
    ctor = dict(ctor_kwargs or {})
    version = _generation(layout, conv_kind)
    pooling = _infer_pooling(state_dict, ctor, dim, version, assumptions, source)
    values = dict(
        version=version,
        dim=dim,
        depth=depth,
        img_size=(grid[0] * patch_size[0], grid[1] * patch_size[1]),
        patch_size=tuple(patch_size),
        patch_stride=_stride(ctor, source),
        in_chans=in_chans,
        num_classes=state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0,
        block_design=_infer_block_design(state_dict, ctor, layout, depth, assumptions, source),
        pooling=pooling,
        expansion=inner_dim // dim,
        num_heads=_require(state_dict, "blocks.0.layer.branches.0.mlstm_cell.igate.weight", 2, source).shape[0],
        qkv_block_size=_require(state_dict, "blocks.0.layer.branches.0.q_proj.weight", 3, source).shape[-1],
        conv_kind=conv_kind,
        conv_kernel_size=conv_kernel_size,
        bias="blocks.0.layer.proj_up.bias" in state_dict,
    )
    if ctor_kwargs is None:  # the training code's default stride (None) is the patch size, as ours
        assumptions["patch_stride"] = "patch stride = patch size assumed (no ctor_kwargs record it, no tensor shows it)"
    try:
        return ViLConfig(**values), assumptions
    except ValueError as error:
        raise CheckpointError(f"{source}: the architecture read from the tensors is not valid: {error}") from error


def _require(state_dict: Mapping[str, torch.Tensor], key: str, ndim: int, source: str) -> torch.Tensor:
    if key not in state_dict:
        raise CheckpointError(f"{source} has no tensor {key!r} (after renaming to our names): not a complete ViL")
    tensor = state_dict[key]
    if tensor.ndim != ndim:
        raise CheckpointError(f"{source}: {key!r} has shape {tuple(tensor.shape)}, expected {ndim} dimensions")
    return tensor


def _check_final_norms(state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Our model always has the norm over all tokens and the LayerNorm after pooling; a missing one cannot be
    replaced by a fresh one without changing the outputs (except the LayerNorm of a model without a head).
    """
    if "norm.weight" not in state_dict:
        raise CheckpointError(
            f"{source} has no norm over all tokens after the blocks (official legacy_norm=False or training "
            "add_post_blocks_norm=False): vil's ViL always has it, so these weights cannot reproduce that model"
        )
    if "head.weight" in state_dict and "fc_norm.weight" not in state_dict:
        raise CheckpointError(
            f"{source} has a head without a LayerNorm before it (official legacy_norm=False or training "
            "add_pre_head_norm=False): vil's ViL always has it, so these weights cannot reproduce that model"
        )


def _count_blocks(state_dict: Mapping[str, torch.Tensor], source: str) -> int:
    indices = sorted({int(m.group(1)) for key in state_dict if (m := _BLOCK.match(key))})
    if indices != list(range(len(indices))) or not indices:
        raise CheckpointError(f"{source}: the block indices {indices} are not 0 .. n-1")
    return len(indices)


def _conv(state_dict: Mapping[str, torch.Tensor], source: str) -> tuple[str, int]:
    """v2: depthwise Conv2d, weight (E, 1, k, k); v1: causal Conv1d wrapped in ``.conv``, weight (E, 1, k)."""
    conv2d = state_dict.get("blocks.0.layer.branches.0.conv.weight")
    conv1d = state_dict.get("blocks.0.layer.branches.0.conv.conv.weight")
    if conv2d is not None and conv2d.ndim == 4 and conv2d.shape[-1] == conv2d.shape[-2]:
        return "2d", conv2d.shape[-1]
    if conv1d is not None and conv1d.ndim == 3:
        return "causal1d", conv1d.shape[-1]
    raise CheckpointError(
        f"{source}: block 0 has no depthwise conv weight of shape (E, 1, k, k) (conv2d) or (E, 1, k) (causal conv1d)"
    )


def _generation(layout: str, conv_kind: str) -> int:
    """The module class decides the generation (and with it the eps of the final norms); otherwise the conv does:
    VisionLSTM2 / the training code's use_conv2d have the 2-D conv, VisionLSTM and the training default the 1-D one.
    """
    if layout in (OFFICIAL_V1, OFFICIAL_V2):
        return 2 if layout == OFFICIAL_V2 else 1
    return 2 if conv_kind == "2d" else 1


def _stride(ctor: dict, source: str) -> int | tuple[int, int] | None:
    stride = ctor.get("stride")
    if stride is None or isinstance(stride, int):
        return stride
    if isinstance(stride, list | tuple) and len(stride) == 2:
        return tuple(stride)
    raise CheckpointError(f"{source}: ctor_kwargs stride {stride!r} is not an int or a pair")


# official pooling names (VisionLSTM/VisionLSTM2 strings, training-code pooling kinds) -> ours; None: no pooling
# recorded ("to_image" is the feature-extractor mode of VisionLSTM2, which has no head)
_POOLING_STRINGS = {"bilateral_flatten": "bilateral_concat", "bilateral_avg": "bilateral_avg", "to_image": None}
_POOLING_KINDS = {"mean_patch": "mean", "mean_all": "mean", "last_token": "last"}
_BILATERAL_AGGREGATES = {"flatten": "bilateral_concat", "mean": "bilateral_avg"}


def _infer_pooling(state_dict, ctor: dict, dim: int, version: int, assumptions: dict, source: str) -> str:
    has_cls = "cls_token" in state_dict
    if has_cls:
        location = (ctor.get("cls_tokens") or {}).get("location", "middle")
        if location != "middle" or state_dict["cls_token"].shape[:2] != (1, 1):
            raise CheckpointError(f"{source}: only one [CLS] token in the middle is supported (location {location!r})")
        pooling = "middle_cls"
    elif ctor.get("pooling") is not None:
        pooling = _pooling_from_ctor(ctor["pooling"], source)
    else:
        pooling = None
    if "fc_norm.weight" in state_dict:
        width = state_dict["fc_norm.weight"].shape[0]
    elif "head.weight" in state_dict:
        width = state_dict["head.weight"].shape[1]
    else:
        width = None
    if pooling is None:
        if width == 2 * dim:
            return "bilateral_concat"
        pooling = "bilateral_concat" if width is None and version == 2 else "bilateral_avg"
        assumptions["pooling"] = f"pooling {pooling!r} assumed from the pooled width {width or '(no head)'}"
    if width is not None and width != pooled_dim(pooling, dim):
        raise CheckpointError(
            f"{source}: the head reads vectors of width {width}, which does not fit pooling {pooling!r} at width {dim}"
        )
    return pooling


def _pooling_from_ctor(pooling, source: str) -> str | None:
    if isinstance(pooling, str):
        if pooling in _POOLING_STRINGS:
            return _POOLING_STRINGS[pooling]
        if pooling in POOLINGS:
            return pooling
    if isinstance(pooling, Mapping):
        kind = pooling.get("kind")
        if kind == "bilateral" and pooling.get("aggregate", "flatten") in _BILATERAL_AGGREGATES:
            return _BILATERAL_AGGREGATES[pooling.get("aggregate", "flatten")]
        if kind == "middle_tokens" and pooling.get("num_tokens", 1) == 1:
            return "middle_patch"
        if kind in _POOLING_KINDS:
            return _POOLING_KINDS[kind]
    raise CheckpointError(
        f"{source}: pooling {pooling!r} of the checkpoint is not one of the paper's designs that vil supports"
    )


def _infer_block_design(state_dict, ctor: dict, layout: str, depth: int, assumptions: dict, source: str) -> str:
    branches: dict[int, set[int]] = {}
    for key in state_dict:
        if match := _BRANCH.match(key):
            branches.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    counts = {len(branches.get(index, ())) for index in range(depth)}
    if len(counts) != 1:
        raise CheckpointError(f"{source}: blocks have different numbers of traversal branches ({sorted(counts)})")
    num_branches = counts.pop()
    if layout in (OFFICIAL_V1, OFFICIAL_V2):
        design = "alternating"  # the only design of the standalone modules
    elif any(name in ctor for name in ("alternation", "bidirectional", "quaddirectional")):
        design = _design_from_training_ctor(ctor, source)
    else:
        designs_by_count = {1: "alternating", 2: "bidirectional", 4: "quad"}
        if num_branches not in designs_by_count:
            raise CheckpointError(f"{source}: {num_branches} traversal branches per block fit no block design")
        design = designs_by_count[num_branches]
        if num_branches == 1:
            assumptions["block_design"] = (
                "block design 'alternating' assumed (no ctor_kwargs record it; unidirectional and quad_alternating "
                "have the same tensors)"
            )
    traversals, shared = block_traversals(design, 0)
    expected = 1 if shared else len(traversals)
    if num_branches != expected:
        raise CheckpointError(
            f"{source}: block design {design!r} has {expected} traversal branches per block, the tensors have "
            f"{num_branches}"
        )
    return design


def _design_from_training_ctor(ctor: dict, source: str) -> str:
    """The training code's alternation / bidirectional / quaddirectional / sharedirs -> our block design."""
    alternation = ctor.get("alternation")
    shared = bool(ctor.get("sharedirs", False))
    if ctor.get("quaddirectional") or ctor.get("bidirectional"):
        if alternation is not None:
            raise CheckpointError(f"{source}: alternation={alternation!r} combined with several directions per block")
        kind = "quad" if ctor.get("quaddirectional") else "bidirectional"
        return f"{kind}_shared" if shared else kind
    designs = {None: "unidirectional", "bidirectional": "alternating", "quaddirectional": "quad_alternating"}
    if alternation not in designs:
        raise CheckpointError(f"{source}: unknown alternation {alternation!r}; known: {list(designs)}")
    return designs[alternation]


# ----------------------------------------------------------------------------------------------------------------
# descriptions


def describe_architecture(config: ViLConfig) -> str:
    """One line for people: generation, width, depth, patch, image size, classes, designs."""
    stride = "" if config.patch_stride == config.patch_size else f" stride {_size(config.patch_stride)}"
    return (
        f"ViL v{config.version}, dim {config.dim}, {config.depth} mLSTM blocks, patch {_size(config.patch_size)}"
        f"{stride}, image {_size(config.img_size)}, {config.num_classes} classes, pooling {config.pooling}, "
        f"block design {config.block_design}"
    )


def _size(pair: tuple[int, int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def _describe_foreign_keys(state_dict: Mapping[str, torch.Tensor]) -> str:
    keys = list(state_dict)
    hint = ""
    if any(".attn." in key for key in keys):
        hint = "it looks like a transformer (ViT) "
    elif any(key.startswith(("layer1.", "conv1.")) for key in keys):
        hint = "it looks like a ResNet "
    return f"{hint}state dict; none of its {len(keys)} keys ({_key_list(keys)}) are ViL parameter names"


def _key_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(key) for key in keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
