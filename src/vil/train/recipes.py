"""Named training recipes: the default digits run and the paper's ImageNet-1K settings (official configs).

Shared by all ImageNet recipes (``src/vislstm/yamls`` of the official code): AdamW, betas (0.9, 0.999), weight decay
0.05 except on 1-d parameters and the position embedding, lr 1e-3 per 1024 images, 5 warm-up epochs, cosine to 1e-6,
gradient clipping 1.0, RandomResizedCrop(0.08-1, bicubic) + flip + 3-Augment + ColorJitter(0.3, 0.3, 0.3, 0),
Mixup 0.8 / CutMix 1.0 (one per batch), soft-target cross-entropy, bf16 autocast. Drop path is uniform over blocks.
"""

from __future__ import annotations

from .config import TrainConfig

# The default run (`vil train` without arguments): a 4-block ViL (v2, dim 64) on the embedded 8 x 8 digits. Patch 2
# gives a 4 x 4 token grid: the images carry no more detail, and upsampling them to more tokens only costs time
# (patch 1, 64 tokens: a training step measured 3.6-4.9x slower). One CPU thread: on the shared 2-core machine two
# threads were erratic for this small model, up to ~50x slower per epoch when another process was busy
# (measured, see docs/training.md).
DIGITS = TrainConfig(
    recipe="digits",
    model=None,
    model_args=dict(version=2, dim=64, depth=4, patch_size=2),
    data=None,
    img_size=8,
    augmentation="translate",
    mixup=0.0,
    cutmix=0.0,
    epochs=40,
    warmup_epochs=3,
    batch_size=64,
    lr=3.2e-2,  # per 1024 images: 2e-3 at batch 64
    precision="fp32",
    workers=0,
    threads=1,
)

# `vil train --data DIR` without --recipe: ViL-T on the user's images, at their own size (vil.train.fitting picks the
# image size from the data and lowers the batch for small folders), with the paper's augmentation and optimiser.
FOLDER = TrainConfig(
    recipe="folder",
    model="vil2_tiny_patch16_224",
    img_size=224,
    epochs=100,
    warmup_epochs=5,
    batch_size=128,
    lr=1e-3,
    workers=4,
)

_IN1K = TrainConfig(recipe="in1k", data=None, img_size=224, workers=10)


def _in1k(recipe: str, model: str, img_size: int, epochs: int, batch_size: int, drop_path: float) -> TrainConfig:
    return _IN1K.replace(
        recipe=recipe,
        model=model,
        model_args=dict(drop_path_rate=drop_path),
        img_size=img_size,
        epochs=epochs,
        batch_size=batch_size,
        compile=True,
    )


def _finetune(recipe: str, epochs: int, warmup_epochs: float, **changes) -> TrainConfig:
    # Fine-tuning from a checkpoint (--init): lr 1e-5 per 1024 images, no gradient clipping (official configs).
    return _IN1K.replace(recipe=recipe, epochs=epochs, warmup_epochs=warmup_epochs, lr=1e-5, clip_grad=None, **changes)


RECIPES: dict[str, TrainConfig] = {
    r.recipe: r
    for r in (
        DIGITS,
        FOLDER,
        # ViL v2 pre-training at 192 (then fine-tune with in1k_finetune_224). T: e800 (the released 78.3 % model;
        # --epochs 400 gives the e400 one), S/B: e400. Global batch 2048.
        _in1k("in1k_vil2_tiny", "vil2_tiny_patch16_224", 192, 800, 2048, 0.0),
        _in1k("in1k_vil2_small", "vil2_small_patch16_224", 192, 400, 2048, 0.05),
        _in1k("in1k_vil2_base", "vil2_base_patch16_224", 192, 400, 2048, 0.2),
        # ViL v1 pre-training at 224: T/T+ e800 with batch 2048, S/S+ e400 with 1024, B e400 with 2048.
        _in1k("in1k_vil1_tiny", "vil1_tiny_patch16_224", 224, 800, 2048, 0.0),
        _in1k("in1k_vil1_tinyplus", "vil1_tinyplus_patch16_224", 224, 800, 2048, 0.0),
        _in1k("in1k_vil1_small", "vil1_small_patch16_224", 224, 400, 1024, 0.05),
        _in1k("in1k_vil1_smallplus", "vil1_smallplus_patch16_224", 224, 400, 1024, 0.05),
        _in1k("in1k_vil1_base", "vil1_base_patch16_224", 224, 400, 2048, 0.2),
        # v2 192 -> 224 fine-tuning (T and S: 20 epochs, 5 warm-up; B: 5 epochs, 1 warm-up). Needs --init.
        _finetune("in1k_finetune_224", 20, 5),
        _finetune("in1k_finetune_224_base", 5, 1),
        # Long-sequence fine-tuning: patch stride 8 (729 tokens at 224), 30 epochs, weight decay 1e-8, the lr stays
        # at 1e-5 after warm-up, at most 256 images per device per step. Needs --init (a stride-16 checkpoint).
        _finetune(
            "in1k_longseq_stride8",
            30,
            5,
            model_args=dict(patch_stride=8),
            weight_decay=1e-8,
            min_lr=1e-5,
            max_device_batch_size=256,
            compile=True,
        ),
    )
}

NEEDS_INIT = ("in1k_finetune_224", "in1k_finetune_224_base", "in1k_longseq_stride8")


def get_recipe(name: str) -> TrainConfig:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    return RECIPES[name]
