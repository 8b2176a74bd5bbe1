"""Held-out perplexity of a causal LM: the quality number that `moe-compile eval` reports.

The text is tokenised with the model folder's own `tokenizer.json` (the `tokenizers`
library), cut into non-overlapping windows of `window` tokens, and scored in fp32 with
batches of windows in a fixed order, so the same model and text give the same number on
every run: perplexity = exp(mean next-token cross-entropy over every predicted token).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from moe_compile.errors import InvalidInput, one_line
from moe_compile.finite import check_finite_values

WINDOW = 128
BATCH = 16
HELD_OUT_FILE = "heldout.txt"  # shipped beside each built-in model's weights

Logits = Callable[[torch.Tensor], torch.Tensor]
"""What perplexity scores: token windows [B, L] -> next-token logits [B, L, V], from any backend."""


@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    loss: float  # mean next-token cross-entropy (nats)
    tokens: int  # tokens predicted
    vocab_size: int

    def to_json(self) -> dict:
        return {"perplexity": self.perplexity, "loss": self.loss, "tokens": self.tokens,
                "vocab_size": self.vocab_size}


def load_tokenizer(folder: Path):
    """The folder's tokenizer.json (a `tokenizers` Tokenizer); eval needs one."""
    from tokenizers import Tokenizer

    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise InvalidInput(f"{folder} has no tokenizer.json: eval needs the model's tokenizer to score text")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 (tokenizers raises a bare Exception for a bad file)
        raise InvalidInput(f"{path}: cannot read the tokenizer ({one_line(exc)})") from None


def windows(token_ids: list[int], window: int = WINDOW) -> torch.Tensor:
    """Non-overlapping windows [N, window] of a token stream (the tail that does not fill one is dropped)."""
    count = len(token_ids) // window
    if count == 0:
        raise InvalidInput(f"the evaluation text has {len(token_ids)} tokens, fewer than one window of {window}")
    return torch.tensor(token_ids[: count * window], dtype=torch.long).view(count, window)


def module_logits(model: torch.nn.Module) -> Logits:
    """A PyTorch causal LM (transformers' interface) as `Logits`, in eval mode."""
    model.eval()
    return lambda input_ids: model(input_ids=input_ids, use_cache=False).logits


@torch.no_grad()
def window_loss(logits_of: Logits, batch: torch.Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy over a batch of windows [B, L], and how many tokens it covers."""
    logits = logits_of(batch).float()  # [B, L, V]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum")
    return loss.item(), batch[:, 1:].numel()


def perplexity(logits_of: Logits, token_windows: torch.Tensor, vocab_size: int, batch: int = BATCH) -> Perplexity:
    """Perplexity of the model behind `logits_of` over `token_windows` [N, L]."""
    total, count = 0.0, 0
    for start in range(0, token_windows.shape[0], batch):
        loss, tokens = window_loss(logits_of, token_windows[start:start + batch])
        total, count = total + loss, count + tokens
    mean = total / count
    check_finite_values({"the mean next-token loss": mean}, f"perplexity over {count} tokens")
    return Perplexity(perplexity=math.exp(mean), loss=mean, tokens=count, vocab_size=vocab_size)


def held_out_text(folder: Path, text: str | Path | None = None) -> Path:
    """The text to score: `text` if given, else the folder's heldout.txt, else the demo's."""
    if text is not None:
        path = Path(text)
        if not path.is_file():
            raise InvalidInput(f"--text {path}: no such file")
        return path
    if (Path(folder) / HELD_OUT_FILE).is_file():
        return Path(folder) / HELD_OUT_FILE
    from moe_compile.compiler.demo import demo_model_folder

    return demo_model_folder() / HELD_OUT_FILE


def eval_windows(folder: Path, text: str | Path | None = None, window: int = WINDOW) -> torch.Tensor:
    """The held-out text of `folder`, tokenised by its tokenizer, as windows [N, window]."""
    path = held_out_text(folder, text)
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read the evaluation text ({one_line(exc)})") from None
    return windows(load_tokenizer(folder).encode(content).ids, window)
