"""A store seeded by the real code paths: a tiny training run and a tiny membership-inference audit."""

import math

import pytest

from dpplat.audits.mia import MIAConfig
from dpplat.audits.plans import run_and_store
from dpplat.store import RunStore
from dpplat.training import TrainConfig, train


@pytest.fixture(scope="session")
def seeded_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("dash") / "dpplat.db"
    store = RunStore(path)
    config = TrainConfig(dataset="mnist", model="mlp", epsilon=3.0, epochs=2, batch_size=128, subset=1024,
                         test_subset=300, lr=0.5, max_grad_norm=1.0, accountant="rdp", name="seeded")
    result = train(config, store=store, quiet=True)
    audit = MIAConfig(dataset="mnist", epsilon=math.inf, models=4, challenges=32, base_size=300, workers=1,
                      train=TrainConfig(model="mlp", epochs=8, batch_size=64, lr=0.1, accountant="rdp"))
    audit_id, results = run_and_store(audit, store, run_id=result.run_id)
    store.close()
    return {"path": path, "run": result, "audit_id": audit_id, "audit": results}
