"""Named segmentation recipes: the default digit-scenes run and the official ADE20K UperNet settings.

ADE20K (official ViL configs, DESIGN notes in docs/segmentation.md): 160k iterations, batch 16, AdamW lr 5e-4 per 16
images, betas 0.9/0.999, weight decay 0.05, 1,500 warm-up iterations then cosine to 1e-6, layer-wise lr decay 0.65
over pairs of mLSTM blocks, drop path T 0 / S 0.05 / B 0.1 (linear over depth), fp16 autocast, 512 crops, the
backbone from the released ImageNet-1K weights, sliding-window validation every 16k iterations.
"""

from __future__ import annotations

from .train_config import RELEASED, SegTrainConfig

# The default run (`vil seg train`): 32 px scenes of 1-3 digits, a 4-block ViL of width 64 with patch 4 (an 8 x 8
# token grid) and the linear head (each token classifies its 4 x 4 pixels). UperNet learned where strokes are but
# not which digit they belong to (digit identity at chance after 750 iterations, measured; docs/segmentation.md).
# No augmentation: every scene is new, and digits are not flip-invariant.
DIGIT_SCENES = SegTrainConfig(
    recipe="digit_scenes",
    model="vil2_tiny_patch16_224",
    model_args=dict(dim=64, depth=4, patch_size=4, head="linear"),
    crop_size=32,
    scale=(32, 32),
    ratio_range=(1.0, 1.0),
    cat_max_ratio=1.0,
    hflip=0.0,
    color_jitter=(0.0, 0.0, 0.0, 0.0),
    iters=2000,
    warmup_iters=50,
    batch_size=16,
    lr=3e-3,
    min_lr=1e-5,
    layer_decay=None,
    eval_every=500,
    eval_mode="whole",
    eval_batch_size=50,
    examples=4,
    precision="fp32",
    workers=1,  # loading and the v2 transforms (~5 ms a scene) on the second core, training on one thread
    threads=1,
)


def _ade20k(size: str, drop_path: float) -> SegTrainConfig:
    return SegTrainConfig(
        recipe=f"ade20k_upernet_vil2_{size}",
        model=f"vil2_{size}_patch16_224",
        model_args=dict(drop_path_rate=drop_path),
        init=RELEASED,
        precision="fp16",
    )


RECIPES: dict[str, SegTrainConfig] = {
    r.recipe: r for r in (DIGIT_SCENES, _ade20k("tiny", 0.0), _ade20k("small", 0.05), _ade20k("base", 0.1))
}


def get_recipe(name: str) -> SegTrainConfig:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    return RECIPES[name]
