"""Inpainting, algorithms.md §9 (paper §4.3, Fig. 5): complete images whose observed part is clamped.

The observed dimensions are set to their data values (k/256, no noise) at z(0) and after every
transition; the free ones start from the prior and follow the sampling chain. Several chains
per image, each with its own seed, show the variety of completions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import figures
from ..chain.model import ChainModel, check_model
from ..chain.sampler import check_clampable, sample_chain
from ..config import DataConfig
from ..data import TOYS, load_split, parzen_space
from ..errors import InputError
from ..io import all_or_nothing, path_kind, regular_file, save_npz

HALVES = ("top", "bottom", "left", "right")
MISSING_SHADE = 0.5  # how unobserved pixels are drawn in the "masked start" column


def half_mask(which: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Boolean (C, H, W) mask, True = observed: the named half of the image is observed."""
    if which not in HALVES:
        raise InputError(f"mask {which!r}: expected one of {', '.join(HALVES)} or a .png/.npy file")
    _check_image_shape(shape)
    _, h, w = shape
    m = torch.zeros(shape, dtype=torch.bool)
    if which == "top":
        m[:, : h // 2] = True
    elif which == "bottom":
        m[:, h - h // 2:] = True
    elif which == "left":
        m[:, :, : w // 2] = True
    else:
        m[:, :, w - w // 2:] = True
    return m


def load_mask_file(path: str | Path, shape: tuple[int, ...]) -> torch.Tensor:
    """Boolean (C, H, W) mask from a PNG or .npy of the image's H×W (nonzero = observed)."""
    _check_image_shape(shape)
    p = Path(path)
    if path_kind(p) == "nothing":
        raise FileNotFoundError(f"mask file {str(p)!r} does not exist")
    regular_file(p, "mask file")  # a FIFO, a device or a symlink loop: refused, never opened
    try:
        if p.suffix.lower() == ".npy":
            a = np.load(p, allow_pickle=False)
        elif p.suffix.lower() == ".png":
            with Image.open(p) as img:
                a = np.asarray(img.convert("L"))
        else:
            raise InputError(f"mask file {str(p)!r}: expected a .png or .npy file")
    except (OSError, ValueError) as e:
        if isinstance(e, ValueError) and str(e).startswith("mask file"):
            raise
        raise InputError(f"cannot read mask file {str(p)!r}: {e}") from None
    c, h, w = shape
    if a.shape not in ((h, w), (1, h, w)):
        raise InputError(f"mask file {str(p)!r} has shape {a.shape}; expected the image's "
                         f"H×W = {h}×{w}")
    if not np.issubdtype(a.dtype, np.number) and a.dtype != np.bool_:
        raise InputError(f"mask file {str(p)!r}: expected numbers, got dtype {a.dtype}")
    return torch.from_numpy(a.reshape(h, w) != 0).expand(c, h, w).clone()


def parse_mask(spec: str, shape: tuple[int, ...]) -> torch.Tensor:
    """``top|bottom|left|right`` or a mask file path -> boolean (C, H, W), True = observed."""
    mask = half_mask(spec, shape) if spec in HALVES else load_mask_file(spec, shape)
    if bool(mask.all()):
        raise InputError(f"mask {spec!r} observes every pixel: nothing to complete")
    return mask


@dataclass
class Inpainting:
    """``originals`` (N, C, H, W); ``mask`` (C, H, W) True = observed; ``starts`` the masked
    images (free pixels shaded); ``completions`` (N, K, C, H, W) final means; ``samples``
    the final states; ``trajectory`` (steps+1, N, K, C, H, W) states when requested."""

    originals: torch.Tensor
    mask: torch.Tensor
    starts: torch.Tensor
    completions: torch.Tensor
    samples: torch.Tensor
    trajectory: torch.Tensor | None = None

    def head(self, n: int) -> Inpainting:
        """The first ``n`` images' part of this result."""
        traj = None if self.trajectory is None else self.trajectory[:, :n]
        return Inpainting(self.originals[:n], self.mask, self.starts[:n], self.completions[:n],
                          self.samples[:n], traj)


def inpaint(model: ChainModel, images: torch.Tensor, mask: torch.Tensor, chains: int = 5,
            steps: int | None = None, seed: int = 0, return_trajectory: bool = False,
            batch_size: int = 500) -> Inpainting:
    """Complete ``images`` (N, C, H, W) in [0, 1] with ``chains`` clamped chains each (algorithms.md §9).

    Chain k of image i uses seed ``seed + i·chains + k``. ``steps`` = T' (default: training T).
    A model that cannot be clamped (a VAE, whose steps ignore their input state) is refused
    (:class:`~infusion.errors.InputError`): its completions would ignore the observed pixels.
    """
    check_model(model)
    check_clampable(model)
    if chains < 1:
        raise InputError(f"chains={chains}: expected >= 1")
    shape = tuple(model.shape)
    if tuple(images.shape[1:]) != shape or tuple(mask.shape) != shape:
        raise InputError(f"images {tuple(images.shape)} and mask {tuple(mask.shape)} must match the "
                         f"model's state shape {shape}")
    n = images.shape[0]
    values = images.float().reshape(n, 1, -1).expand(n, chains, -1).reshape(n * chains, -1)
    flat_mask = mask.reshape(1, -1)
    res = sample_chain(model, n * chains, steps, seeds=range(seed, seed + n * chains),
                       batch_size=batch_size, clamp=(flat_mask, values),
                       return_trajectory=return_trajectory)
    starts = torch.where(mask, images.float().cpu(), torch.full_like(images.float().cpu(), MISSING_SHADE))
    out = Inpainting(images.float().cpu(), mask.cpu(), starts,
                     res.means.reshape(n, chains, *shape), res.samples.reshape(n, chains, *shape))
    if return_trajectory:
        out.trajectory = res.states.reshape(-1, n, chains, *shape)
    return out


def save_inpainting_figure(path: str | Path, result: Inpainting, scale: int = 2) -> Path:
    """Paper Fig. 5 layout: per row the original, the masked start, then the K completions."""
    n, k = result.completions.shape[:2]
    rows = [torch.cat([result.originals[i:i + 1], result.starts[i:i + 1], result.completions[i]])
            for i in range(n)]
    return figures.save_png(path, figures.make_grid(torch.cat(rows), nrow=k + 2), scale)


def save_inpainting(out_dir: str | Path, result: Inpainting, labels: torch.Tensor | None = None
                    ) -> tuple[Path, Path]:
    """Write ``inpaint.png`` (Fig. 5 layout) and ``inpaint.npz`` (all arrays) into ``out_dir``."""
    out = Path(out_dir)
    arrays = {"originals": result.originals.numpy(), "mask": result.mask.numpy(),
              "starts": result.starts.numpy(), "completions": result.completions.numpy(),
              "samples": result.samples.numpy()}
    if labels is not None:
        arrays["labels"] = np.asarray(labels)

    with all_or_nothing():  # the figure, then the arrays: both or neither
        png = save_inpainting_figure(out / "inpaint.png", result)
        save_npz(out / "inpaint.npz", **arrays)
    return png, out / "inpaint.npz"


def classifier_consistency(result: Inpainting, labels: torch.Tensor, extractor) -> dict[str, float]:
    """How an independent classifier (a ``metrics`` extractor with ``logits``) reads the
    completions, for the algorithms.md §9 check that they are consistent digits.

    ``completions``: fraction of completions read as the image's label; ``originals``: the
    same for the full images (the ceiling); ``masked``: for the observed part alone with the
    free pixels black (the floor the chains must beat); ``chains_agree``: fraction of images
    whose K completions all get one class; ``classes_per_image``: mean number of distinct classes
    among an image's K completions (> 1 shows the chains do not all make the same guess).
    """
    n, k = result.completions.shape[:2]
    labels = torch.as_tensor(labels).reshape(-1)[:n].long()
    if len(labels) != n:
        raise InputError(f"{len(labels)} labels for {n} inpainted images")

    def read(x: torch.Tensor) -> torch.Tensor:
        return extractor.logits(x.float()).argmax(1).cpu()

    comp = read(result.completions.reshape(n * k, *result.completions.shape[2:])).reshape(n, k)
    masked = torch.where(result.mask, result.originals, torch.zeros_like(result.originals))
    distinct = torch.tensor([len(set(row.tolist())) for row in comp], dtype=torch.float64)
    return {"completions": float((comp == labels[:, None]).double().mean()),
            "originals": float((read(result.originals) == labels).double().mean()),
            "masked": float((read(masked) == labels).double().mean()),
            "chains_agree": float((distinct == 1).double().mean()),
            "classes_per_image": float(distinct.mean()), "images": n, "chains": k}


def load_images(data: DataConfig | str, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``n`` images of a split of ``data`` (a DataConfig, or a data set name) as k/256
    floats (N, C, H, W) (algorithms.md §1, no noise), and their labels (or None)."""
    dc = DataConfig(name=data) if isinstance(data, str) else data
    if n < 1:
        raise InputError(f"n={n}: expected >= 1 images")
    if dc.name in TOYS:
        raise InputError(f"inpainting needs an image data set; this model was trained on "
                         f"data.name={dc.name!r}")
    s = load_split(dc, split)
    raw = torch.from_numpy(np.ascontiguousarray(s.images[:n]))
    images = parzen_space(raw).reshape(raw.shape)  # pixels k/256 without noise, floats as stored
    labels = None if s.labels is None else torch.from_numpy(np.asarray(s.labels[:n]))
    return images, labels


def _check_image_shape(shape: tuple[int, ...]) -> None:
    if len(shape) != 3:
        raise InputError(f"inpainting needs image data (C, H, W); this model's states have shape "
                         f"{tuple(shape)}")
