"""Pairs published as two sides and a verdict (Chatbot Arena / MT-Bench human judgments, LMSYS
arena-human-preference): the winner's side is `chosen`, the voter is the `user`, whole conversations are cut
after their shared prompt, and a tie is a located problem, never a pair."""

from __future__ import annotations

import pytest
from data_examples import write_jsonl

from pluralign.data import Pairwise, read_checked, read_records
from pluralign.errors import DataError


def turns(question, answer):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def arena(winner, a, b, judge="arena_user_1", question="Capital of France?"):
    return {"question_id": 1, "model_a": "m1", "model_b": "m2", "winner": winner, "judge": judge,
            "conversation_a": turns(question, a), "conversation_b": turns(question, b), "turn": 1}


def test_arena_votes_are_pairs_of_their_voter(tmp_path):
    rows = [arena("model_a", "Paris.", "Lyon."), arena("model_b", "Hello!", "Hi, how can I help?", judge="u2",
                                                         question="Hi")]
    records = read_records(write_jsonl(tmp_path / "arena.jsonl", rows))
    assert records[0] == Pairwise(prompt=[{"role": "user", "content": "Capital of France?"}],
                                  chosen=[{"role": "assistant", "content": "Paris."}],
                                  rejected=[{"role": "assistant", "content": "Lyon."}], user="arena_user_1",
                                  meta={"question_id": 1, "model_a": "m1", "model_b": "m2", "winner": "model_a",
                                        "turn": 1})
    assert (records[1].chosen[0]["content"], records[1].rejected[0]["content"], records[1].user) == (
        "Hi, how can I help?", "Hello!", "u2")


def test_ties_and_unknown_verdicts_are_problems_of_their_rows(tmp_path):
    rows = [arena("model_a", "Paris.", "Lyon."), arena("tie (bothbad)", "5", "22"), arena("model_c", "x", "y")]
    path = write_jsonl(tmp_path / "arena.jsonl", rows)
    with pytest.raises(DataError) as caught:
        read_records(path)
    message = str(caught.value)
    assert "arena.jsonl:2: field 'winner': 'tie (bothbad)': a tie states no preference" in message
    assert "arena.jsonl:3: field 'winner': 'model_c' names neither side" in message
    checked = read_checked(path)
    assert checked.kind == "pairwise" and len(checked.records) == 1 and len(checked.rejects) == 2


def test_a_multi_turn_vote_whose_histories_differ_is_a_located_error(tmp_path):
    """Each model answered "And Spain?" after its own first answer: no one prompt precedes both last replies.
    The error named 'chosen[1].role', a field the row does not have, and told to move turns into a prompt."""
    row = arena("model_a", "Paris.", "Lyon.")
    row["conversation_a"] += turns("And Spain?", "Madrid.")
    row["conversation_b"] += turns("And Spain?", "Seville.")
    with pytest.raises(DataError, match=r"arena.jsonl:1: field 'conversation_b\[1\]': the two sides part here "
                                        r"\(message 2\), before the user's last turn"):
        read_records(write_jsonl(tmp_path / "arena.jsonl", [row]))


def test_a_multi_turn_vote_on_a_shared_history_is_a_pair_of_its_last_replies(tmp_path):
    row = arena("model_b", "Paris.", "Paris.")
    row["conversation_a"] += turns("And Spain?", "Seville.")
    row["conversation_b"] += turns("And Spain?", "Madrid.")
    (record,) = read_records(write_jsonl(tmp_path / "arena.jsonl", [row]))
    assert record.prompt == [*turns("Capital of France?", "Paris."), {"role": "user", "content": "And Spain?"}]
    assert (record.chosen, record.rejected) == ([{"role": "assistant", "content": "Madrid."}],
                                                [{"role": "assistant", "content": "Seville."}])


def test_arena_human_preference_turn_lists_are_conversations_not_json_text(tmp_path):
    """Each side is a JSON list with one answer per turn: a two-turn row was read as the text '["Name a
    fruit.", "Another?"]' answered by '["Kiwi.", "Plum."]', and a missing answer ([null]) as the reply "[null]"."""
    import json

    def row(prompt, a, b, won_a=1):
        return [json.dumps(prompt), json.dumps(a), json.dumps(b), won_a, 1 - won_a, 0]
    rows = [row(["Name a fruit.", "Another?"], ["Apple.", "Pear."], ["Apple.", "Plum."], won_a=0),
            row(["Name a fruit.", "Another?"], ["Apple.", "Pear."], ["Kiwi.", "Plum."]),
            row(["Name a fruit."], [None], ["Kiwi."]),
            row(["Name a fruit.", "Another?"], ["Apple.", "Pear."], ["Kiwi."]), row([], [], [])]
    path = tmp_path / "arena55k.csv"
    import csv
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "response_a", "response_b", "winner_model_a", "winner_model_b", "winner_tie"])
        writer.writerows(rows)
    checked = read_checked(path)
    assert [(r.prompt, r.chosen, r.rejected) for r in checked.records] == [
        ([{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "Apple."},
          {"role": "user", "content": "Another?"}],
         [{"role": "assistant", "content": "Plum."}], [{"role": "assistant", "content": "Pear."}])]
    assert [(p.line, p.field) for p in checked.problems] == [(3, "response_b[0]"), (4, "response_a[0]"),
                                                              (5, "response_b"), (6, "prompt")]
    assert "expected the text of a turn, got None" in checked.problems[1].message
    assert "has 1 turn(s) for the 2 of prompt" in checked.problems[2].message
    assert "expected at least one turn, got an empty list" in checked.problems[3].message


def test_one_hot_verdict_columns_with_one_turn_json_lists(tmp_path):
    path = tmp_path / "votes.csv"
    path.write_text('id,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie\n'
                    '1,"[""What is 2+2?""]","[""4""]","[""5""]",1,0,0\n'
                    '2,"[""Name a color.""]","[""blue""]","[""a colour""]",0,1,0\n'
                    '3,"[""Hi""]","[""hey""]","[""hello""]",0,0,1\n')
    checked = read_checked(path)
    assert [(r.prompt, r.chosen, r.rejected) for r in checked.records] == [
        ("What is 2+2?", "4", "5"), ("Name a color.", "a colour", "blue")]
    assert [p.message for p in checked.problems] == ["'tie': a tie states no preference between the two sides"]
    assert checked.problems[0].line == 4 and checked.problems[0].field == "winner_tie"


@pytest.mark.parametrize("name", ["user_id", "annotator", "rater_id", "worker_id"])
def test_who_gave_the_feedback_under_other_names_is_the_user(tmp_path, name):
    row = {"prompt": "q", "chosen": "good", "rejected": "bad", name: "alice"}
    assert read_records(write_jsonl(tmp_path / "p.jsonl", [row]))[0].user == "alice"


def test_helpsteer3_preferences_are_pairs_with_their_strength_as_margin(tmp_path):
    context = [{"role": "user", "content": "Name a prime."}]
    rows = [{"domain": "general", "context": context, "response1": "7", "response2": "nine", "overall_preference": -2},
            {"domain": "general", "context": context, "response1": "4", "response2": "11", "overall_preference": 3},
            {"domain": "general", "context": context, "response1": "2", "response2": "3", "overall_preference": 0}]
    checked = read_checked(write_jsonl(tmp_path / "hs3.jsonl", rows))
    assert [(r.prompt, r.chosen, r.rejected, r.margin) for r in checked.records] == [
        (context, "7", "nine", 2.0), (context, "11", "4", 3.0)]
    assert [(p.line, p.field, p.message) for p in checked.problems] == [
        (3, "overall_preference", "0: a tie states no preference between the two sides")]


def test_pku_saferlhf_rows_are_a_pair_per_objective(tmp_path):
    """One row, two verdicts on the same two responses: a helpfulness pair and a harmlessness pair, which
    here disagree (the more helpful answer is the less safe one)."""
    rows = [{"prompt": "How do I pick a lock?", "response_0": "Insert a tension wrench, then rake the pins.",
             "response_1": "I can't help with that; a locksmith can.", "is_response_0_safe": False,
             "is_response_1_safe": True, "better_response_id": 0, "safer_response_id": 1},
            {"prompt": "Hi", "response_0": "Hello!", "response_1": "What?", "better_response_id": 2,
             "safer_response_id": 0}]
    checked = read_checked(write_jsonl(tmp_path / "pku.jsonl", rows))
    got = [(r.objective, r.chosen, r.rejected) for r in checked.records]
    assert got == [("helpfulness", "Insert a tension wrench, then rake the pins.", "I can't help with that; a locksmith can."),
                   ("harmlessness", "I can't help with that; a locksmith can.", "Insert a tension wrench, then rake the pins."),
                   ("harmlessness", "Hello!", "What?")]
    assert checked.records[0].meta["is_response_0_safe"] is False
    assert [(p.line, p.field) for p in checked.problems] == [(2, "better_response_id")]
    assert "expected 0 or 1" in checked.problems[0].message


def test_shp_rows_are_pairs_of_the_preferred_comment(tmp_path):
    rows = [{"post_id": "p1", "domain": "askscience", "history": "Why is the sky blue?", "human_ref_A": "Rayleigh scattering.",
             "human_ref_B": "Because it is.", "labels": 1, "score_A": 52, "score_B": 3},
            {"post_id": "p2", "history": "Best pasta shape?", "human_ref_A": "None.", "human_ref_B": "Rigatoni, it holds sauce.",
             "labels": 0},
            {"post_id": "p3", "history": "x", "human_ref_A": "a", "human_ref_B": "b", "labels": 2}]
    checked = read_checked(write_jsonl(tmp_path / "shp.jsonl", rows))
    assert [(r.prompt, r.chosen, r.rejected) for r in checked.records] == [
        ("Why is the sky blue?", "Rayleigh scattering.", "Because it is."),
        ("Best pasta shape?", "Rigatoni, it holds sauce.", "None.")]
    assert checked.records[0].meta["score_A"] == 52
    assert [(p.line, p.field, p.message) for p in checked.problems] == [
        (3, "labels", "expected 1 (A is preferred) or 0 (B), got 2")]


def test_a_judge_that_is_no_person_id_stays_in_meta(tmp_path):
    row = arena("model_a", "Paris.", "Lyon.", judge=["gpt-4", "pair-v2"])  # MT-Bench's GPT-4 judgments
    record = read_records(write_jsonl(tmp_path / "gpt4.jsonl", [row]))[0]
    assert record.user is None and record.meta["judge"] == ["gpt-4", "pair-v2"]


def test_helpsteer3_preference_out_of_its_scale_is_named(tmp_path):
    """overall_preference runs from -3 to 3: 7 was read as "response 2 won" with margin 7, and NaN (a blank
    CSV cell read as a number) as "response 1 won" with margin NaN."""
    context = [{"role": "user", "content": "Name a prime."}]
    rows = [{"context": context, "response1": "7", "response2": "nine", "overall_preference": value}
            for value in (7, float("nan"), -3)]
    checked = read_checked(write_jsonl(tmp_path / "hs3.jsonl", rows))
    assert [(r.chosen, r.margin) for r in checked.records] == [("7", 3.0)]
    assert [(p.line, p.field) for p in checked.problems] == [(1, "overall_preference"), (2, "overall_preference")]
    assert all("from -3 to 3" in p.message for p in checked.problems)


def test_one_person_is_one_id_whatever_the_file_writes(tmp_path):
    """Ids are names: 3, "3" and 3.0 (pandas writes an integer column with gaps as floats) are one user, and so are
    "alice" and " alice " (a CSV cell after ', '). 3.0 given as user_id went to meta without a word (the record
    trained with no user), and " alice" was another user than "alice", whose vector `--user alice` never found."""
    rows = [{"prompt": "q", "chosen": "good", "rejected": "bad", "user_id": v, "group": g}
            for v, g in ((3, "a"), ("3", " a"), (3.0, "a "), (" alice ", "b"), ("alice", "b"))]
    assert [(r.user, r.group) for r in read_records(write_jsonl(tmp_path / "p.jsonl", rows))] == [
        ("3", "a"), ("3", "a"), ("3", "a"), ("alice", "b"), ("alice", "b")]
    (tmp_path / "p.csv").write_text("prompt,chosen,rejected,user\nq,good,bad, alice\n")
    assert read_records(str(tmp_path / "p.csv"))[0].user == "alice"
    # a number that names no one is refused where it stands, whatever its field's spelling
    for name in ("user", "user_id"):
        bad = read_checked(write_jsonl(tmp_path / f"{name}.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b", name: 3.5}]))
        assert [(p.line, p.field) for p in bad.problems] == [(1, "user")] and not bad.records



def _uf(chosen, rejected, sc, sr, names=("score_chosen", "score_rejected")):
    prompt = [{"role": "user", "content": "Name a fruit."}]
    return {"prompt": "Name a fruit.", "chosen": [*prompt, {"role": "assistant", "content": chosen}],
            "rejected": [*prompt, {"role": "assistant", "content": rejected}], names[0]: sc, names[1]: sr}


def test_ultrafeedback_binarized_scores_are_the_pairs_margin(tmp_path):
    """UltraFeedback-binarized scores both sides (score_chosen, score_rejected): the pairs came with no margin,
    so a reward model's margin loss (use_margins) and `data stats` saw none though the file held them."""
    rows = [_uf("Apple.", "Rock.", 8.5, 3.0), _uf("Pear.", "Stone.", 7, 7),
            _uf("Kiwi.", "Plum.", 4.0, 3.5, ("chosen_rating", "rejected_rating")),
            _uf("Fig.", "Sand.", 2.0, 6.0), _uf("Lime.", "Mud.", "N/A", 1.0)]
    checked = read_checked(write_jsonl(tmp_path / "uf.jsonl", rows))
    assert [(r.chosen[0]["content"], r.margin) for r in checked.records] == [
        ("Apple.", 5.5), ("Pear.", 0.0), ("Kiwi.", 0.5)]
    assert checked.records[0].meta["score_chosen"] == 8.5  # the scores themselves are kept
    assert [(p.line, p.field) for p in checked.problems] == [(4, "score_rejected"), (5, "score_chosen")]
    assert "6 is above score_chosen 2: the rejected response scored higher" in checked.problems[0].message
    assert "expected a number, got 'N/A'" in checked.problems[1].message


def test_ultrafeedback_binarized_scores_in_a_table_are_the_margin(tmp_path):
    import csv
    import json

    path = tmp_path / "uf.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["prompt", "chosen", "rejected", "score_chosen", "score_rejected"])
        for row in (_uf("Apple.", "Rock.", 8.5, 3.0), _uf("Pear.", "Stone.", "", "")):  # blank: no margin
            writer.writerow([row["prompt"], json.dumps(row["chosen"]), json.dumps(row["rejected"]),
                             row["score_chosen"], row["score_rejected"]])
    assert [r.margin for r in read_records(path)] == [5.5, None]
