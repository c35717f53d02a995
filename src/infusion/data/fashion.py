"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; Zalando Research, MIT licence): 70,000 28×28
grey images of garments in ten classes, in MNIST's format, split and dequantisation
(algorithms.md §1) — ``data.name = "fashion"``.

Sources, in order: a folder of the four IDX files (``infusion data --name fashion --idx-dir
DIR`` or $INFUSION_FASHION_IDX), the folder Debian's package installs them in (``apt-get
install dataset-fashion-mnist``: /usr/share/datasets/fashion-mnist), then the official
downloads. Downloads are checked against the sha256 of the official .gz files; local files
against the sha256 of their decompressed contents (Debian's package recompresses the files
without their name in the gzip header, so its .gz bytes differ while the images do not).
"""

from __future__ import annotations

from pathlib import Path

from .cache import Split
from .mnist import IdxSet, ensure_idx_set, load_idx_set

# Class names of the labels 0–9 (the data set's README).
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")

FASHION = IdxSet(
    name="fashion", title="Fashion-MNIST", env="INFUSION_FASHION_IDX",
    sources=("idx", "system", "mirrors"),
    # The official .gz files (md5s, as torchvision lists them: 8d4fb7e6…, 25c81989…,
    # bef4ecab…, bb300cfd…), their sha256 as pinned by public dataset manifests, and sizes.
    gz={"train-images-idx3-ubyte": (
            "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc", 26_421_880),
        "train-labels-idx1-ubyte": (
            "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc", 29_515),
        "t10k-images-idx3-ubyte": (
            "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229", 4_422_102),
        "t10k-labels-idx1-ubyte": (
            "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf", 5_148)},
    # sha256 of the decompressed IDX files (47,040,016, 60,008, 7,840,016 and 10,008 bytes)
    raw={"train-images-idx3-ubyte":
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
         "train-labels-idx1-ubyte":
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
         "t10k-images-idx3-ubyte":
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
         "t10k-labels-idx1-ubyte":
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"},
    mirrors=("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
             "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
    system_dirs=("/usr/share/datasets/fashion-mnist",),
    how="or on Debian and Ubuntu install them with `apt-get install dataset-fashion-mnist`")


def ensure_fashion(**kwargs) -> Path:
    """:func:`~.mnist.ensure_idx_set` for Fashion-MNIST (same keywords)."""
    return ensure_idx_set(FASHION, **kwargs)


def load_fashion(split: str, **kwargs) -> Split:
    """One Fashion-MNIST split ("train" 50k, "valid" 10k, "test" 10k, as MNIST's,
    algorithms.md §1): uint8 images (N,1,28,28) and int64 labels 0–9 (:data:`CLASSES`)."""
    return load_idx_set(FASHION, split, **kwargs)
