"""A folder of images, a sub-folder per class (torchvision's ImageFolder), read as training goes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchvision
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from lit_tune.config import ConfigError
from lit_tune.data.memory import Normalise

# The training split's per-channel mean and std, measured once per process.
_measured: dict[tuple[Any, ...], tuple[list[float], list[float]]] = {}


class ImageFolder(L.LightningDataModule):
    """Images under `data_dir/<class>/`, or under `data_dir/train/<class>/` with `val/` and
    `test/` beside it where they exist (a split missing is drawn from train with its fraction
    and the seed). Each image is converted to RGB, resized to `image_size` (height, width) and
    normalised per channel with the training split's `mean` and `std`: given, or measured once
    over the training images. `train_transforms` (torchvision transforms: flips, crops, colour
    jitter, ...) apply to training images only, before the normalisation.

    Images are read and transformed one at a time by a DataLoader (`num_workers` processes):
    the way for data sets larger than memory and for per-image augmentation."""

    def __init__(
        self,
        data_dir: str,
        batch_size: int,
        seed: int,
        image_size: Sequence[int] = (32, 32),
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        train_transforms: Sequence[Any] = (),
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.data_dir, self.batch_size, self.seed = data_dir, batch_size, seed
        self.image_size = tuple(int(s) for s in image_size)
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.mean, self.std = mean, std
        self.train_transforms = list(train_transforms)
        self.num_workers = num_workers
        self.splits: dict[str, Dataset] = {}

    # -- what the folder holds ---------------------------------------------------------------

    def _root(self, split: str = "") -> Path:
        return Path(self.data_dir).resolve() / split

    def _layout(self) -> str:
        """ "train" when the folder has a train/ sub-folder, else "" (one folder, split here)."""
        return "train" if self._root("train").is_dir() else ""

    def prepare_data(self) -> None:
        try:
            self._folder(self._layout(), self._plain())
        except (FileNotFoundError, OSError) as error:
            raise ConfigError(
                f"data.data_dir={self.data_dir}: no images in class folders there "
                f"(<data_dir>/<class>/*.png, or <data_dir>/train/<class>/...): {error}"
            ) from None

    def _folder(self, split: str, transform: Any) -> torchvision.datasets.ImageFolder:
        return torchvision.datasets.ImageFolder(str(self._root(split)), transform=transform)

    @property
    def class_names(self) -> list[str]:
        return list(self._folder(self._layout(), None).classes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    @property
    def task(self) -> str:
        return "binary" if self.num_classes == 2 else "multiclass"

    pixel_max = 1.0  # images read as floats in [0, 1] (torchvision's ToDtype, scaled)

    def input_transform(self) -> nn.Module:
        """What turns images resized to `image_size`, pixels in [0, 1], into what the loaders
        serve: the normalisation."""
        mean, std = self._statistics()
        return Normalise(torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None])

    def raw_examples(self, n: int) -> Tensor:
        """The first `n` test images, resized, pixels in [0, 1] (a served model's example)."""
        test = self._split(self._plain(), "test")
        return torch.stack([test[i][0] for i in range(min(n, len(test)))])  # type: ignore[arg-type]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, *self.image_size)  # type: ignore[return-value]

    # -- transforms and splits ---------------------------------------------------------------

    def _plain(self) -> v2.Compose:
        return v2.Compose(
            [v2.ToImage(), v2.Resize(self.image_size), v2.ToDtype(torch.float32, scale=True)]
        )

    def _normalised(self, augment: bool) -> v2.Compose:
        mean, std = self._statistics()
        extra = self.train_transforms if augment else []
        return v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(self.image_size),
                *extra,
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean, std),
            ]
        )

    def _indices(self, n: int, *fractions: float) -> list[list[int]]:
        """range(n) shuffled with the seed, cut into pieces of these fractions and the rest."""
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        pieces, start = [], 0
        for fraction in fractions:
            size = max(1, round(fraction * n))
            pieces.append(order[start : start + size])
            start += size
        return [*pieces, order[start:]]

    def _split(self, transform: Any, name: str) -> Dataset:
        """The split `name` (train, val or test), each image through `transform`."""
        layout = self._layout()
        present = {s for s in ("val", "test") if layout and self._root(s).is_dir()}
        if name in present:
            return self._folder(name, transform)
        whole = self._folder(layout, transform)
        missing = [s for s in ("test", "val") if s not in present]
        if not missing:
            return whole
        fractions = {"test": self.test_fraction, "val": self.val_fraction}
        pieces = self._indices(len(whole), *(fractions[s] for s in missing))
        return Subset(whole, dict(zip([*missing, "train"], pieces, strict=True))[name])

    def _statistics(self) -> tuple[list[float], list[float]]:
        if self.mean is not None and self.std is not None:
            return list(self.mean), list(self.std)
        key = (str(self._root()), self.image_size, self.seed, self.val_fraction, self.test_fraction)
        if key not in _measured:
            total = torch.zeros(3, dtype=torch.float64)
            squares, count = torch.zeros(3, dtype=torch.float64), 0
            for images, _ in DataLoader(self._split(self._plain(), "train"), batch_size=256):
                pixels = images.to(torch.float64).transpose(0, 1).reshape(3, -1)
                total += pixels.sum(1)
                squares += (pixels**2).sum(1)
                count += pixels.shape[1]
            mean = total / count
            std = (squares / count - mean**2).clamp_min(0).sqrt()
            _measured.clear()
            _measured[key] = (mean.tolist(), torch.where(std > 0, std, 1.0).tolist())
        return _measured[key]

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = {
                "train": self._split(self._normalised(augment=True), "train"),
                "val": self._split(self._normalised(augment=False), "val"),
                "test": self._split(self._normalised(augment=False), "test"),
            }

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
