"""Synthetic stateful defenses whose rejection rule a test sets, and the MNIST setting the attack tests share."""

import torch

from dpplat.audits.attacks import create_attack
from dpplat.audits.defenses import StatefulDefense


class RadiusDefense(StatefulDefense):
    """A synthetic defense: a hit is any query within L2 ``radius`` of an accepted one."""

    def __init__(self, model, *, input_shape, radius, **kw):
        super().__init__(model, input_shape=input_shape, **kw)
        self.radius = radius
        self._clear()

    def _clear(self):
        self.stored = []

    def _digest(self, x):
        return x.flatten(1)

    def _lookup(self, digests, i):
        if not self.stored:
            return False, None
        d = (torch.stack(self.stored) - digests[i]).norm(dim=1)
        return bool(d.min() < self.radius), int(d.argmin())

    def _remember(self, digests, i):
        self.stored.append(digests[i])


class CountRule(StatefulDefense):
    """A defense with no memory of images: whether a query is rejected depends only on ``n`` and a count."""

    def __init__(self, model, *, input_shape, n, **kw):
        super().__init__(model, input_shape=input_shape, **kw)
        self.n = n

    def _clear(self):
        pass

    def _digest(self, x):
        return None

    def _remember(self, digests, i):
        pass


class RejectAfter(CountRule):
    """Accepts the first ``n`` queries, rejects everything after."""

    def _lookup(self, digests, i):
        return self.stats.queries > self.n, None


class RejectFirstOfBatch(CountRule):
    """Rejects the first ``n`` queries of every batch and nothing else: a share of stage 1's probes a test sets."""

    def _begin(self, digests):
        self._in_batch = 0

    def _lookup(self, digests, i):
        self._in_batch += 1
        return self._in_batch <= self.n, None


def setting(name, mnist_model, mnist_test, i):
    """Image i of the test set, a target, and a start image the model labels as the goal."""
    x, y = mnist_test
    predicted = mnist_model(x).argmax(1)
    correct = torch.nonzero(predicted == y).flatten()
    index = int(correct[i])
    label = int(y[index])
    target = (label + 1) % 10
    attack = create_attack(name, eps=0.3 if name in ("nes", "square") else 0.15, seed=1)
    goal = (predicted == target) if attack.targeted else (predicted != label)
    start = x[torch.nonzero(goal & (predicted == y)).flatten()[i]]
    return attack, x[index], label, target, start


class RecordingRadiusDefense(RadiusDefense):
    """RadiusDefense that keeps every batch it was asked, in order, and which of its queries it rejected."""

    def _clear(self):
        super()._clear()
        self.batches, self.rejected = [], []

    def query(self, x):
        self.batches.append(x.clone())
        response = super().query(x)
        self.rejected.append(response.rejected.clone())
        return response


class BlocksChangedDefense(RadiusDefense):
    """Sees which ``block`` x ``block`` blocks a query changes, as a block hash (PIHA) does with 7x7 blocks: a hit
    is a query that differs from an accepted one in fewer than ``radius`` blocks. One square reaches at most 9
    blocks however large it is; several small ones spread over as many blocks as there are squares."""

    def __init__(self, model, *, block, **kw):
        self.block = block
        super().__init__(model, **kw)

    def _digest(self, x):
        b = self.block
        return x.unfold(2, b, b).unfold(3, b, b).flatten(-2).flatten(1, 3)  # (N, blocks, b * b)

    def _lookup(self, digests, i):
        if not self.stored:
            return False, None
        changed = ((torch.stack(self.stored) - digests[i]).abs().amax(-1) > 1e-6).sum(1)
        return bool(changed.min() < self.radius), int(changed.argmin())


class BlockRadiusDefense(RadiusDefense):
    """Sees only 4x4 block means, as PIHA sees block sums: a hit is a query whose block means lie within L2
    ``radius`` of an accepted one's. Pixel noise of std s moves them by about 7 s / 4 on MNIST, noise on 2x2
    tiles by 7 s / 2, on 4x4 tiles by 7 s."""

    def _digest(self, x):
        return torch.nn.functional.avg_pool2d(x, 4).flatten(1)
