"""Official PGGAN datasets: a folder of `<name>-rNN.tfrecords`, one per resolution 2^NN, and `<name>-rxx.labels`,
as official dataset_tool.py TFRecordExporter writes them (L30-92) and official dataset.py TFRecordDataset reads
them (L66-106). Read without TensorFlow.

A TFRecord file is a sequence of records: uint64 length, uint32 masked CRC-32C of the length, the data, uint32
masked CRC-32C of the data (masked = rotate right by 15, plus 0xa282ead8). Both CRCs are checked. The data is a
`tf.train.Example` protocol buffer with the features `shape` (int64 [C, H, W]) and `data` (one bytes value, the
uint8 pixels in C, H, W order).

Why these libraries: the framing is the few lines below; the CRCs come from google-crc32c (Google's C
implementation, with the hardware instruction where there is one) and the Example from protobuf, parsed against
its message declared here field for field (tensorflow/core/example/{example,feature}.proto; the map
`Features.feature` is wire-identical to a repeated key/value entry). The `tfrecord` package was not used: it
skips both CRCs, so it would read a flipped byte as data.

Each level is read from its own file, so it is byte for byte what the official trainer reads at that lod; the
folder is checked as official TFRecordDataset asserts (one channel count, square, every resolution from the
largest down to 4 present once), and the files must hold as many records as there are labels.
"""

import glob
import os
import struct
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import UserError

_MASK_DELTA = 0xA282EAD8


class RecordError(UserError):
    """A TFRecord file that is truncated, corrupt or not what it should hold; one line naming file and record."""

    def __init__(self, path: str, index: int, what: str):
        super().__init__(f"'{path}' record {index}: {what}")


def _crc32c():
    try:
        import google_crc32c
    except ImportError:
        raise UserError("reading TFRecords needs google-crc32c: run `pip install google-crc32c protobuf`") from None
    return google_crc32c.value


def masked_crc(data: bytes, crc=None) -> int:
    """TFRecord's masked CRC-32C of `data`."""
    c = (crc or _crc32c())(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _example_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="fastpggan_tf_example.proto", package="fastpggan_tf", syntax="proto3"
    )

    def message(name, *fields):
        m = proto.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            m.field.add(
                name=fname,
                number=number,
                type=ftype,
                label=label,
                **({"type_name": f".fastpggan_tf.{type_name}"} if type_name else {}),
            )

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", ("value", 1, F.TYPE_BYTES, rep, None))
    message("FloatList", ("value", 1, F.TYPE_FLOAT, rep, None))
    message("Int64List", ("value", 1, F.TYPE_INT64, rep, None))
    message(
        "Feature",
        ("bytes_list", 1, F.TYPE_MESSAGE, opt, "BytesList"),
        ("float_list", 2, F.TYPE_MESSAGE, opt, "FloatList"),
        ("int64_list", 3, F.TYPE_MESSAGE, opt, "Int64List"),
    )
    message("FeatureEntry", ("key", 1, F.TYPE_STRING, opt, None), ("value", 2, F.TYPE_MESSAGE, opt, "Feature"))
    message("Features", ("feature", 1, F.TYPE_MESSAGE, rep, "FeatureEntry"))
    message("Example", ("features", 1, F.TYPE_MESSAGE, opt, "Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("fastpggan_tf.Example"))


_EXAMPLE = []


def parse_image(record: bytes, path: str, index: int) -> np.ndarray:
    """A record's Example as uint8 (C, H, W), as official dataset.py parse_tfrecord_np (L24-28)."""
    if not _EXAMPLE:
        try:
            _EXAMPLE.append(_example_class())
        except ImportError:
            raise UserError("reading TFRecords needs protobuf: run `pip install protobuf google-crc32c`") from None
    from google.protobuf.message import DecodeError

    try:
        ex = _EXAMPLE[0].FromString(record)
    except DecodeError as e:
        raise RecordError(path, index, f"is not a tf.train.Example ({e})") from None
    feats = {e.key: e.value for e in ex.features.feature}
    if "shape" not in feats or "data" not in feats:
        raise RecordError(path, index, f"has features {sorted(feats)}, not 'shape' and 'data'")
    shape = list(feats["shape"].int64_list.value)
    data = list(feats["data"].bytes_list.value)
    if len(shape) != 3 or min(shape) < 1 or len(data) != 1:
        raise RecordError(path, index, f"shape {shape} with {len(data)} data values; expected [C, H, W] and one")
    if len(data[0]) != shape[0] * shape[1] * shape[2]:
        raise RecordError(path, index, f"holds {len(data[0])} bytes for shape {shape}")
    return np.frombuffer(data[0], dtype=np.uint8).reshape(shape)


def records(path: str, check: bool = True) -> Iterator[bytes]:
    """The data of every record of a TFRecord file, CRCs checked. With check=False only the framing is read (the
    length and its CRC; the data is skipped, and yields are b''), which counts the records of a large file fast.

    Raises RecordError for a file that ends inside a record or fails a CRC."""
    crc = _crc32c()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        index = 0
        while True:
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                raise RecordError(path, index, "the file ends inside its header (truncated)")
            length, length_crc = struct.unpack("<QI", head)
            if masked_crc(head[:8], crc) != length_crc:
                raise RecordError(path, index, "its length fails its CRC (corrupt)")
            if f.tell() + length + 4 > size:
                raise RecordError(path, index, f"declares {length} bytes, past the end of the file (truncated)")
            if not check:
                f.seek(length + 4, os.SEEK_CUR)
                index += 1
                yield b""
                continue
            data, tail = f.read(length), f.read(4)
            if masked_crc(data, crc) != struct.unpack("<I", tail)[0]:
                raise RecordError(path, index, "its data fails its CRC (corrupt)")
            index += 1
            yield data


class Folder:
    """An official TFRecords folder: its files by resolution, record count, channels and labels.

    Args:
        path: the folder `dataset_tool.py create_*` wrote.
    """

    def __init__(self, path: str):
        self.path = path
        files = sorted(glob.glob(os.path.join(glob.escape(path), "*.tfrecords")))
        if not files:
            raise UserError(f"'{path}' holds no .tfrecords files")
        self.files: Dict[int, str] = {}
        shapes = {}
        for p in files:
            first = next(records(p), None)
            if first is None:
                raise UserError(f"'{p}' holds no records")
            c, h, w = parse_image(first, p, 0).shape
            if c not in (1, 3) or h != w or h < 4 or h & (h - 1):
                raise RecordError(
                    p,
                    0,
                    f"holds a {c}x{h}x{w} image; official datasets hold 1 or 3 channels, square, a power of two >= 4",
                )
            if h in self.files:
                raise UserError(f"'{path}' holds two {h}x{h} files: '{self.files[h]}' and '{p}'")
            self.files[h], shapes[h] = p, (c, h, w)
        self.resolution = max(self.files)
        self.num_channels = shapes[self.resolution][0]
        for r, (c, _, _) in shapes.items():
            if c != self.num_channels:
                raise UserError(
                    f"'{self.files[r]}' holds {c}-channel images, '{self.files[self.resolution]}' "
                    f"{self.num_channels}-channel ones"
                )
        missing = [r for r in self.resolutions(self.resolution) if r not in self.files]
        if missing:
            raise UserError(
                f"'{path}' has no {missing[0]}x{missing[0]} file: an official dataset holds every "
                f"resolution from {self.resolution} down to 4"
            )
        self.count = sum(1 for _ in records(self.files[self.resolution], check=False))
        labels = sorted(glob.glob(os.path.join(glob.escape(path), "*.labels")))
        self.labels_file: Optional[str] = labels[0] if labels else None  # official: the first *.labels

    @staticmethod
    def resolutions(top: int) -> List[int]:
        return [top >> i for i in range(int(np.log2(top)) - 1)]

    def read_labels(self) -> Optional[np.ndarray]:
        """The labels file's array (official: one-hot float32 (N, classes)), or None."""
        if self.labels_file is None:
            return None
        try:
            lab = np.load(self.labels_file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read '{self.labels_file}' as a numpy array ({str(e).splitlines()[0]})") from None
        if lab.ndim != 2 or lab.shape[0] != self.count:
            raise UserError(
                f"'{self.labels_file}' holds labels shaped {lab.shape}; the dataset has {self.count} "
                "records, so (N, label_size) = "
                f"({self.count}, K) was expected"
            )
        return lab

    def level(self, res: int, limit: Optional[int] = None) -> Iterator[Tuple[int, np.ndarray]]:
        """(index, uint8 (C, res, res)) of the first `limit` records of the `res` file, each checked (CRCs, shape).
        Read to its end, the file must hold as many records as the largest."""
        path, n = self.files[res], min(self.count, limit or self.count)
        shape = (self.num_channels, res, res)
        i = -1
        for i, rec in enumerate(records(path)):
            if i == n < self.count:  # the first `limit` records were asked for: the rest is not read
                return
            if i < n:
                img = parse_image(rec, path, i)
                if img.shape != shape:
                    raise RecordError(path, i, f"holds a {img.shape} image; this file's records are {shape}")
                yield i, img
        if i + 1 != self.count:
            raise UserError(
                f"'{path}' holds {i + 1} records and '{self.files[self.resolution]}' {self.count}: the "
                "levels of an official dataset hold the same images in the same order"
            )
