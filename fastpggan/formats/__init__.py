"""Readers of the dataset formats people have: official TFRecords, LSUN lmdb, CIFAR-10 batches, MNIST idx files,
and the restricted unpickler that reads pickles without running them. Each reader returns uint8 (N, C, H, W)
images (or yields them) and raw labels; fastpggan.sources turns them into a dataset source. They import only
fastpggan.errors and fastpggan.images.
"""

from . import cifar, idx, lsun, safe_pickle, tfrecords  # noqa: F401  (the readers, as formats.<name>)
