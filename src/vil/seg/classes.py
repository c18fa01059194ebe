"""Class names: ADE20K's 150 (in label order, as mmsegmentation), and how a dataset in the ADE20K layout names its
classes (a ``classes.txt`` at its root, else ``--num-classes N``, else ADE20K's).
"""

from __future__ import annotations

from pathlib import Path

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock",
    "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers",
    "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway",
    "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent",
    "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal",
    "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light",
    "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip
CLASSES_FILE = "classes.txt"


def dataset_classes(root: str | Path, num_classes: int | None = None) -> list[str]:
    """The class names of a dataset in the ADE20K layout at ``root`` (label i+1 in the annotations is class i)."""
    path = Path(root) / CLASSES_FILE
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not names:
            raise ValueError(f"{path} names no classes (expected one class name a line)")
        if num_classes is not None and num_classes != len(names):
            raise ValueError(f"--num-classes {num_classes} differs from the {len(names)} classes named in {path}")
        return names
    if num_classes is None or num_classes == len(ADE20K_CLASSES):
        return list(ADE20K_CLASSES)
    if num_classes < 1:
        raise ValueError(f"--num-classes must be >= 1, got {num_classes}")
    return [f"class {i}" for i in range(num_classes)]
