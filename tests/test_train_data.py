"""The embedded digits, image folders (layout errors, skipped files) and the transforms."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from vil.data import digits
from vil.data.folder import BadFile, ImageFolderDataset, collate_skipping_bad_files, scan_folder, split_dir
from vil.data.preprocessing import Preprocessing, eval_transform, train_transform
from vil.data.sources import build_data_splits, build_eval_dataset


def _write_images(folder, count, size=(12, 10)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_digits_splits_are_fixed_stratified_and_disjoint():
    train_x, train_y = digits.load_digits_split("train")
    val_x, val_y = digits.load_digits_split("val")
    test_x, test_y = digits.load_digits_split("test")
    assert train_x.shape == (1149, 1, 8, 8) and val_x.shape == (288, 1, 8, 8) and test_x.shape == (360, 1, 8, 8)
    assert float(train_x.min()) >= 0.0 and float(train_x.max()) <= 1.0
    again_x, again_y = digits.load_digits_split("test")
    assert torch.equal(test_x, again_x) and torch.equal(test_y, again_y)
    counts = torch.bincount(test_y)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~20 % of each class
    counts = torch.bincount(val_y)
    assert counts.min() >= 28 and counts.max() <= 30  # stratified: ~20 % of each class's remaining images
    rows = {split: {row.numpy().tobytes() for row in x} for split, x in (("train", train_x), ("val", val_x))}
    assert not any(row.numpy().tobytes() in rows["train"] | rows["val"] for row in test_x)
    assert not rows["train"] & rows["val"]
    with pytest.raises(ValueError, match="unknown digits split 'holdout'"):
        digits.load_digits_split("holdout")


def test_data_dir_errors_name_the_path_and_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*DIR/train/<class>"):
        split_dir(tmp_path / "missing", "train")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        split_dir(tmp_path / "file", "train")
    with pytest.raises(FileNotFoundError, match="has no 'train' folder"):
        split_dir(tmp_path, "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="has no class folders"):
        scan_folder(split_dir(tmp_path, "train"))
    _write_images(tmp_path / "train" / "cat", 2)
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(ValueError, match=r"class folders without images: \[.*dog'\]"):
        scan_folder(tmp_path / "train")


def test_val_classes_follow_the_training_classes(tmp_path):
    for name in ("a", "b", "c"):
        _write_images(tmp_path / "train" / name, 1)
    _write_images(tmp_path / "val" / "c", 1)
    scan = scan_folder(tmp_path / "val", classes=["a", "b", "c"])
    assert scan.samples[0][1] == 2  # label of "c" in the training order, though it is the only val class
    _write_images(tmp_path / "val" / "zebra", 1)
    with pytest.raises(ValueError, match="does not know: \\['zebra'\\]"):
        scan_folder(tmp_path / "val", classes=["a", "b", "c"])


def test_non_image_and_corrupt_files_are_reported_and_skipped(tmp_path):
    _write_images(tmp_path / "cat", 3)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    scan = scan_folder(tmp_path)
    assert [b.path for b in scan.skipped] == [str(tmp_path / "cat" / "notes.txt")]
    dataset = ImageFolderDataset(scan, transform=T.Compose([T.Resize((8, 8)), T.ToTensor()]))
    items = [dataset[i] for i in range(len(dataset))]
    bad = [item for item in items if isinstance(item, BadFile)]
    assert [b.path for b in bad] == [str(tmp_path / "cat" / "broken.jpg")] and "cannot read image" in bad[0].reason
    images, labels, skipped = collate_skipping_bad_files(items)
    assert images.shape == (3, 3, 8, 8) and labels.tolist() == [0, 0, 0] and skipped == bad
    with pytest.raises(ValueError, match="none of the 1 images"):
        collate_skipping_bad_files(bad)


def test_eval_transform_is_the_official_one():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    official = T.Compose([  # eval.py of the official code
        T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
        T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ])  # fmt: skip
    assert torch.equal(eval_transform(Preprocessing(img_size=224))(image), official(image))


def test_paper_augmentation_has_the_official_parts():
    pre = Preprocessing(img_size=32)
    transform = train_transform("paper", pre, "pil")
    text = repr(transform)
    for part in ("RandomResizedCrop", "scale=(0.08, 1.0)", "bicubic", "RandomHorizontalFlip", "Solarize",
                 "Desaturate", "GaussianBlurRand", "ColorJitter", "brightness=(0.7, 1.3)", "hue=None"):  # fmt: skip
        assert part in text, part
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60), dtype=np.uint8))  # grey input
    assert transform(image).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="needs image files"):
        train_transform("paper", pre, "tensor")


def test_digits_splits_for_training():
    splits = build_data_splits(None, 8, "translate")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1149, 288, 360)
    assert splits.classes == list("0123456789")
    image, label = splits.train[0]
    assert image.shape == (1, 8, 8) and isinstance(label, int)
    with pytest.raises(ValueError, match="8 x 8 images; got img_size=16"):
        build_data_splits(None, 16, "translate")


def test_exported_digits_match_the_embedded_ones(tmp_path):
    root = digits.export_image_folder(tmp_path / "png")
    pre = Preprocessing(img_size=8, in_chans=1, mean=digits.MEAN, std=digits.STD)
    scan = scan_folder(root / "test", classes=list(digits.CLASS_NAMES))
    assert len(scan.samples) == 360
    from_file = eval_transform(pre, "pil")(Image.open(scan.samples[0][0]))
    path_index = int(scan.samples[0][0].split("/")[-1].removesuffix(".png"))
    embedded = digits.DigitsDataset("test", eval_transform(pre, "tensor"))[path_index][0]
    assert torch.allclose(from_file, embedded, atol=1.0 / 255 / digits.STD[0])  # PNG rounding only


def test_a_folder_with_only_train_is_split_by_a_fixed_seed_per_class(tmp_path):
    for name, count in (("cat", 20), ("dog", 9), ("eel", 1)):
        _write_images(tmp_path / "train" / name, count)
    splits = build_data_splits(str(tmp_path), 8, "none")
    val_paths = {path for path, _ in splits.val.samples}
    train_paths = {path for path, _ in splits.train.samples}
    assert len(val_paths) == 2 + 1 and not val_paths & train_paths  # 10 % of 20, at least one of 9, none of 1
    assert len(train_paths) == 30 - 3 and splits.test is None and "no val/ folder" in splits.val_source
    again = build_data_splits(str(tmp_path), 8, "none")
    assert {path for path, _ in again.val.samples} == val_paths  # the same files every time
    _write_images(tmp_path / "test" / "cat", 2)
    with_test = build_data_splits(str(tmp_path), 8, "none")
    assert len(with_test.test) == 2 and {path for path, _ in with_test.val.samples} == val_paths
    with pytest.raises(FileNotFoundError, match=r"has no 'val' folder \(found: \['test', 'train'\]\)"):
        build_eval_dataset(str(tmp_path), ["cat", "dog", "eel"], Preprocessing(img_size=8))
