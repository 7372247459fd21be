"""`pluralign decode`: decoding-time alignment from the command line.

    pluralign decode --method bon --model DIR --reward gold --weights relevance=1,conciseness=0.5 \\
        --prompts prompts.jsonl --out out.jsonl --n 16

Prompts: a .txt file (one plain-text prompt per line) or .jsonl with a "prompt" field — plain text or a
list of chat messages ``[{"role": "user", "content": "..."}]`` — and optional per-request "weights",
"direction", "user", "group", "n", "beta", "w", "chat_template" overriding the command-line values.
``--chat-template`` (auto | always | never) says how prompts are rendered for the policy
(`pluralign.data.prompts`).

A model trained with a conditioning scheme (MAH-DPO heads, a rewarded soup, RiC or DPA prompts; see
`pluralign.conditioning`) is steered by each request's weights / direction / user / group; use
``--method sample`` for its own samples:

    pluralign decode --method sample --model runs/mahdpo/model --weights informativeness=0.7,conciseness=0.3 \\
        --prompts prompts.txt --out out.jsonl
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

from pluralign.data.formats import FORMATS
from pluralign.data.prompt_files import read_prompt_rows
from pluralign.data.prompts import CHAT_TEMPLATE_HELP, CHAT_TEMPLATE_MODES
from pluralign.errors import ConfigError, DataError

PER_REQUEST = ("weights", "direction", "user", "group", "n", "beta", "w", "constraints", "chat_template",
               "max_new_tokens", "temperature", "top_k", "top_p", "stop", "seed")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("decode", help="decoding-time alignment: best-of-N, guided search, fusion, steering")
    # argparse reads a value starting with "-" as an option unless it is one number: `--direction -1,0.5` (a
    # DPA direction may point anywhere) would be "expected one argument". Number lists count as numbers here.
    p._negative_number_matcher = re.compile(r"^-\.?\d[\d.eE+\-,]*$")
    p.add_argument("--method", required=True, help="decoder name (sample, bon, soft_bon, rejection, infalign, map, rps, "
                                                 "args, cd, cd_block, tq_star, genarm, mod, deal)")
    p.add_argument("--model", required=True, help="the policy: a model directory, a .gguf file or a hub id")
    p.add_argument("--reward", help="'gold' (sandbox attributes), a reward-model directory, or module:function "
                   "(returning [N] or [N, m] scores; `fn.objectives = [...]` names the m columns for --weights)")
    p.add_argument("--weights", help="objective weights: w1,w2,... or name=w,name=w")
    p.add_argument("--direction", help="preference direction (DPA) for a conditioned model: v1,v2,... or name=v,...")
    p.add_argument("--user", help="user id passed to per-user reward models and user-conditioned models")
    p.add_argument("--group", help="group passed to group-conditioned models")
    p.add_argument("--prompts", required=True, help="a .txt file (one prompt per line) or rows of any data format (JSONL, JSON, CSV, Parquet, a hub data set) with a prompt in any spelling and, per row, its own controls (weights, direction, user, n, max_new_tokens, temperature, stop, ...)")
    p.add_argument("--out", required=True, help="output .jsonl")
    p.add_argument("--n", type=int, default=8, help="candidates per prompt (BoN N, RPS k, blockwise K)")
    p.add_argument("--beta", type=float, default=1.0, help="β / λ of the tilt (soft BoN, rejection)")
    p.add_argument("--w", type=float, default=1.0, help="guidance weight (ARGS w, TQ* α, GenARM α, DeAL λ)")
    p.add_argument("--models", help="comma-separated extra model directories (genarm ARMs, mod objective models)")
    p.add_argument("--value-model", metavar="FILE", help="controlled decoding (cd, cd_block): a value head saved by "
                   "ValueModel.save after pluralign.decode.controlled.train_fudge, read over the policy (its trunk)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0, help="<= 0 for greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: the smallest set of tokens holding this "
                   "probability (1: off)")
    p.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="end an answer at this text (left out of it); repeatable")
    p.add_argument("--seed", type=int, default=0, help="random seed: a prompt's answer depends on the seed, the "
                   "prompt and the settings only, not on the other rows of the file (a repeated prompt draws afresh)")
    p.add_argument("--chat-template", default="auto", choices=CHAT_TEMPLATE_MODES, help=CHAT_TEMPLATE_HELP)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="method option into controls.extra (e.g. k=10, mode=greedy, form=forward_kl); repeatable")
    p.set_defaults(func=run)


def parse_weights(text: str | None, flag: str = "--weights") -> Any:
    """'1,0.5' -> [1.0, 0.5]; 'a=1,b=0.5' -> {'a': 1.0, 'b': 0.5} (`conditioning.parse_vector`)."""
    from pluralign.conditioning import parse_vector

    return parse_vector(text, flag) if text else None


def parse_extra(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:  # numbers written as --weights takes them (MAP's targets=0.5,0.2), else text
            try:
                out[k.strip()] = parse_weights(v) if "," in v or "=" in v else v
            except ConfigError:
                out[k.strip()] = v
    return out


def method_kwargs(method: str, reward: Any, tokenizer: Any, models: list[Any] | None = None) -> dict[str, Any]:
    """Keyword arguments a decoder needs beyond the contract: ARGS scores candidate prefixes with the
    reward model's own KV cache when the reward model reads the policy's tokens (the same vocabulary; it
    renders each prompt its own way, `decode.args.as_cached`); fusion decoders get the extra models. Shared
    by this command and `pluralign serve`."""
    from pluralign.decode.args import cacheable

    kwargs: dict[str, Any] = {}
    if method == "args" and cacheable(reward) and reward.encoder.tokenizer.get_vocab() == tokenizer.get_vocab():
        kwargs["reward_model"] = reward
    if models:
        kwargs["models"] = list(models)
    return kwargs


STEERING = ("weights", "direction", "user", "group")


def result_warnings(method: str, result: Any) -> list[str]:
    """What a decoder could not do as asked, which its output rows alone would hide."""
    out, n = [], len(result.texts)
    infeasible = [p for p, ok in enumerate(result.info.get("feasible", [])) if not ok]
    if infeasible:
        out.append(f"{method}: the targets are out of reach of the candidates of {len(infeasible)} of {n} prompt(s) "
                   f"(rows {infeasible[:10]}: \"feasible\": false; λ stopped at its bound): lower the targets or "
                   "draw more candidates (--n)")
    if result.info.get("exhausted"):
        out.append(f"{method}: {len(result.info['exhausted'])} of {n} prompt(s) accepted no candidate within the "
                   "tries and got their best-scoring one instead")
    return out


def unused_controls(model: Any, reward: Any, controls: list[Any], extra_models: list[Any] = (),
                    name: str = "the model") -> str:
    """'' when something reads every steering field the requests set, else a note of what nothing reads and
    why: a model decoded without a reward or further models (fusion weighs those) is steered only by its
    conditioning scheme (`pluralign.conditioning`), which reads some fields (a soup: weights; per-user
    vectors: user and group) and none of the others. Almost always a mistake: the wrong model directory,
    the wrong field (--direction to a soup), or a forgotten --reward. A reward (or models fused by weight)
    reads weights and user, never direction or group, which only a scheme reads."""
    scheme = getattr(model, "pluralign_conditioning", None)
    reads = scheme.reads if scheme is not None else ()
    weighed = reward is not None or bool(extra_models)
    unread = [f for f in STEERING if f not in reads and not (weighed and f in ("weights", "user"))
              and any(getattr(c, f) is not None for c in controls)]
    if not unread:
        return ""
    why = (f"{name} has no conditioning scheme (it was not trained to be steered)"
           if scheme is None else f"{name}'s conditioning scheme '{scheme.name}' reads only {', '.join(reads) or 'nothing'}")
    rest = "the reward reads only weights and user" if weighed else "no reward is given"
    return f"{', '.join(unread)} given but nothing reads them: {why} and {rest}"


def check_conditions(model: Any, base: Any, rows: list[Any], controls: list[Any]) -> None:
    """Every request's weights, direction and scores as the model's conditioning scheme reads them (decoding
    would say "request 3")."""
    scheme = getattr(model, "pluralign_conditioning", None)
    if scheme is None:
        return

    def problem(c: Any) -> tuple[str, str] | None:  # the scheme's message starts with its field
        try:
            scheme.condition_of_request(c)
        except ConfigError as e:
            field, _, why = str(e).partition(": ")
            return field, why
        return None

    _refuse_requests(base, rows, controls, problem)


def check_reward_weights(reward: Any, base: Any, rows: list[Any], controls: list[Any]) -> None:
    """Every request's weights against the reward's objectives before anything is generated, as the server
    checks them (`decode.rewards.weights_problem`): a wrong objective name or count stopped decoding after
    the candidates were drawn, with a message that named neither the flag nor the prompts file's row."""
    from pluralign.decode.rewards import weights_problem

    if reward is None:
        return

    def problem(c: Any) -> tuple[str, str] | None:
        why = weights_problem(reward, c.weights)
        return ("weights", why) if why else None

    _refuse_requests(base, rows, controls, problem)


def check_mod_weights(n_models: int, base: Any, rows: list[Any], controls: list[Any]) -> None:
    """MOD's weights, one per model in order (`decode.fusion.mod_weights`), before anything is generated."""
    from pluralign.decode.fusion import mod_weights

    def problem(c: Any) -> tuple[str, str] | None:
        try:
            mod_weights(c.weights, n_models, c.extra.get("form", "reverse_kl"))
        except ConfigError as e:
            return "weights", str(e)
        return None

    _refuse_requests(base, rows, controls, problem)


def check_same_vocab(tokenizer: Any, other: Any, policy: str, path: str) -> None:
    """Fusion adds the extra models' next-token log-probs token id by token id, so each must read the policy's
    vocabulary: a smaller one was an IndexError traceback mid-decode, one of the same size but other ids
    silent garbage."""
    from pluralign.models.load import vocabulary_mismatch

    if what := vocabulary_mismatch(tokenizer, other, ours_may_add=False):
        raise ConfigError(f"--models: {path} has another vocabulary than the policy {policy} ({what}); fusion "
                          "needs models sharing the policy's tokenizer")


def check_context(model: Any, tokenizer: Any, rows: list[Any], controls: list[Any]) -> None:
    """Every row's prompt as the policy renders it, and within the model's context window with its
    max_new_tokens, before decoding, each problem named by file, line and field: a prompt the chat template
    cannot render stopped the run with a message that named no row, and past a learned position table
    (GPT-2's) the whole batch failed with an IndexError traceback. (A conditioned model's statement is not
    counted: a few tokens.)"""
    from pluralign.data.prompts import template_errors
    from pluralign.decode.kv import context_window, encode_prompts, window_problem
    from pluralign.errors import PluralignError

    window = context_window(model)
    problems = []
    for row, c in zip(rows, controls, strict=True):
        try:
            n = len(encode_prompts(tokenizer, [row.fields["prompt"]], c.chat_template)[0])
        except (PluralignError, *template_errors()) as e:
            problems.append(row.problem("prompt", str(e)))
            continue
        if why := window_problem(n, c.max_new_tokens, window):
            problems.append(row.problem("prompt", why))
    if problems:
        raise DataError(problems)


def _refuse_requests(base: Any, rows: list[Any], controls: list[Any], problem: Any) -> None:
    """`problem(controls)` -> (field, why) or None for the command line's controls and each request's: a bad
    flag is named once (--weights), a bad row by its file, line and field."""
    if flagged := problem(base):
        raise ConfigError(f"--{flagged[0]}: {flagged[1]}")
    problems = [row.problem(*p) for row, c in zip(rows, controls, strict=True) if (p := problem(c))]
    if problems:
        raise DataError(problems)


def run(args: argparse.Namespace) -> int:
    from pluralign.decode.api import Controls, decode, get, names
    from pluralign.decode.controlled import ValueModel, missing_value_model
    from pluralign.decode.rewards import load_reward
    from pluralign.decode.sampler import eos_ids, finish_reason
    from pluralign.decode.steer import load_policy
    from pluralign.runs import atomic_write_jsonl, check_writable

    # fail on a bad name before loading anything, and on extra models the method would take and never read
    if "models" not in inspect.signature(get(args.method)).parameters and args.models:
        fusing = [name for name in names() if "models" in inspect.signature(get(name)).parameters]
        raise ConfigError(f"--models: method {args.method!r} reads no extra models; {' and '.join(fusing)} do")
    if args.value_model and "value_model" not in inspect.signature(get(args.method)).parameters:
        valued = [name for name in names() if "value_model" in inspect.signature(get(name)).parameters]
        raise ConfigError(f"--value-model: method {args.method!r} reads no value model; {' and '.join(valued)} do")
    if why := missing_value_model(args.method, args.value_model, args.reward):
        raise ConfigError(why)
    if args.models and not all(d.strip() for d in args.models.split(",")):  # 'a,' failed as "'' holds no model"
        raise ConfigError(f"--models {args.models!r}: an empty entry (a stray comma?); give model directories "
                          "separated by commas")
    suffix = Path(args.out).suffix.lower()
    if suffix in FORMATS and suffix != ".jsonl":  # JSON lines under a .csv name: pluralign then read it as CSV
        raise ConfigError(f"--out {args.out}: decode writes JSON lines, but pluralign reads a {suffix} file as "
                          f"{suffix[1:].upper()}; name it .jsonl", field="out")
    check_writable(args.out, "--out")  # found out only after every prompt was decoded
    rows = read_prompt_rows([args.prompts])
    base = Controls(weights=parse_weights(args.weights), direction=parse_weights(args.direction, "--direction"), group=args.group,
                    n=args.n, beta=args.beta, w=args.w, user=args.user,
                    max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, stop=args.stop, seed=args.seed,
                    chat_template=args.chat_template, extra=parse_extra(args.set))
    controls, problems = [], []
    for row in rows:  # a row's own controls: a bad one is named by file, line and field
        try:
            controls.append(base.replace(**{k: row.fields[k] for k in PER_REQUEST if k in row.fields}))
        except ConfigError as e:
            problems.append(row.problem(e.field, str(e)))
    if problems:
        raise DataError(problems)
    requests = [row.fields for row in rows]
    model, tokenizer = load_policy(args.model)  # a directory, a .gguf file or a hub id
    check_conditions(model, base, rows, controls)
    check_context(model, tokenizer, rows, controls)
    reward = load_reward(args.reward) if args.reward else None
    check_reward_weights(reward, base, rows, controls)
    if args.method == "mod" and args.models:
        check_mod_weights(1 + len(args.models.split(",")), base, rows, controls)
    extra_models = []
    for d in args.models.split(",") if args.models else []:
        extra, extra_tokenizer = load_policy(d)
        check_same_vocab(tokenizer, extra_tokenizer, args.model, d)
        extra_models.append(extra)
    # mod weighs its models by the weights; genarm's ARMs are weighed by --w / alpha and read no steering field
    unused = unused_controls(model, reward, controls, extra_models if args.method == "mod" else [], args.model)
    if unused:
        print(f"warning: {unused}", file=sys.stderr)
    kwargs = method_kwargs(args.method, reward, tokenizer, extra_models)
    if args.value_model:  # the head reads the policy's hidden states: the policy is its trunk
        kwargs["value_model"] = ValueModel.new(model).load(args.value_model)
    result = decode(args.method, model, tokenizer, [r["prompt"] for r in requests], reward=reward,
                    controls=controls, **kwargs)
    eos = eos_ids(tokenizer, model)
    rows = []
    for req, row, ids, c in zip(requests, result.rows(), result.info["token_ids"], controls, strict=True):
        rows.append({**{k: v for k, v in req.items() if k != "prompt"}, "prompt": req["prompt"], **row,
                     "tokens": len(ids), "finish_reason": finish_reason(ids, c.max_new_tokens, eos, tokenizer, c.stop)})
    atomic_write_jsonl(args.out, rows)
    for note in result_warnings(args.method, result):
        print(f"warning: {note}", file=sys.stderr)
    util = f"mean utility {result.utility.mean().item():.4f}" if result.utility is not None else "no reward given"
    print(f"decoded {len(rows)} prompts with {args.method}: {util}, "
          f"{result.compute.forward} forward passes, {result.compute.tokens} tokens, "
          f"{result.reward_compute.forward} reward evaluations -> {args.out}")
    return 0
