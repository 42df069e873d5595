"""The examples run in the suite on tiny settings, so they never rot."""

import importlib.util
from pathlib import Path

import pytest
import torch

from dpplat.store import RunStore

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_with_budget(tmp_path, capsys):
    accuracy, statement = load("train_with_budget").main(
        ["--epsilon", "3", "--epochs", "1", "--subset", "2048", "--store", str(tmp_path / "s.db")]
    )
    assert statement.epsilon <= 3.0 and statement.steps == 8
    assert accuracy > 0.2
    assert "add/remove-one" in capsys.readouterr().out
    run = RunStore(tmp_path / "s.db").get_run(1)
    assert run.epsilon == pytest.approx(statement.epsilon)


def test_audit_a_model(tmp_path, capsys):
    results = load("audit_a_model").main(["--epsilon", "inf", "--models", "4", "--challenges", "32",
                                          "--base-size", "300", "--epochs", "8", "--workdir", str(tmp_path)])
    assert results["bayes"]["lower_bound"] > 0
    assert "claimed epsilon inf vs empirical lower bound" in capsys.readouterr().out


def test_attack_a_defense(tmp_path, capsys):
    outcomes = load("attack_a_defense").main(["--attack", "nes", "--images", "2", "--budget", "5000", "--epochs", "1",
                                              "--workdir", str(tmp_path)])
    assert all(r.stopped == "rejected" and not r.success for r in outcomes["standard"])
    assert any(r.success for r in outcomes["oars"])
    out = capsys.readouterr().out
    assert "Blacklight flags" in out and "nes oars" in out


def test_your_model_and_data(tmp_path, capsys, monkeypatch):
    from dpplat.models.imported import import_builder

    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    import_builder.cache_clear()
    result, report = load("your_model_and_data").main(["--epsilon", "8", "--epochs", "2", "--train-size", "1200",
                                                       "--audit-models", "2", "--folder", str(tmp_path)])
    run = RunStore(tmp_path / "dpplat.db").get_run(result.run_id)
    assert run.model == "your_model_and_data:small_cnn" and run.config["family"] == "user"
    assert run.dataset == str(tmp_path / "your_data.npz") and result.accuracy > 0.4  # 5 classes: chance is 20%
    assert report["models"] == 2 and RunStore(tmp_path / "dpplat.db").audits()[0]["status"] == "finished"
    assert "Review both: dpplat dashboard" in capsys.readouterr().out


def write_text(path, lines=96, seed=0):
    """Short sentences from a small vocabulary, one per line: text a language model learns within an epoch."""
    import random

    rng = random.Random(seed)
    words = "the cat sat on a mat and the dog ran to its red ball".split()
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(lines)))
    return path


def test_finetune_language_model_from_scratch(tmp_path, capsys):
    """A random-initialised GPT-2 with a byte vocabulary, trained on a text file under a budget."""
    text = write_text(tmp_path / "notes.txt")
    result = load("finetune_language_model").main(
        ["--text", str(text), "--epochs", "2", "--epsilon", "8", "--batch-size", "32", "--block-size", "40",
         "--width", "32", "--layers", "1", "--lr", "3e-3"])
    assert result["epsilon"] <= 8.0 and result["delta"] == pytest.approx(1 / 960)
    assert result["losses"][1] < result["losses"][0] < 6.0  # log(257) = 5.55 at the start
    assert f"satisfies ({result['epsilon']:.3f}, " in capsys.readouterr().out  # the privacy statement is printed


def test_finetune_language_model_from_a_local_checkpoint_with_lora(tmp_path):
    """A Hugging Face folder as a user has it (tied embeddings, its own tokenizer): the output layer is untied, and
    with --lora only the adapters change."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    text = write_text(tmp_path / "notes.txt")
    bpe = ByteLevelBPETokenizer()
    bpe.train([str(text)], vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(tmp_path))
    folder = tmp_path / "gpt2"
    GPT2TokenizerFast(vocab_file=str(tmp_path / "vocab.json"), merges_file=str(tmp_path / "merges.txt")) \
        .save_pretrained(folder)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=1, n_head=2, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(folder)
    before = GPT2LMHeadModel.from_pretrained(folder, local_files_only=True).state_dict()
    assert before["lm_head.weight"].data_ptr() == before["transformer.wte.weight"].data_ptr(), "saved tied"
    result = load("finetune_language_model").main(
        ["--text", str(text), "--checkpoint", str(folder), "--lora", "4", "--epochs", "1", "--batch-size", "32",
         "--block-size", "32"])
    model = result["model"]
    assert model.lm_head.base.weight is not model.transformer.wte.weight
    after = model.state_dict()
    adapters = [name for name in after if "lora_" in name]
    assert adapters and all(torch.equal(after[name], before[name.replace("base.", "")])
                            for name in after if "lora_" not in name and name.replace("base.", "") in before)
    assert any(not torch.equal(after[name], torch.zeros_like(after[name])) for name in adapters if "lora_b" in name)
