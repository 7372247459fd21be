"""`objectives.drop_ties`: signed pairs that carry no preference on a weighted objective leave training, and
the kept ones still read their own rows of a reference cache shared with runs of other weights."""

from __future__ import annotations

import json

from loop_toys import make_model_dir

from pluralign.data.records import Pairwise
from pluralign.train.recipes import multiobjective as mo

OBJ = ["informativeness", "conciseness", "formality"]


def _pair(signs: dict) -> Pairwise:
    return Pairwise("p", "a", "b", meta={"signs": signs})


def test_informative_keeps_pairs_with_a_sign_on_a_weighted_objective():
    records = [_pair({"informativeness": 1, "conciseness": 0, "formality": 0}),
               _pair({"informativeness": 0, "conciseness": -1, "formality": 0}),
               _pair({"informativeness": 0, "conciseness": 0, "formality": 1}),
               _pair({"informativeness": -1, "conciseness": 1, "formality": 0}),
               Pairwise("p", "a", "b", objective="formality")]  # an objective-tagged pair: sign +1 on it
    one_hot = mo.ObjectivesConfig(names=OBJ, weights={"informativeness": 0.0, "conciseness": 1.0, "formality": 0.0})
    assert mo.informative(records, one_hot) == [1, 3]
    two = mo.ObjectivesConfig(names=OBJ, weights={"informativeness": 0.5, "conciseness": 0.0, "formality": 0.5})
    assert mo.informative(records, two) == [0, 2, 3, 4]
    assert mo.informative(records, mo.ObjectivesConfig(names=OBJ)) == [0, 1, 2, 3, 4]  # uniform weights


def test_recipe_drops_ties_after_the_shared_reference_pass(tmp_path, monkeypatch):
    from pluralign.train import run_preference
    from pluralign.train.recipes import preference
    from pluralign.train.recipes.preference import from_kwargs

    words = {"good": (1, 3), "the cat": (2, 3), "the cat is very good": (5, 1), "a dog": (2, 2)}
    rated = [{"prompt": "tell me about the cat", "response": r, "ratings": {"informativeness": i, "conciseness": c}}
             for r, (i, c) in words.items()]
    path = tmp_path / "rated.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rated))
    seen, real_train = [], preference.train

    def spy(model, dataset, collate, *args, **kwargs):
        seen.append((list(dataset), collate))
        return real_train(model, dataset, collate, *args, **kwargs)

    monkeypatch.setattr(preference, "train", spy)
    base = make_model_dir(tmp_path / "base")
    loop = {"learning_rate": 1e-2, "batch_size": 2, "max_steps": 2, "progress": False}
    for i, weights in enumerate(({"informativeness": 1.0, "conciseness": 0.0}, {"informativeness": 0.0, "conciseness": 1.0})):
        run_preference(from_kwargs(model=str(base), data=[str(path)], output_dir=str(tmp_path / f"out{i}"), loop=loop,
                                   ref_cache_dir=str(tmp_path / "cache"),
                                   objectives={"names": OBJ[:2], "rated_pairs": "signed", "drop_ties": True,
                                               "weights": weights}))
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1  # one reference pass for both runs
    # 6 signed pairs: informativeness ties on "the cat" / "a dog", conciseness on "good" / "the cat"
    kept = [[it.record.meta["signs"] for it in items] for items, _ in seen]
    assert len(kept[0]) == 5 and all(s["informativeness"] != 0 for s in kept[0])
    assert len(kept[1]) == 5 and all(s["conciseness"] != 0 for s in kept[1])
    items, collate = seen[1]
    batch = collate(items[:2])  # the kept items carry their rows of the full cache
    full = collate.per_example["ref_chosen"]
    assert full.shape[0] == 6 and batch["ref_chosen"].tolist() == full[[it.index for it in items[:2]]].tolist()
