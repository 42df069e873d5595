"""Fine-tune a GPT-2-architecture language model with DP-SGD on a text file of your own.

    pip install "dpplat[lm]"      # adds Hugging Face transformers
    python examples/finetune_language_model.py --text notes.txt --epsilon 8 --epochs 3
    python examples/finetune_language_model.py --text notes.txt --checkpoint ./gpt2 --lora 8

Each non-empty line of the file is one example, so the guarantee protects each line: the
model's output changes by at most what (epsilon, delta) allows whether any one line was in the
file or not. Put one record (a message, a note, a document) on each line. Lines are cut to
``--block-size`` tokens and padded; pad tokens are masked from attention and from the loss, so
they add nothing to any line's gradient.

``--checkpoint DIR`` fine-tunes a local Hugging Face folder (its config, weights and tokenizer,
read without network). Without it, a small GPT-2 with random weights and a byte-level
vocabulary is trained from scratch, which runs anywhere. ``--lora RANK`` freezes the model and
trains low-rank adapters on its linear layers (the frozen weights cost no per-sample work).

Three things differ from non-private fine-tuning, each because DP needs it:
- GPT-2 ties its output layer to its input embedding; per-sample clipping treats each module
  as one clipping group, so the output layer gets its own copy of the weight.
- Position ids are passed for every row: Hugging Face's default, one row of positions shared
  by the batch, would mix the samples' gradients in the position embedding.
- The loss is each line's mean token loss, then the mean over lines. The usual mean over all
  tokens of the batch would make each line's weight depend on the other lines' lengths.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from dpplat import PrivacyEngine
from dpplat.models.lora import add_lora

IGNORE = -100  # the label of a pad position: cross-entropy leaves it out


def byte_tokenizer():
    """Bytes as tokens (0-255) and 256 as the pad token: a vocabulary that needs no files."""
    return (lambda line: list(line.encode("utf-8"))), 256, 257


def read_lines(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if len(lines) < 2:
        raise SystemExit(f"{path}: need at least two non-empty lines (each line is one example), found {len(lines)}.")
    return lines


def encode(lines: list[str], tokenize, pad: int, block: int) -> TensorDataset:
    """Token ids (padded with ``pad``) and the mask of real tokens, one row per line."""
    ids = torch.full((len(lines), block), pad, dtype=torch.long)
    mask = torch.zeros(len(lines), block, dtype=torch.long)
    for i, line in enumerate(lines):
        tokens = tokenize(line)[:block]
        ids[i, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[i, :len(tokens)] = 1
    return TensorDataset(ids, mask)


def build_model(args, vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    if args.checkpoint:
        model = GPT2LMHeadModel.from_pretrained(args.checkpoint, local_files_only=True)
    else:
        config = GPT2Config(vocab_size=vocab, n_positions=args.block_size, n_embd=args.width, n_layer=args.layers,
                            n_head=args.heads, bos_token_id=vocab - 1, eos_token_id=vocab - 1,
                            tie_word_embeddings=False)
        model = GPT2LMHeadModel(config)
    if model.lm_head.weight is model.transformer.wte.weight:  # one weight in two clipping groups: untie it
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    if args.lora:
        add_lora(model, rank=args.lora)
    return model


def line_losses(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each line's mean next-token loss over its own real tokens."""
    positions = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    labels = ids.masked_fill(mask == 0, IGNORE)[:, 1:]
    tokens = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    counts = (labels != IGNORE).sum(1).clamp_min(1)
    return tokens.sum(1) / counts


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", required=True, type=Path, help="a UTF-8 text file, one example per line")
    parser.add_argument("--checkpoint", default=None, help="a local Hugging Face GPT-2 folder to fine-tune")
    parser.add_argument("--lora", type=int, default=0, metavar="RANK", help="train LoRA adapters of this rank only")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--delta", type=float, default=None, help="default: 1 / (10 x the number of lines)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="expected lines per step (Poisson sampling)")
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--block-size", type=int, default=64, help="tokens per line, after truncation")
    parser.add_argument("--layers", type=int, default=2, help="without --checkpoint: transformer blocks")
    parser.add_argument("--width", type=int, default=64, help="without --checkpoint: the model width")
    parser.add_argument("--heads", type=int, default=2, help="without --checkpoint: attention heads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)

    if args.checkpoint:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.checkpoint, local_files_only=True)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        tokenize, vocab = (lambda line: tokenizer(line)["input_ids"]), len(tokenizer)
    else:
        tokenize, pad, vocab = byte_tokenizer()
    lines = read_lines(args.text)
    data = encode(lines, tokenize, pad, args.block_size)
    delta = args.delta if args.delta is not None else 1 / (10 * len(lines))
    model = build_model(args, vocab)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=args.lr)
    loader = DataLoader(data, batch_size=min(args.batch_size, len(lines)))
    engine = PrivacyEngine()
    dp_model, optimizer, loader = engine.make_private_with_epsilon(
        module=model, optimizer=optimizer, data_loader=loader, target_epsilon=args.epsilon, target_delta=delta,
        epochs=args.epochs, max_grad_norm=args.max_grad_norm)
    print(f"{len(lines)} lines, {sum(p.numel() for p in trainable):,} trainable parameters, "
          f"noise multiplier {optimizer.noise_multiplier:.3f}")
    history = []
    for epoch in range(args.epochs):
        dp_model.train()
        total, count = 0.0, 0
        for ids, mask in loader:
            optimizer.zero_grad()
            if len(ids):  # an empty Poisson batch still takes its step: noise alone
                losses = line_losses(dp_model, ids, mask)
                losses.mean().backward()
                total, count = total + float(losses.sum()), count + len(ids)
            optimizer.step()
        history.append(total / max(count, 1))
        print(f"epoch {epoch + 1}: mean line loss {history[-1]:.3f} (perplexity {math.exp(history[-1]):.1f}), "
              f"epsilon {engine.get_epsilon(delta):.2f}")
    statement = engine.privacy_statement(delta)
    print(statement)
    return {"losses": history, "epsilon": engine.get_epsilon(delta), "delta": delta, "model": model}


if __name__ == "__main__":
    main()
