"""`pluralign losses [NAME]`: every usable loss name with its kind and hyper-parameters (defaults).

Names are the registered losses plus their aliases (another paper's name, or a loss with the preference
recipe options that make the method, e.g. WPO). Any of them goes after `pluralign train` or in `loss=`;
hyper-parameters go in `loss_params.NAME=value`.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("losses", help="list every loss name with its kind and hyper-parameters",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", help="describe one loss (inputs, hyper-parameters, reference)")
    p.add_argument("--kind", help="only losses of this kind (pairwise, unpaired, listwise, reward)")
    p.set_defaults(func=run)


def rows(kind: str | None = None) -> list[dict]:
    """One row per usable name: name, kind, hyper-parameters with defaults, what it is, recipe options."""
    from pluralign import losses

    out = []
    for name in losses.names():
        info = losses.describe(name)
        out.append({"name": name, "kind": info.kind, "hyperparams": dict(info.hyperparams),
                    "needs_reference": info.needs_reference, "doc": info.doc, "alias_of": None, "recipe": {}})
    for name, a in losses.aliases().items():
        info = losses.describe(a.target)
        out.append({"name": name, "kind": info.kind, "hyperparams": dict(info.hyperparams),
                    "needs_reference": info.needs_reference, "doc": a.doc or info.doc, "alias_of": a.target,
                    "recipe": dict(a.recipe)})
    out.sort(key=lambda r: (r["kind"], r["name"]))
    return [r for r in out if kind is None or r["kind"] == kind]


def _line(r: dict) -> str:
    params = ", ".join(f"{k}={v!r}" for k, v in r["hyperparams"].items()) or "-"
    extra = f"  (= {r['alias_of']}" + (f" with {', '.join(f'{k}={v!r}' for k, v in r['recipe'].items())}"
                                       if r["recipe"] else "") + ")" if r["alias_of"] else ""
    return f"{r['name']:<18} {r['kind']:<9} {params}{extra}"


def run(args: argparse.Namespace) -> int:
    from pluralign import losses
    from pluralign.errors import ConfigError

    if args.kind is not None and args.kind not in losses.KINDS:
        raise ConfigError(f"--kind {args.kind!r}: expected one of {', '.join(losses.KINDS)}")
    if args.name:
        match = [r for r in rows() if r["name"] == args.name]
        if not match:
            losses.get(args.name)  # ConfigError naming the closest valid names
        r = match[0]
        print(_line(r))
        info = losses.describe(args.name)
        print(f"  inputs: {', '.join(info.inputs)}; reference model: {'yes' if info.needs_reference else 'no'}")
        print(f"  {r['doc']}")
        return 0
    print(f"{'name':<18} {'kind':<9} hyper-parameters (defaults)")
    for r in rows(args.kind):
        print(_line(r))
    return 0
