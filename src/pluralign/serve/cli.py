"""`pluralign serve --model DIR [--reward DIR|gold ...] [--host 127.0.0.1 --port 8000] [--api-key-file F]`."""

from __future__ import annotations

import argparse
import dataclasses

from pluralign.serve.config import ServeConfig

LISTS = {"rewards": "--reward", "models": "--models", "cors_origins": "--cors-origin"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server with per-request alignment controls")
    for f in dataclasses.fields(ServeConfig):
        flag = LISTS.get(f.name, "--" + f.name.replace("_", "-"))
        helptext = f.metadata["help"]
        if f.name in LISTS:
            p.add_argument(flag, dest=f.name, action="append", default=[], help=helptext + " (repeatable)")
        elif f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=helptext)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(flag, dest=f.name, type=kind, default=f.default, required=f.name == "model", help=helptext)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pluralign.errors import ConfigError

    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"pluralign serve needs the serve extra: pip install 'pluralign[serve]' ({e})") from None
    from pluralign.decode.rewards import check_source
    from pluralign.models.load import resolve
    from pluralign.serve.limits import load_keys
    from pluralign.serve.loading import named_reward, serving_device
    from pluralign.serve.runner import listen, serve

    cfg = ServeConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeConfig)})
    # Each check below fails before the server starts. A model that exists but will not load (bad weights, an
    # unknown hub id) can only fail while loading; the server then stops and exits 2 too (`runner.serve`).
    for flag, model in [("--model", cfg.model)] + [("--models", m) for m in cfg.models]:
        resolve(model, f"{flag} {model}")  # a missing path at once, where loading would retry the hub first
    for spec in cfg.rewards:
        check_source(named_reward(spec)[1], "--reward")
    load_keys(cfg.api_key_file)
    serving_device(cfg.device)
    sock = listen(cfg.host, cfg.port)  # a port in use fails here
    port = sock.getsockname()[1]  # the one chosen, with --port 0
    print(f"pluralign serve: {cfg.model} on http://{cfg.host}:{port} (Ctrl-C drains and stops)", flush=True)
    serve(cfg, sock)
    return 0

