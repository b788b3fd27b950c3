"""Which images each minibatch takes: a fresh shuffle per epoch from (seed, epoch), resumable from its state."""
import numpy as np


class Sampler:
    """Endless shuffled minibatches of indices; a fresh permutation per epoch from (seed, epoch). Resumable."""

    def __init__(self, num_images, seed=0):
        self.n, self.seed, self.epoch, self.pos = num_images, seed, 0, 0
        self._perm = None

    def _permutation(self):
        if self._perm is None:
            self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        return self._perm

    def next(self, batch):
        out = []
        while batch > 0:
            perm = self._permutation()
            take = perm[self.pos:self.pos + batch]
            out.append(take)
            batch -= len(take)
            self.pos += len(take)
            if self.pos >= self.n:
                self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
        return np.concatenate(out)

    def state_dict(self):
        return {"seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s):
        self.seed, self.epoch, self.pos, self._perm = int(s["seed"]), int(s["epoch"]), int(s["pos"]), None
