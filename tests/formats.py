"""Test helper: datasets written in each format fastpggan reads, with the pixels and labels a reader must give.

Each maker writes into a folder and returns a Made: the --data path, the images the cache must hold at its full
resolution (uint8 (N, C, R, R)) and the int64 labels (or None). The files are laid out as their real
counterparts are (CIFAR-10's cifar-10-batches-py/ and its .tar.gz, MNIST's idx files, LSUN's lmdb with image ids
as keys), but small.
"""

import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import tarfile
from typing import NamedTuple, Optional

import numpy as np
from PIL import Image

from official import fixture


class Made(NamedTuple):
    path: str
    images: np.ndarray
    labels: Optional[np.ndarray]


# ---- official TFRecords (the genuine ones are in tests/fixtures/official; this writer makes variations of them)


def tfrecords(tmp_path, name="rgb16_cond3") -> Made:
    """A copy of an official dataset of tests/fixtures/official/tfrecords (written by the official exporter)."""
    dst = os.path.join(str(tmp_path), name)
    shutil.copytree(fixture(f"tfrecords/{name}"), dst)
    exp = np.load(fixture(f"tfrecords/{name}_expected.npz"))
    top = max(int(k[-2:]) for k in exp.files if k.startswith("images_r"))
    lab = exp["labels_onehot_in_record_order"].argmax(1) if "labels_onehot_in_record_order" in exp.files else None
    return Made(dst, exp[f"images_r{top:02d}"], lab)


def _masked_crc(data):
    import google_crc32c

    c = google_crc32c.value(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _example_bytes(shape, data):
    """A tf.train.Example with int64 `shape` and bytes `data`, in protobuf wire format written out by hand (so the
    reader is not tested against itself)."""

    def varint(n):
        out = b""
        while True:
            b, n = n & 0x7F, n >> 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    def field(num, payload):  # length-delimited field
        return varint(num << 3 | 2) + varint(len(payload)) + payload

    packed = b"".join(varint(v) for v in shape)
    shape_feature = field(3, field(1, packed))  # Feature.int64_list { value: [packed] }
    data_feature = field(1, field(1, data))  # Feature.bytes_list { value: [data] }
    entries = field(1, field(1, b"shape") + field(2, shape_feature)) + field(
        1, field(1, b"data") + field(2, data_feature)
    )
    return field(1, entries)  # Example.features


def write_tfrecord(path, images):
    """A TFRecord file of uint8 (C, H, W) images, framed and CRC'd as TFRecordWriter writes them."""
    with open(path, "wb") as f:
        for img in images:
            rec = _example_bytes(img.shape, np.ascontiguousarray(img).tobytes())
            head = struct.pack("<Q", len(rec))
            f.write(head + struct.pack("<I", _masked_crc(head)) + rec + struct.pack("<I", _masked_crc(rec)))


def record_spans(path):
    """(start, data start, end) of each record of a TFRecord file."""
    spans, data = [], open(path, "rb").read()
    pos = 0
    while pos < len(data):
        n = struct.unpack("<Q", data[pos : pos + 8])[0]
        spans.append((pos, pos + 12, pos + 12 + n + 4))
        pos += 12 + n + 4
    return spans


# ---- LSUN lmdb


def lsun(tmp_path, n=6, corrupt=(), kinds=("webp", "jpeg")) -> Made:
    """An lmdb database shaped like LSUN's: 40-hex-digit image ids as keys, webp/jpeg bytes of non-square images
    as values. `images` is None here: what create_lsun makes depends on the resolution (see lsun_expected)."""
    import lmdb

    rng = np.random.default_rng(7)
    path = os.path.join(str(tmp_path), "bedroom_train_lmdb")
    env = lmdb.open(path, map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i in range(n):
            h, w = [(40, 56), (64, 36), (33, 47), (50, 50), (29, 70), (72, 45)][i % 6]
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            buf = io.BytesIO()
            img.save(buf, format=kinds[i % len(kinds)].upper(), quality=90)
            value = b"not an image at all" if i in corrupt else buf.getvalue()
            txn.put(hashlib.sha1(str(i).encode()).hexdigest().encode(), value)
    env.close()
    os.remove(os.path.join(path, "lock.mdb"))  # as LSUN ships it: data.mdb only
    return Made(path, None, None)


def lsun_expected(path, resolution, limit=None):
    """What official create_lsun makes of each value, with Pillow alone: decode, RGB, the numpy centre crop of
    dataset_tool.py L421-422, PIL resize with ANTIALIAS (LANCZOS). Undecodable values are skipped."""
    import lmdb

    out = []
    env = lmdb.open(path, readonly=True, lock=False)
    with env.begin() as txn:
        for _, value in txn.cursor():
            try:
                img = np.asarray(Image.open(io.BytesIO(value)).convert("RGB"))
            except OSError:
                continue
            crop = np.min(img.shape[:2])
            img = img[
                (img.shape[0] - crop) // 2 : (img.shape[0] + crop) // 2,
                (img.shape[1] - crop) // 2 : (img.shape[1] + crop) // 2,
            ]
            img = Image.fromarray(img, "RGB").resize((resolution, resolution), Image.LANCZOS)
            out.append(np.asarray(img).transpose(2, 0, 1))
            if len(out) == limit:
                break
    env.close()
    return np.stack(out)


# ---- CIFAR-10 python batches


def _batch_pickle(x, y, bytes_keys=False):
    d = {
        "batch_label": "training batch",
        "labels": [int(v) for v in y],
        "data": x.reshape(len(x), -1),
        "filenames": [f"img_{i}.png" for i in range(len(x))],
    }
    if bytes_keys:
        d = {k.encode(): v for k, v in d.items()}
    return pickle.dumps(d, protocol=2)


def cifar(tmp_path, per_batch=3, archive=False, replace=None) -> Made:
    """cifar-10-batches-py/data_batch_1..5 (and test_batch, which is not read), or their .tar.gz. `replace`:
    {batch number: pickle bytes} puts other bytes in a batch."""
    rng = np.random.default_rng(3)
    root = os.path.join(str(tmp_path), "cifar-10-batches-py")
    os.makedirs(root)
    xs, ys = [], []
    for b in range(1, 7):
        x = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch)
        name = f"data_batch_{b}" if b <= 5 else "test_batch"
        data = (replace or {}).get(b) or _batch_pickle(x, y, bytes_keys=b == 2)
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
        if b <= 5:
            xs.append(x)
            ys.append(y)
    made = Made(str(tmp_path), np.concatenate(xs), np.concatenate(ys).astype(np.int64))
    if archive:
        tgz = os.path.join(str(tmp_path), "cifar-10-python.tar.gz")
        with tarfile.open(tgz, "w:gz") as tar:
            tar.add(root, arcname="cifar-10-batches-py")
        shutil.rmtree(root)
        return made._replace(path=tgz)
    return made


class Payload:
    """Unpickling this calls open(path, 'w'): creates a file, which proves code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_batch(marker):
    x = np.zeros((2, 3072), np.uint8)
    return pickle.dumps({"data": x, "labels": [0, 1], "hook": Payload(marker)}, protocol=2)


# ---- MNIST idx


def _idx(array):
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return head + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def mnist(tmp_path, n=12, gz=True, dotted=False) -> Made:
    """train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] (or the `.idx3-ubyte` spelling), 28x28.
    `images` is what official create_mnist makes: zero-padded by 2 on each side to 32x32."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = rng.integers(0, 10, n).astype(np.uint8)
    root = os.path.join(str(tmp_path), "mnist")
    os.makedirs(root)
    sep = "." if dotted else "-"
    for stem, arr in ((f"train-images{sep}idx3-ubyte", x), (f"train-labels{sep}idx1-ubyte", y)):
        raw = _idx(arr)
        path = os.path.join(root, stem + (".gz" if gz else ""))
        with gzip.open(path, "wb") if gz else open(path, "wb") as f:
            f.write(raw)
    padded = np.pad(x[:, None], [(0, 0), (0, 0), (2, 2), (2, 2)], "constant", constant_values=0)
    return Made(root, padded, y.astype(np.int64))


def idx_bytes(array):
    return _idx(array)


# ---- the formats fastpggan read before: image folder, zip, npz


def image_folder(tmp_path, n=6) -> Made:
    """PNG files in two class folders, 16x16 RGB."""
    rng = np.random.default_rng(11)
    root = os.path.join(str(tmp_path), "pngs")
    x = rng.integers(0, 256, (n, 3, 16, 16), dtype=np.uint8)
    labels = np.arange(n) % 2
    for i in range(n):
        os.makedirs(os.path.join(root, f"class{labels[i]}"), exist_ok=True)
        Image.fromarray(x[i].transpose(1, 2, 0)).save(os.path.join(root, f"class{labels[i]}", f"{i:03d}.png"))
    order = sorted(range(n), key=lambda i: f"class{labels[i]}/{i:03d}.png")  # the reader's order
    return Made(root, x[order], labels[order].astype(np.int64))


def image_zip(tmp_path) -> Made:
    made = image_folder(tmp_path)
    path = os.path.join(str(tmp_path), "pngs.zip")
    shutil.make_archive(path[:-4], "zip", made.path)
    return made._replace(path=path)


def npz(tmp_path) -> Made:
    rng = np.random.default_rng(12)
    x = rng.integers(0, 256, (7, 1, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 4, 7)
    path = os.path.join(str(tmp_path), "arrays.npz")
    np.savez(path, images=x, labels=y)
    return Made(path, x, y.astype(np.int64))


def every_format(tmp_path, kind) -> Made:
    """One small dataset of each kind --data reads (LSUN with its 16x16 images in `images`)."""
    makers = {
        "folder": image_folder,
        "zip": image_zip,
        "npz": npz,
        "tfrecords": tfrecords,
        "lsun": lambda p: lsun(p, n=4),
        "cifar10": cifar,
        "cifar10.tar.gz": lambda p: cifar(p, archive=True),
        "mnist.gz": mnist,
        "mnist": lambda p: mnist(p, gz=False),
    }
    os.makedirs(str(tmp_path), exist_ok=True)
    made = makers[kind](tmp_path)
    if kind == "lsun":
        made = made._replace(images=lsun_expected(made.path, 16))
    return made


FORMATS = ["folder", "zip", "npz", "tfrecords", "lsun", "cifar10", "cifar10.tar.gz", "mnist.gz", "mnist"]
