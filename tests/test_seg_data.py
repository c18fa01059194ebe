"""ADE20K-layout data, joint transforms and the metric (checked against torchmetrics)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from vil.seg.classes import ADE20K_CLASSES, dataset_classes
from vil.seg.data import IGNORE_INDEX, BadLabels, SegmentationDataset, check_bad_samples, collate_samples
from vil.seg.metric import SegmentationMetric
from vil.seg.transforms import RandomCropCategoryRatio, eval_transform, fit_scale, train_transform


def write_sample(root, split, name, mask, image_size=None):
    height, width = image_size or mask.shape
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / "images" / split / f"{name}.jpg")
    Image.fromarray(mask.astype(np.uint8)).save(root / "annotations" / split / f"{name}.png")


def test_ade20k_layout_labels_and_bad_samples(tmp_path):
    mask = np.array([[0, 1, 2], [3, 3, 0]])
    write_sample(tmp_path, "training", "a", mask)
    write_sample(tmp_path, "training", "b", mask, image_size=(4, 3))  # annotation size differs from the image
    write_sample(tmp_path, "training", "c", np.array([[0, 4]]))  # label 4 with 3 classes
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "images" / "training" / "d.jpg")  # no annotation
    (tmp_path / "annotations" / "training" / "e.png").write_bytes(b"not a png")
    (tmp_path / "images" / "training" / "e.jpg").write_bytes((tmp_path / "images" / "training" / "a.jpg").read_bytes())
    data = SegmentationDataset(tmp_path, "train", ["x", "y", "z"])
    assert [b.path.endswith("d.jpg") for b in data.skipped] == [True]
    image, labels = data[0]
    assert isinstance(image, tv_tensors.Image) and isinstance(labels, tv_tensors.Mask)
    assert labels.tolist() == [[IGNORE_INDEX, 0, 1], [2, 2, IGNORE_INDEX]]
    assert "annotation is 3 x 2, its image 3 x 4" in data[1].reason
    assert isinstance(data[2], BadLabels) and "label value 4 above the 3 classes" in data[2].reason
    assert "cannot read annotation" in data[3].reason
    with pytest.raises(ValueError, match=r"c\.png: label value 4"):
        check_bad_samples([data[1], data[2]])
    images, masks, bad = collate_samples([data[0], data[1], data[0]])
    assert images.shape == (2, 3, 2, 3) and masks.dtype == torch.long and len(bad) == 1
    with pytest.raises(FileNotFoundError, match="validation does not exist"):
        SegmentationDataset(tmp_path, "val", ["x"])


def test_class_names(tmp_path):
    assert len(ADE20K_CLASSES) == 150 and dataset_classes(tmp_path) == list(ADE20K_CLASSES)
    assert dataset_classes(tmp_path, 3) == ["class 0", "class 1", "class 2"]
    (tmp_path / "classes.txt").write_text("sky\nroad\n")
    assert dataset_classes(tmp_path) == ["sky", "road"]
    with pytest.raises(ValueError, match="--num-classes 3 differs from the 2 classes"):
        dataset_classes(tmp_path, 3)


def test_joint_transforms_keep_image_and_mask_aligned():
    # the mask is a function of the image (its first channel thresholded): any misalignment breaks it
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (3, 10, 15), dtype=torch.uint8)
    pixels = pixels.repeat_interleave(30, 1).repeat_interleave(30, 2)  # 300 x 450, blocks survive resizing
    mask = (pixels[0] > 127).to(torch.uint8)
    transform = train_transform(128, scale=(256, 128), color_jitter=(0, 0, 0, 0), mean=(0.5,) * 3, std=(0.5,) * 3)
    for _ in range(5):
        image, labels = transform(tv_tensors.Image(pixels), tv_tensors.Mask(mask))
        assert image.shape == (3, 128, 128) and labels.shape == (128, 128)
        valid = labels != IGNORE_INDEX
        agree = ((image[0] > 0) == (labels == 1))[valid].float().mean()
        assert agree > 0.95  # all but the blurred block edges
        assert (image[:, ~valid] == 0).all()  # padding: 0 in the image, the ignore label in the mask
    image, labels = eval_transform((256, 128))(tv_tensors.Image(pixels), tv_tensors.Mask(mask))
    assert image.shape[-2:] == fit_scale(300, 450, (256, 128)) == (128, 192) and labels.shape == (300, 450)


def test_crop_avoids_crops_dominated_by_one_class():
    mask = torch.zeros(100, 100, dtype=torch.uint8)
    mask[:, 80:] = 1  # 18 % of the 30 x 30 crops have both classes with neither above 75 %

    def balanced_crops(ratio: float) -> int:
        crop = RandomCropCategoryRatio(30, cat_max_ratio=ratio)
        counts = [torch.bincount(crop(tv_tensors.Mask(mask)).flatten().long(), minlength=2) for _ in range(40)]
        return sum(int(c.max() < 0.75 * c.sum()) for c in counts)

    assert balanced_crops(0.75) >= 28  # 10 tries: 86 % expected
    assert balanced_crops(1.0) <= 14  # the rule off: 18 % expected


@pytest.mark.parametrize("seed", [0, 1])
def test_metric_matches_torchmetrics(seed):
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    generator = torch.Generator().manual_seed(seed)
    num_classes = 6
    ours = SegmentationMetric(num_classes)
    jaccard = MulticlassJaccardIndex(num_classes, average=None, ignore_index=IGNORE_INDEX)
    recall = MulticlassAccuracy(num_classes, average=None, ignore_index=IGNORE_INDEX)
    micro = MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX)
    for _ in range(3):
        labels = torch.randint(0, 4, (2, 16, 16), generator=generator)  # classes 4, 5 never labelled
        pred = torch.where(torch.rand(2, 16, 16, generator=generator) < 0.6, labels, torch.randint(0, 5, (2, 16, 16)))
        labels[torch.rand(2, 16, 16, generator=generator) < 0.1] = IGNORE_INDEX
        ours.update(pred, labels)
        for metric in (jaccard, recall, micro):
            metric.update(pred, labels)
    result = ours.compute()
    expected_iou = jaccard.compute().tolist()
    assert result["iou"]["5"] is None  # never labelled nor predicted: no IoU, left out of the mean
    assert result["iou"]["4"] == 0.0  # predicted but never labelled: IoU 0, counted
    defined = [i for i in range(num_classes) if result["iou"][str(i)] is not None]
    assert [result["iou"][str(i)] for i in defined] == pytest.approx([expected_iou[i] for i in defined], abs=1e-6)
    assert result["miou"] == pytest.approx(np.mean([expected_iou[i] for i in defined]), abs=1e-6)
    expected_acc = recall.compute().tolist()
    assert result["macc"] == pytest.approx(np.mean(expected_acc[:4]), abs=1e-6)
    assert result["aacc"] == pytest.approx(float(micro.compute()), abs=1e-6)
