"""The shared loop of token-level decoders (ARGS, controlled decoding, TQ*, GenARM, MOD).

The policy's prompt is prefilled once; at each step a *guide* turns the policy's next-token logits into
a choice for every active row, then the policy (and the guide's own models) advance by that token.
Finished rows leave the batch of every model at once.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from pluralign.decode.api import Controls
from pluralign.decode.kv import Compute, LMState, encode_prompts, pad_id_of
from pluralign.decode.sampler import (
    Generation,
    RowStreams,
    draw,
    eos_ids,
    eval_mode,
    occurrences,
    row_seed,
    warp_logits,
)


class Guide(Protocol):
    """choose: next tokens [b] for the active rows (ids into the prompt list); keep: drop finished rows
    (index into the active rows); advance: feed the chosen tokens to the guide's own models."""

    def choose(self, logits: torch.Tensor, rows: list[int]) -> torch.Tensor: ...
    def advance(self, tokens: torch.Tensor) -> None: ...
    def keep(self, index: list[int]) -> None: ...


def pick(scores: torch.Tensor, greedy: torch.Tensor, temperature: torch.Tensor, streams: RowStreams | None,
         rows: list[int]) -> torch.Tensor:
    """Per row: argmax of scores [B, C] where greedy[b], else a draw from softmax(scores / temperature[b]) at
    the next uniform of the row's own stream (`streams`, rows `rows`; None: the global generator), so a
    seeded request decodes alike whatever is batched with it."""
    out = scores.argmax(-1)
    sampled = ~greedy
    if bool(sampled.any()):
        u = streams.uniforms(rows) if streams is not None else torch.rand(len(rows), dtype=torch.float64)
        s = scores[sampled].float() / temperature[sampled, None].clamp(min=1e-8)
        out[sampled] = draw(torch.softmax(s, dim=-1), u[sampled.cpu()]).to(out.device)
    return out


def choice_logq(scores: torch.Tensor, idx: torch.Tensor, greedy: torch.Tensor, temperature: torch.Tensor
                ) -> torch.Tensor:
    """log q(choice) of the distribution `pick` drew from (0 for greedy rows): with the model's log-prob
    of the same token it gives a Monte-Carlo estimate of KL(decoder ‖ model) per sequence."""
    lq = torch.log_softmax(scores.float() / temperature[:, None].clamp(min=1e-8), dim=-1)
    lq = lq.gather(-1, idx[:, None]).squeeze(-1)
    return torch.where(greedy, torch.zeros_like(lq), lq)


def row_settings(controls: list[Controls], rows: list[int], device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(greedy [b] bool, temperature [b]) for the active rows; mode comes from extra["mode"] when given."""
    greedy = [controls[r].extra.get("mode", "sample" if controls[r].temperature > 0 else "greedy") == "greedy"
              for r in rows]
    temp = [max(controls[r].temperature, 1e-8) for r in rows]
    return torch.tensor(greedy, device=device), torch.tensor(temp, device=device)


def nucleus(scores: torch.Tensor, temperature: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """`scores` [b, C] with the entries outside the top-k / top-p of softmax(scores / temperature) at -inf: the
    set `sample` keeps (temperature first, as transformers and vLLM do); `pick` then applies the temperature.
    Taken of the untempered distribution, the nucleus at temperature 2 was another set of tokens. Every
    token-level decoder filters its final scores with it, so --top-k / --top-p mean what they mean for
    sampling (with a zero guidance weight, exactly plain sampling's distribution)."""
    if not top_k and top_p >= 1.0:
        return scores
    kept = torch.isfinite(warp_logits(scores / temperature[:, None].clamp(min=1e-8), 1.0, top_k, top_p))
    return scores.masked_fill(~kept, float("-inf"))


def top_k_candidates(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(top logits [B, k], token ids [B, k]) of the raw logits."""
    k = min(k, logits.shape[-1])
    return torch.topk(logits, k, dim=-1)


def run_tokenwise(model: Any, tokenizer: Any, prompts: list[Any], controls: list[Controls], make_guide,
                  *, compute: Compute | None = None) -> tuple[list[str], Generation, Compute]:
    """Decode with `make_guide(prompt_ids, compute, streams) -> Guide` (`streams`: each row's random stream, for `pick`); returns texts, the generation
    record (tokens, model log-probs) and the compute of the policy plus the guide's models."""
    compute = compute if compute is not None else Compute()
    prompt_ids = encode_prompts(tokenizer, prompts, [c.chat_template for c in controls])
    with eval_mode(model):
        state = LMState.from_ids(model, prompt_ids, pad_id_of(tokenizer, model), compute=compute)
        # extra["eos"]: explicit EOS ids ([] = run to max_new_tokens, like the reference ARGS loop)
        eos = eos_ids(tokenizer, model, controls[0].extra.get("eos") if controls else None)
        gen = Generation(len(prompts), tokenizer, eos=eos, stop=controls[0].stop if controls else None,
                         max_new_tokens=[c.max_new_tokens for c in controls])
        # each row its own random stream, of its own request's seed (`streams.RowStreams`)
        occ = occurrences([(c.seed, tuple(ids)) for c, ids in zip(controls, prompt_ids, strict=True)])
        streams = RowStreams([None if c.seed is None else row_seed(c.seed, ids, k) for c, ids, k in
                              zip(controls, prompt_ids, occ, strict=True)])
        guide = make_guide(prompt_ids, compute, streams)
        rows = list(range(len(prompts)))
        while True:
            tok = guide.choose(state.logits, rows)
            logp = torch.log_softmax(state.logits, -1).gather(-1, tok[:, None]).squeeze(-1)
            gen.append(rows, tok, logp, getattr(guide, "last_logq", None))
            keep = [j for j, r in enumerate(rows) if gen.reason[r] is None]
            if not keep:
                break
            if len(keep) < len(rows):
                state.select(keep)
                guide.keep(keep)
                tok = tok[keep]
                rows = [rows[j] for j in keep]
            state.advance(tok)
            guide.advance(tok)
    return [gen.text(r) for r in range(len(prompts))], gen, compute


def tokenwise_info(gen: Generation) -> dict:
    """token ids, the model's sequence log-probs and the decoder's own (0 for greedy rows): their
    difference per sequence is a Monte-Carlo sample of KL(decoder ‖ model)."""
    return {"token_ids": gen.tokens, "model_logps": [sum(lp) for lp in gen.logps],
            "decoder_logps": list(gen.proposal)}
