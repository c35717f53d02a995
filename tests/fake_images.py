"""Small files in the real formats of the image data sets, made by the tests themselves,
and a local HTTP server on 127.0.0.1 to fetch them from."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cifar_tarball(path: Path, per_batch: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """A CIFAR-10 python tarball (cifar-10-batches-py/data_batch_1..5, test_batch) with
    per_batch random images each; returns the rows as stored (uint8 (n, 3072)) and labels."""
    rng = np.random.default_rng(seed)
    rows, labels = {}, {}
    with tarfile.open(path, "w:gz") as tf:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for name in names:
            x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            y = [int(v) for v in rng.integers(0, 10, per_batch)]
            blob = pickle.dumps({b"batch_label": name.encode(), b"labels": y, b"data": x,
                                 b"filenames": [b"f.png"] * per_batch}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
            rows[name], labels[name] = x, np.array(y)
    return {"rows": rows, "labels": labels}


def svhn_mats(folder: Path, n_train: int = 20, n_test: int = 6, seed: int = 0) -> dict:
    """train_32x32.mat and test_32x32.mat: X (32, 32, 3, N) uint8, y (N, 1) in 1..10."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
        out[split] = (x, y)
    return out


def image_bytes(size: tuple[int, int], colour, fmt: str, centre=None, centre_side: int = 0,
                mode: str = "RGB") -> bytes:
    """An image of one colour, optionally with a centred square of another colour."""
    from PIL import Image

    img = Image.new(mode, size, colour)
    if centre is not None:
        w, h = size
        left, top = (w - centre_side) // 2, (h - centre_side) // 2
        img.paste(centre, (left, top, left + centre_side, top + centre_side))
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=95) if fmt == "JPEG" else img.save(buf, format=fmt)
    return buf.getvalue()


def celeba_zip(path: Path, numbers: list[int], size=(44, 54)) -> None:
    """An img_align_celeba.zip of JPEGs named by number (img_align_celeba/000001.jpg …)."""
    with zipfile.ZipFile(path, "w") as zf:
        for k in numbers:
            data = image_bytes(size, (k % 256, 100, 200), "JPEG")
            zf.writestr(f"img_align_celeba/{k:06d}.jpg", data)


def evil_tar(path: Path, kind: str) -> None:
    """A tar whose one bad member climbs out (``..``), is absolute, or is a symlink."""
    with tarfile.open(path, "w:gz") as tf:
        ok = tarfile.TarInfo("cifar-10-batches-py/readme.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        if kind == "symlink":
            bad = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(bad)
        else:
            bad = tarfile.TarInfo("../evil.txt" if kind == "dotdot" else "/tmp/evil.txt")
            bad.size = 4
            tf.addfile(bad, io.BytesIO(b"evil"))


@contextlib.contextmanager
def serve(folder: Path):
    """Serve folder over HTTP on 127.0.0.1 (a free port); yields the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address) -> None:
            pass  # a client that hangs up early (size-limit tests) is expected, not an error

    handler = functools.partial(Quiet, directory=str(folder))
    server = Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
