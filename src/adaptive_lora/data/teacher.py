"""The teacher of a planted task: the base model plus a seeded low-rank delta.

`data/planted.py` builds a planted task from these pieces: the deltas (`make_deltas`:
one random B·A of rank k per planted module, normalised to the module's weight), the
teacher as forward hooks on the base model (`teacher`: exactly removable, so the base
model is left untouched), the mean per-token KL of the teacher from the base model at
response positions (`ResponseKL`), the scale that makes that KL a target (`fit_scale`:
bracketed bisection on a log scale) and seeded sampling (`sample`: temperature 1, one
generator per sequence, so a sample does not depend on what it was batched with).

Everything runs in fp32 without autocast on the model's device: a planted data set is
a fixed input of a study, made once and cached, not a step whose speed matters.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from adaptive_lora import progress as run_progress
from adaptive_lora.errors import UserError
from adaptive_lora.model.inventory import ModuleInfo, weight_matrix


@dataclass(frozen=True)
class Delta:
    """One planted module's delta at scale 1: ΔW = b @ a, with ‖b a‖_F = ‖W‖_F."""

    name: str
    a: torch.Tensor  # (k, d_in)
    b: torch.Tensor  # (d_out, k)


def make_deltas(
    model: torch.nn.Module, sites: Sequence[tuple[Sequence[ModuleInfo], int, int]]
) -> list[Delta]:
    """A delta per module of each site `(modules, rank, seed)`, in site then module order.

    A and B are standard normal draws (float64, from a CPU generator seeded by the site's
    seed, so the same on every machine) and B is rescaled so that ‖B·A‖_F equals the
    module's own weight norm: a scale s then means ‖ΔW‖ = s‖W‖ on every planted module.
    """
    modules = dict(model.named_modules())
    deltas = []
    for infos, rank, seed in sites:
        generator = torch.Generator().manual_seed(seed)
        for info in infos:
            a = torch.randn(rank, info.d_in, generator=generator, dtype=torch.float64)
            b = torch.randn(info.d_out, rank, generator=generator, dtype=torch.float64)
            weight = weight_matrix(modules[info.name]).detach().to("cpu", torch.float64)
            b = b * (weight.norm() / (b @ a).norm())
            deltas.append(Delta(info.name, a.float(), b.float()))
    return deltas


def _add_delta(module, inputs, output, *, a: torch.Tensor, b: torch.Tensor):
    x = inputs[0]
    return output + ((x.to(a.dtype) @ a.T) @ b.T).to(output.dtype)


@contextlib.contextmanager
def teacher(model: torch.nn.Module, deltas: Sequence[Delta], scale: float) -> Iterator[None]:
    """The model computes as the teacher (W + scale·ΔW on each planted module) inside.

    Forward hooks add scale·B·A·x to each planted module's output; they are removed on
    leaving, so the base model's weights never change (scale 0: the base model itself).
    """
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    handles = []
    try:
        for delta in deltas if scale else ():
            hook = functools.partial(
                _add_delta, a=delta.a.to(device), b=(delta.b * scale).to(device)
            )
            handles.append(modules[delta.name].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass(frozen=True)
class Sampled:
    """A prompt and its response tokens; `complete`: the response ended with EOS."""

    prompt: list[int]
    response: list[int]
    complete: bool


def _labelled(seq: Sampled, eos_id: int) -> tuple[list[int], int]:
    """(ids, first label position): the response tokens, and EOS where the sample ended."""
    ids = seq.prompt + seq.response + ([eos_id] if seq.complete else [])
    return ids, len(seq.prompt)


class ResponseKL:
    """Mean per-token KL(teacher ‖ base) over the response tokens of fixed sequences.

    Each response token's position contributes the KL of the two next-token
    distributions that predict it (the positions the response-only loss trains on, the
    EOS included where the sequence ended); the mean is over all those positions, token
    weighted like a test loss. The base model's log-probabilities are computed once and
    kept, so each scale costs one forward pass of the teacher.
    """

    def __init__(self, model, deltas, seqs: Sequence[Sampled], *, eos_id: int, pad_id: int,
                 batch_size: int):  # fmt: skip
        self.model, self.deltas, self.batch_size = model, deltas, batch_size
        self.batches = [
            _pack([_labelled(s, eos_id) for s in seqs[i : i + batch_size]], pad_id)
            for i in range(0, len(seqs), batch_size)
        ]
        self.n_tokens = sum(int(mask.sum()) for _, _, mask in self.batches)
        if self.n_tokens == 0:
            raise UserError("the planted task's KL has no response token to be measured on")
        self.base = [self._log_probs(batch, 0.0) for batch in self.batches]

    @torch.no_grad()
    def _log_probs(self, batch, scale: float) -> torch.Tensor:
        ids, attention, label_mask = batch
        device = next(self.model.parameters()).device
        with teacher(self.model, self.deltas, scale):
            logits = self.model(
                input_ids=ids.to(device), attention_mask=attention.to(device)
            ).logits
        # Position t predicts token t + 1: keep the positions whose next token is a label.
        predicting = label_mask[:, 1:].to(device)
        return torch.log_softmax(logits[:, :-1][predicting].float(), dim=-1)

    def __call__(self, scale: float) -> float:
        total = 0.0
        for batch, base in zip(self.batches, self.base):
            log_t = self._log_probs(batch, scale)
            total += float((log_t.exp() * (log_t - base)).sum(dtype=torch.float64))
        return total / self.n_tokens


def _pack(rows: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded ids, attention mask and label mask (True where a token is a label)."""
    longest = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), longest), dtype=torch.long)
    labels = torch.zeros((len(rows), longest), dtype=torch.bool)
    for row, (tokens, first_label) in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        attention[row, : len(tokens)] = 1
        labels[row, first_label : len(tokens)] = True
    return ids, attention, labels


@dataclass(frozen=True)
class ScaleFit:
    scale: float
    kl: float
    evaluations: list[tuple[float, float]]  # every (scale, KL) tried, in order


def fit_scale(
    kl_at: Callable[[float], float],
    target: float,
    tolerance: float,
    *,
    max_evaluations: int = 40,
    limits: tuple[float, float] = (1e-6, 1e4),
) -> ScaleFit:
    """The scale whose KL is within `tolerance` × `target` of `target`.

    Bracketed search on a log scale: from scale 1, step by ×4 (or ÷4) until the KL
    crosses the target, then bisect the bracket at its geometric midpoint until the KL
    is within tolerance. A KL that does not reach the target inside `limits` (it
    saturates: the planted modules cannot move the output that far) or a search that
    does not converge is a one-line `UserError`.
    """
    tried: list[tuple[float, float]] = []

    def at(scale: float) -> float:
        tried.append((scale, kl_at(scale)))
        if len(tried) > max_evaluations:
            best = min(tried, key=lambda t: abs(t[1] - target))
            raise UserError(
                f"planted task: no scale gave KL {target} ± {tolerance:.0%} in {max_evaluations} "
                f"tries (closest: scale {best[0]:.4g}, KL {best[1]:.4g}); change target_kl"
            )
        return tried[-1][1]

    close = lambda kl: abs(kl - target) <= tolerance * target  # noqa: E731
    scale, kl = 1.0, at(1.0)
    # Bracket: step by x4 (KL below the target) or /4 (above) until it crosses.
    step = 4.0 if kl < target else 0.25
    low = high = scale
    while not close(kl) and (kl < target) == (step > 1):
        if not limits[0] <= scale * step <= limits[1]:
            raise UserError(
                f"planted task: the KL from the base model reaches only {kl:.4g} nats at scale "
                f"{scale:.4g} (target_kl {target}); plant more modules or a higher rank, or "
                "lower target_kl"
            )
        scale *= step
        kl = at(scale)
    low, high = sorted((scale, scale / step))
    # Bisect the bracket [low, high] at its geometric midpoint.
    while not close(kl):
        if kl < target:
            low = scale
        else:
            high = scale
        scale = math.sqrt(low * high)
        kl = at(scale)
    return ScaleFit(scale, kl, tried)


def item_seed(seed: int, purpose: str, index: int) -> int:
    """A 63-bit seed for sequence `index` of a sampling `purpose`, from the sample seed."""
    digest = hashlib.sha256(f"{seed}:{purpose}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class BuildProgress:
    """While a planted set is built: prints `label: done/total (seconds)` (`total` 0: no
    total) to stderr at most every few seconds, and nothing for work that ends sooner (a
    tiny model's set is made in silence); each count also goes to the run's progress
    (`adaptive_lora.progress`, whose `Progress` is the record a study's executor passes on)."""

    def __init__(self, label: str, total: int, every: float = 5.0):
        self.label, self.total, self.every = label, total, every
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, note: str = "") -> None:
        now = time.perf_counter()
        if now - self.last >= self.every or (done == self.total and now - self.start >= self.every):
            self.last = now
            count = f"{done}/{self.total}" if self.total else f"{done}"
            print(f"{self.label}: {count}{note} ({now - self.start:.0f} s)",
                  file=sys.stderr, flush=True)  # fmt: skip
            # and to the study: building a set takes minutes, which a study would
            # otherwise see as a silent, stalled run
            run_progress.report(self.label, done, self.total)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: Sequence[list[int]],
    seeds: Sequence[int],
    *,
    max_new_tokens: int,
    batch_size: int,
    eos_id: int,
    pad_id: int,
    vocab_size: int,
    progress: BuildProgress | None = None,
) -> list[Sampled]:
    """A temperature-1 sample after each prompt, up to `max_new_tokens`, ending at EOS.

    Prompts are batched by length (left-padded, KV cache); each sequence draws its
    tokens by inverse CDF from its own generator (`seeds[i]`), so its sample does not
    depend on its batch. Tokens the tokenizer does not know (a model's padded
    vocabulary beyond `vocab_size`) are never drawn.
    """
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    out: dict[int, Sampled] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seeds[i]) for i in chunk]
        tick = (lambda ended: progress(len(out) + ended)) if progress is not None else None
        drawn = _sample_batch(
            model, [prompts[i] for i in chunk], generators, max_new_tokens, eos_id, pad_id,
            vocab_size, tick,
        )  # fmt: skip
        for i, (tokens, complete) in zip(chunk, drawn):
            out[i] = Sampled(list(prompts[i]), tokens, complete)
        if progress is not None:
            progress(len(out))
    return [out[i] for i in range(len(prompts))]


def _draw(logits: torch.Tensor, generators: Sequence[torch.Generator], vocab_size: int):
    """One token per row by inverse CDF (float64 on the CPU): the same draw on any device."""
    probs = torch.softmax(logits[:, :vocab_size].to("cpu", torch.float64), dim=-1)
    cdf = probs.cumsum(-1)
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators])
    token = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(1)
    return token.clamp(max=vocab_size - 1)


def _sample_batch(model, prompts, generators, max_new_tokens, eos_id, pad_id, vocab_size, tick):
    """(response tokens, ended with EOS) per prompt of one left-padded batch; `tick(n)`
    after each token step, with the number of the batch's samples that have ended."""
    device = next(model.parameters()).device
    longest = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (longest - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    rows = list(range(len(prompts)))
    answers: list[list[int]] = [[] for _ in prompts]
    complete = [False] * len(prompts)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                logits_to_keep=1)  # fmt: skip
    cache, next_position = out.cache, positions[:, -1] + 1
    for step in range(max_new_tokens):
        token = _draw(out.logits[:, -1], [generators[r] for r in rows], vocab_size)
        live = []
        for j, (row, value) in enumerate(zip(rows, token.tolist())):
            if value == eos_id:
                complete[row] = True
            else:
                answers[row].append(value)
                live.append(j)
        if step + 1 == max_new_tokens or not live:
            break
        if tick is not None:
            tick(len(prompts) - len(live))
        if len(live) < len(rows):  # finished samples leave the batch and the cache
            index = torch.tensor(live, device=device)
            cache.batch_select_indices(index)
            mask, next_position = mask[index], next_position[index]
            rows = [rows[j] for j in live]
            token = token[live]
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], 1)
        out = model(input_ids=token[:, None].to(device), attention_mask=mask,
                    position_ids=next_position[:, None], cache=cache, use_cache=True)  # fmt: skip
        cache, next_position = out.cache, next_position + 1
    return list(zip(answers, complete))
