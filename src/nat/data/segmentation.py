"""Semantic segmentation data: image/mask folders (ADE20K's layout, or any folder with a class
list), a synthetic scene generator, and reading masks with errors that name the file.

Layouts read by :class:`SegmentationFolder`:

- **ADE20K** (``ADEChallengeData2016``): ``images/{training,validation}/*.jpg`` and
  ``annotations/{training,validation}/*.png``; mask value 0 ("other") is ignored and the 150
  classes 1..150 become 0..149 (:data:`ADE20K_CLASSES`).
- **A mask folder**: ``classes.txt`` (one class name per line), ``images/{train,val}/<name>.<ext>``
  and ``masks/{train,val}/<name>.png``, mask values ``0..len(classes)-1``, :data:`IGNORE_INDEX`
  for pixels that count nowhere.

Every image must have a mask of the same size; a missing mask, a size mismatch, an unreadable file
or a mask value outside the classes (other than :data:`IGNORE_INDEX`) is an error naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .images import UnreadableImageError, decode_image

__all__ = [
    "ADE20K_CLASSES",
    "IGNORE_INDEX",
    "SYNTHETIC",
    "SYNTHETIC_CLASSES",
    "SegmentationFolder",
    "SegmentationSample",
    "SyntheticScenes",
    "read_mask",
    "write_mask_folder",
]

IGNORE_INDEX = 255
SYNTHETIC = "synthetic"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_SPLITS = {
    "ade20k": {"train": "training", "val": "validation"},
    "folder": {"train": "train", "val": "val"},
}
_MASK_DIRS = {"ade20k": "annotations", "folder": "masks"}

SegmentationSample = tuple[np.ndarray, np.ndarray]
"""``(image [H, W, 3] uint8 RGB, mask [H, W] uint8 class indices)``."""

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip
"""ADE20K's 150 classes (SceneParsing benchmark order, the names mmsegmentation uses)."""

SYNTHETIC_CLASSES = ("background", "disc", "square", "triangle", "ring")


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """The class-index mask at ``path`` (a single-channel or palette PNG) as ``[H, W]`` uint8."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mask {str(path)!r} does not exist")
    try:
        with Image.open(path) as mask:
            mask.load()
            if mask.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"mode {mask.mode} is not a class-index mask (L or P)")
            values = np.asarray(mask)
    except (OSError, ValueError, SyntaxError) as err:
        raise UnreadableImageError(f"cannot read mask {path}: {err}") from None
    if values.size and (values.min() < 0 or values.max() > IGNORE_INDEX):
        raise ValueError(f"mask {path} has values outside 0..{IGNORE_INDEX}")
    return values.astype(np.uint8)


class SegmentationFolder(Dataset):
    """One split (``train``/``val``) of an ADE20K or mask-folder root (see the module's doc).

    Items are :data:`SegmentationSample` pairs passed through ``transform`` when one is set.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        transform: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    ) -> None:
        self.root = Path(root)
        if split not in ("train", "val"):
            raise ValueError(f"split={split!r} must be 'train' or 'val'")
        if not self.root.is_dir():
            raise FileNotFoundError(f"data {str(self.root)!r} is not a directory")
        self.layout = self._layout()
        self.reduce_zero_label = self.layout == "ade20k"
        self.classes = self._classes()
        self.images, self.masks = self._pairs(_SPLITS[self.layout][split])
        self.split = split
        self.transform = transform

    def _layout(self) -> str:
        if (self.root / "images" / "training").is_dir() and (self.root / "annotations").is_dir():
            return "ade20k"
        if (self.root / "images").is_dir() and (self.root / "masks").is_dir():
            return "folder"
        raise FileNotFoundError(
            f"data {str(self.root)!r} has neither ADE20K's images/training + annotations/ nor "
            f"images/ + masks/ (with classes.txt)"
        )

    def _classes(self) -> list[str]:
        listed = self.root / "classes.txt"
        if listed.is_file():
            names = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
            if not names:
                raise ValueError(f"class list {listed} is empty")
            if len(names) >= IGNORE_INDEX:
                raise ValueError(f"class list {listed} has {len(names)} classes, at most 254")
            return names
        if self.layout == "ade20k":
            return list(ADE20K_CLASSES)
        raise FileNotFoundError(f"data {str(self.root)!r} needs classes.txt (one name per line)")

    def _pairs(self, split_dir: str) -> tuple[list[Path], list[Path]]:
        image_dir = self.root / "images" / split_dir
        mask_dir = self.root / _MASK_DIRS[self.layout] / split_dir
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"split folder {str(folder)!r} does not exist")
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(f"split folder {str(image_dir)!r} has no images")
        masks = [mask_dir / f"{p.stem}.png" for p in images]
        for image, mask in zip(images, masks, strict=True):
            if not mask.is_file():
                raise FileNotFoundError(f"image {image} has no mask (expected {mask})")
        stems = {p.stem for p in images}
        extra = sorted(p for p in mask_dir.glob("*.png") if p.stem not in stems)
        if extra:
            raise FileNotFoundError(f"mask {extra[0]} has no image in {image_dir}")
        return images, masks

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> SegmentationSample:
        """Sample ``index`` before the transform, its labels checked against the classes."""
        image_path, mask_path = self.images[index], self.masks[index]
        image = np.asarray(decode_image(image_path))
        mask = read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        if self.reduce_zero_label:
            mask = (mask.astype(np.int16) - 1).astype(np.uint8)  # 0 -> 255 (ignored)
        labels = np.unique(mask)
        bad = labels[(labels >= len(self.classes)) & (labels != IGNORE_INDEX)]
        if bad.size:
            shown = int(bad[0]) + 1 if self.reduce_zero_label else int(bad[0])
            raise ValueError(
                f"mask {mask_path} has label {shown}, outside the {len(self.classes)} classes "
                f"(0..{len(self.classes) - 1}{', 1-based' if self.reduce_zero_label else ''}; "
                f"{IGNORE_INDEX} is ignored)"
            )
        return image, mask

    def __getitem__(self, index: int) -> Any:
        image, mask = self.load(index)
        return self.transform(image, mask) if self.transform else (image, mask)


class SyntheticScenes(Dataset):
    """Generated scenes: 1-3 shapes (disc, square, triangle, ring) of random size and colour (far
    from the background's) on a textured background (noisy stripes around a random colour), so
    that classes are told apart by shape, not colour. Sample ``i`` of a split depends only on
    ``(seed, split, i)``."""

    classes: tuple[str, ...] = SYNTHETIC_CLASSES

    def __init__(
        self,
        split: str,
        *,
        size: int = 64,
        count: int | None = None,
        seed: int = 0,
        transform: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split={split!r} must be 'train' or 'val'")
        if size < 16:
            raise ValueError(f"size={size} must be >= 16")
        self.split, self.size, self.seed = split, size, seed
        self.count = count if count is not None else (160 if split == "train" else 40)
        self.transform = transform

    def __len__(self) -> int:
        return self.count

    def load(self, index: int) -> SegmentationSample:
        rng = np.random.default_rng([self.seed, self.split == "val", index])
        s = self.size
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 12)
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0
        base = rng.uniform(40, 216, 3)
        image = np.where(stripes[..., None], base - 30, base + 30).astype(np.float32)
        image += rng.normal(0, 12, (s, s, 3))
        mask = np.zeros((s, s), np.uint8)
        for _ in range(rng.integers(1, 4)):
            label = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
            radius = rng.uniform(0.12, 0.28) * s
            cy, cx = rng.uniform(radius, s - radius, 2)
            inside = _shape(label, yy - cy, xx - cx, radius, rng.uniform(0, 2 * np.pi))
            colour = (base + 128 + rng.uniform(-48, 48, 3)) % 256  # away from the background
            image[inside] = colour + rng.normal(0, 10, (int(inside.sum()), 3))
            mask[inside] = label
        image = np.clip(image, 0, 255).astype(np.uint8)
        return image, mask

    def __getitem__(self, index: int) -> Any:
        image, mask = self.load(index)
        return self.transform(image, mask) if self.transform else (image, mask)


def _shape(label: int, dy: np.ndarray, dx: np.ndarray, radius: float, turn: float) -> np.ndarray:
    """Pixels of shape ``label`` centred at offsets (0, 0), rotated by ``turn``."""
    dist = np.hypot(dy, dx)
    if label == SYNTHETIC_CLASSES.index("disc"):
        return dist <= radius
    if label == SYNTHETIC_CLASSES.index("ring"):
        return (dist <= radius) & (dist >= 0.55 * radius)
    u = dx * np.cos(turn) + dy * np.sin(turn)
    v = -dx * np.sin(turn) + dy * np.cos(turn)
    if label == SYNTHETIC_CLASSES.index("square"):
        half = radius / np.sqrt(2)
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    # triangle: inside all three edges of an equilateral triangle of circumradius `radius`
    inside = np.ones_like(dist, dtype=bool)
    for k in range(3):
        a = turn + k * 2 * np.pi / 3
        inside &= dx * np.cos(a) + dy * np.sin(a) <= radius / 2
    return inside


def write_mask_folder(
    root: str | os.PathLike[str],
    splits: dict[str, Sequence[SegmentationSample]],
    classes: Sequence[str],
) -> Path:
    """Write samples in the mask-folder layout (``classes.txt``, ``images/<split>/<i>.png``,
    ``masks/<split>/<i>.png``), e.g. the synthetic scenes for ``nat segment train --data``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in classes))
    for split, samples in splits.items():
        for sub in ("images", "masks"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        for i, (image, mask) in enumerate(samples):
            Image.fromarray(image).save(root / "images" / split / f"{i:05d}.png")
            Image.fromarray(mask, mode="L").save(root / "masks" / split / f"{i:05d}.png")
    return root
