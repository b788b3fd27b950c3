"""Which images each minibatch takes: a fresh shuffle per epoch from (seed, epoch), resumable from its state."""

import numpy as np

from .errors import UserError


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
            take = perm[self.pos : self.pos + batch]
            if not len(take):  # load_state_dict keeps pos in [0, n): never reached, but never a silent endless loop
                raise RuntimeError(f"the sampler is stuck at position {self.pos} of {self.n}")
            out.append(take)
            batch -= len(take)
            self.pos += len(take)
            if self.pos >= self.n:
                self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
        return np.concatenate(out)

    def state_dict(self):
        return {"seed": self.seed, "epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s: dict) -> None:
        """Resume from state_dict()'s dict; a state this sampler cannot continue from is one UserError."""
        try:
            seed, epoch, pos = (int(s[k]) for k in ("seed", "epoch", "pos"))
        except (KeyError, TypeError, ValueError):
            raise UserError(
                f"the checkpoint's sampler state {s!r} is not seed, epoch and pos as whole numbers; "
                "the checkpoint is damaged"
            ) from None
        if not (0 <= seed < 2**32 and epoch >= 0 and 0 <= pos < self.n):
            raise UserError(
                f"the checkpoint's sampler state (seed {seed}, epoch {epoch}, pos {pos}) does not fit "
                f"a dataset of {self.n} images (0 <= pos < {self.n}); the checkpoint is damaged or of "
                "another dataset"
            )
        self.seed, self.epoch, self.pos, self._perm = seed, epoch, pos, None
