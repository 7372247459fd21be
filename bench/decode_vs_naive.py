"""pluralign's decoders against the plain way of doing the same thing, same models, prompts and lengths.

1. Best-of-N (N = 16): `pluralign.decode` "bon" (each prompt prefilled once, its KV cache expanded to the
   16 samples, all prompts decoded as one batch, finished rows dropped) against a loop of single-sample
   `model.generate(do_sample=True)` calls, 16 per prompt. Both then score all candidates with the gold
   attributes and keep the best, so the measured time covers the whole BoN.
2. ARGS (k = 10, greedy, w = 1; Khanov et al., ICLR 2024): pluralign's "args" (reward-model KV cache of
   the shared prefix; the k candidates go through the RM as single-token steps; prompts batched) against
   the published algorithm implemented plainly: one prompt at a time, the policy with its HF KV cache,
   and at every step each of the k candidate prefixes re-scored by the reward model from scratch (one
   batched RM call over the k full sequences, no cache). As in the reference loop there is no EOS
   early stop: both sides generate exactly the token budget.

Models: the sandbox base model (`pluralign.sandbox.base.build_base`, default config) as the policy; the
reward model is a Llama sequence classifier of the same size on the same tokenizer (random weights: only
speed is measured here; outputs of the two ARGS implementations are compared for agreement).
Throughput = generated tokens / wall seconds, one CPU thread, fp32.

    .venv/bin/python bench/decode_vs_naive.py --quick
"""

from __future__ import annotations

import argparse
import time

import torch

from pluralign.cli import positive_int
from pluralign.decode.api import Controls, decode
from pluralign.decode.kv import encode_prompts, left_pad, pad_id_of
from pluralign.decode.rewards import GoldReward


def load_models(tiny: bool):
    from pluralign.sandbox.base import SandboxConfig, build_base, load
    from pluralign.sandbox.gold import eval_prompts

    model, tok = load(build_base(config=SandboxConfig.tiny() if tiny else SandboxConfig()))
    model.eval()
    from transformers import LlamaConfig, LlamaForSequenceClassification

    c = model.config
    rm_cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                         num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                         num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
                         pad_token_id=tok.pad_token_id, num_labels=1)
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(rm_cfg).eval()
    return model, tok, rm, eval_prompts


def bench_bon(model, tok, prompts, n, T) -> tuple[float, float]:
    gold = GoldReward()
    t0 = time.perf_counter()
    out = decode("bon", model, tok, prompts, reward=gold, controls=Controls(n=n, max_new_tokens=T, seed=0))
    ours_t = time.perf_counter() - t0
    ours_tokens = out.compute.tokens - sum(len(p) for p in encode_prompts(tok, prompts))
    t0 = time.perf_counter()
    naive_tokens = 0
    for p, ids in zip(prompts, encode_prompts(tok, prompts), strict=True):
        x = torch.tensor([ids])
        texts = []
        for _ in range(n):
            with torch.no_grad():
                y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=True, max_new_tokens=T,
                                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            gen = y[0, x.shape[1]:]
            naive_tokens += len(gen)
            texts.append(tok.decode(gen, skip_special_tokens=True))
        gold.score([p] * n, texts).sum(-1).argmax()
    naive_t = time.perf_counter() - t0
    return ours_tokens / ours_t, naive_tokens / naive_t


@torch.no_grad()
def naive_args(model, tok, rm, prompt_ids: list[int], k: int, w: float, T: int) -> list[int]:
    """The published ARGS loop, plainly: RM re-scores every candidate's full sequence at every step."""
    out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True)
    cache, logits, seq = out.past_key_values, out.logits[0, -1], list(prompt_ids)
    gen = []
    for _ in range(T):
        top, cand = torch.topk(logits, k)
        x = torch.tensor([seq + [z] for z in cand.tolist()])
        r = rm(input_ids=x).logits[:, 0]
        z = int(cand[int(torch.argmax(top + w * r))])
        gen.append(z)
        seq.append(z)
        out = model(input_ids=torch.tensor([[z]]), past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[0, -1]
    return gen


def bench_args(model, tok, rm, prompts, k, T) -> tuple[float, float, float]:
    ctl = Controls(w=1.0, max_new_tokens=T, extra={"k": k, "mode": "greedy", "eos": []})
    t0 = time.perf_counter()
    out = decode("args", model, tok, prompts, reward_model=rm, controls=ctl)
    ours_t = time.perf_counter() - t0
    ours_tokens = sum(len(t) for t in out.info["token_ids"])
    t0 = time.perf_counter()
    naive = [naive_args(model, tok, rm, ids, k, 1.0, T) for ids in encode_prompts(tok, prompts)]
    naive_t = time.perf_counter() - t0
    agree = sum(a == b for a, b in zip(out.info["token_ids"], naive, strict=True)) / len(prompts)
    t0 = time.perf_counter()  # ours one prompt at a time: the reward-model cache alone, without batching
    single = sum(len(decode("args", model, tok, [p], reward_model=rm, controls=ctl).info["token_ids"][0]) for p in prompts)
    single_rate = single / (time.perf_counter() - t0)
    return ours_tokens / ours_t, sum(map(len, naive)) / naive_t, agree, single_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer prompts and tokens (under 5 minutes)")
    ap.add_argument("--tiny", action="store_true", help="the tiny sandbox preset (tests)")
    ap.add_argument("--threads", type=positive_int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, rm, eval_prompts = load_models(args.tiny)
    P, T = (16, 32) if args.quick else (32, 48)
    prompts = eval_prompts(P)
    print(f"policy: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params; {P} prompts, {T} new tokens, "
          f"{args.threads} thread(s); pad id {pad_id_of(tok)}")
    left_pad(encode_prompts(tok, prompts), pad_id_of(tok))  # warm-up of the tokenizer path
    bench_bon(model, tok, prompts[:1], 2, 4)  # warm-up (imports, allocator) outside the timings
    bench_args(model, tok, rm, prompts[:1], 10, 4)
    bon_ours, bon_naive = bench_bon(model, tok, prompts, 16, T)
    print(f"BoN N=16   ours {bon_ours:9.1f} tok/s   loop of generate() {bon_naive:9.1f} tok/s   "
          f"ratio {bon_ours / bon_naive:.2f}")
    args_ours, args_naive, agree, args_single = bench_args(model, tok, rm, prompts, 10, T)
    print(f"ARGS k=10  ours {args_ours:9.1f} tok/s   plain ARGS (RM re-scores) {args_naive:9.1f} tok/s   "
          f"ratio {args_ours / args_naive:.2f}   identical outputs {agree:.0%}")
    print(f"  (ours one prompt at a time, RM cache without batching: {args_single:.1f} tok/s, "
          f"ratio {args_single / args_naive:.2f})")
    print(f"RESULT bon_ratio={bon_ours / bon_naive:.2f} args_ratio={args_ours / args_naive:.2f}")


if __name__ == "__main__":
    main()
