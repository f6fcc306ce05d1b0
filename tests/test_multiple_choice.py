"""Multiple-choice scoring (used by the accuracy depth metric) against hand computation."""

import json

import pytest
import torch
from tiny_models import char_tokenizer, tiny_model

from minitron_deploy.core.errors import MinitronError
from minitron_deploy.eval.multiple_choice import (
    accuracy,
    continuation_logprob,
    winogrande_item,
)
from minitron_deploy.eval.tasks import load_task
from minitron_deploy.importance.depth import accuracy_scores, layers_removed

ITEMS = [{"context": "The cat sat on the", "choices": ["mat", "sky"], "label": 0},
         {"context": "One two", "choices": ["three", "zebra", "four"], "label": 2},
         {"context": "Hello", "choices": ["world", "there"], "label": 1}]


@pytest.fixture()
def task_file(tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ITEMS))
    return path


def test_logprob_and_accuracy_match_hand_computation(task_file):
    model, tok = tiny_model("llama"), char_tokenizer()
    items = load_task(str(task_file))
    correct = 0
    for row in ITEMS:
        scores = []
        for choice in row["choices"]:
            ctx = tok(row["context"], add_special_tokens=False)["input_ids"]
            cont = tok(" " + choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
            hand = sum(float(logp[len(ctx) + j - 1, t]) for j, t in enumerate(cont))
            ours = continuation_logprob(model, tok, row["context"], " " + choice)
            assert ours == pytest.approx(hand, abs=1e-4)
            scores.append(hand)
        correct += int(scores.index(max(scores)) == row["label"])
    assert accuracy(model, tok, items) == pytest.approx(correct / len(ITEMS))


def test_accuracy_depth_scores_equal_accuracy_without_each_layer(task_file):
    model, tok = tiny_model("llama"), char_tokenizer()
    items = load_task(str(task_file))
    scores = accuracy_scores(model, lambda m: accuracy(m, tok, items), block_size=1)
    with layers_removed(model, [2]):
        assert scores[2].item() == pytest.approx(1 - accuracy(model, tok, items))


def test_winogrande_item_splits_at_blank():
    item = winogrande_item({"sentence": "Anna gave Bea a gift because _ was kind.",
                            "option1": "Anna", "option2": "Bea", "answer": "1"})
    assert item.contexts == ["Anna gave Bea a gift because Anna", "Anna gave Bea a gift because Bea"]
    assert item.continuations == [" was kind.", " was kind."] and item.label == 0


def test_bad_task_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(MinitronError, match="no items"):
        load_task(str(empty))
    with pytest.raises(MinitronError, match="neither a local path"):
        load_task("no-such-task-anywhere")
