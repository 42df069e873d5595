import pytest
import torch

from dpplat.audits.target import pixel_images, train_target


@pytest.fixture(scope="session")
def mnist_model(tmp_path_factory):
    """A small MNIST CNN (one epoch on 5,000 images, about 95% accurate), trained once per session."""
    torch.manual_seed(0)
    return train_target("mnist", epochs=1, subset=5000, cache_dir=tmp_path_factory.mktemp("target"))


@pytest.fixture(scope="session")
def mnist_test():
    return pixel_images("mnist", "test", subset=1000, seed=3)


class Flat(torch.nn.Module):
    """A stand-in classifier for defense tests, where only the detector matters."""

    def __init__(self, shape):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(int(torch.tensor(shape).prod()), 10)

    @torch.no_grad()
    def forward(self, x):
        return self.linear(x.flatten(1))
