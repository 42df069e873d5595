"""Train a small CNN on MNIST under a privacy budget with dpplat's Python API.

This is the script to copy into your own project: the model, optimizer and data
loader are plain PyTorch; three lines make them private. It prints the privacy
statement and saves the run to the store so the dashboard can show it.

    python examples/train_with_budget.py --epsilon 2 --epochs 2
"""

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from dpplat import PrivacyEngine
from dpplat.data import load_dataset
from dpplat.models import create
from dpplat.store import RunStore


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epsilon", type=float, default=2.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset", type=int, default=None, help="train on this many examples (quick runs)")
    parser.add_argument("--store", default="dpplat.db")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    train_set = load_dataset("mnist", "train", subset=args.subset)
    test_set = load_dataset("mnist", "test", subset=2000 if args.subset else None)
    model = create("cnn", num_classes=10, in_channels=1, image_size=28)
    optimizer = torch.optim.SGD(model.parameters(), lr=2.0, momentum=0.9)
    loader = DataLoader(train_set, batch_size=256, shuffle=True)

    engine = PrivacyEngine(accountant="prv")
    model, optimizer, loader = engine.make_private_with_epsilon(
        module=model, optimizer=optimizer, data_loader=loader,
        target_epsilon=args.epsilon, target_delta=args.delta, epochs=args.epochs, max_grad_norm=1.0,
    )

    for epoch in range(args.epochs):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: epsilon so far {engine.get_epsilon(args.delta):.3f}")

    model.eval()
    with torch.no_grad():
        x, y = test_set.tensors
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    statement = engine.privacy_statement(args.delta)
    print(statement)
    print(f"test accuracy {accuracy:.2%}")

    store = RunStore(args.store)
    run_id = store.create_run(
        dataset="mnist", model="cnn", config=vars(args), noise_multiplier=statement.noise_multiplier,
        max_grad_norm=statement.max_grad_norm, clipping=statement.clipping, sample_rate=statement.sample_rate,
        dataset_size=statement.dataset_size, accountant=statement.accountant, target_epsilon=args.epsilon,
        delta=args.delta, epsilon=statement.epsilon, steps=statement.steps, accuracy=accuracy,
        status="finished", statement=str(statement),
    )
    print(f"run {run_id} saved to {store.path.resolve()}")
    return accuracy, statement


if __name__ == "__main__":
    main()
