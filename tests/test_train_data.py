"""Rendering, truncation and the micro-batch plan, on a real HH-RLHF snapshot and the real GPT-2 tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from tests.conftest import GPT2_TOKENIZER
from ingest.curate.snapshot import read_split
from training.data import DataError, collate, encode, kl_partners, passes, plan_epoch, render


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(GPT2_TOKENIZER)


@pytest.fixture(scope="module")
def rows(hh_snapshot):
    return read_split(hh_snapshot)


def test_plain_template_renders_hh_style_and_ends_the_completion_with_eos(tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "Name a colour."}]
    prompt, completion, templated = render(messages, "Blue.", tokenizer)
    assert (prompt, completion, templated) == ("\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Name a colour.\n\nAssistant:",
                                               " Blue.", False)
    encoded = encode([{"prompt": messages, "completion": "Blue.", "desirable": True},
                      {"prompt": messages[:1], "completion": "Hey.", "desirable": False}], tokenizer, 512, 256)
    assert encoded.completion_ids[0].tolist() == tokenizer(" Blue.")["input_ids"] + [tokenizer.eos_token_id]


def test_chat_template_is_used_when_the_tokenizer_has_one(tokenizer):
    chatty = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    chatty.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
                            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    prompt, completion, templated = render([{"role": "user", "content": "Hi"}], "Hello.", chatty)
    assert (prompt, completion, templated) == ("<|user|>Hi<|end|><|assistant|>", "Hello.<|end|>", True)


def test_truncation_keeps_the_prompt_start_and_end_and_the_completion_start_and_is_counted(rows, tokenizer):
    full = encode(rows, tokenizer, max_length=4096, max_prompt_length=2048)
    short = encode(rows, tokenizer, max_length=64, max_prompt_length=40)
    assert len(short) == len(full) == len(rows)  # nothing dropped: truncated and counted
    cut_prompts = sum(len(p) > 40 for p in full.prompt_ids)
    assert short.counts["truncated_prompt"] == cut_prompts > 0
    human, assistant = tokenizer("\n\nHuman:")["input_ids"], tokenizer("\n\nAssistant:")["input_ids"]
    cut_completions = 0
    for fp, fc, sp, sc in zip(full.prompt_ids, full.completion_ids, short.prompt_ids, short.completion_ids):
        assert len(sp) <= 40
        assert sp[:len(human)].tolist() == human and sp[-len(assistant):].tolist() == assistant  # turn headers stay
        assert sc.tolist() == fc[:64 - len(sp)].tolist()
        cut_completions += len(fc) > 64 - len(sp)
    assert short.counts["truncated_completion"] == cut_completions > 0
    assert short.lengths.max() <= 64


def test_one_class_only_is_refused_with_a_clear_message(rows, tokenizer):
    undesirable = [r for r in rows if not r["desirable"]]
    with pytest.raises(DataError, match="no desirable"):
        encode(undesirable, tokenizer, 512, 256)


def test_each_epoch_covers_every_example_once_in_shuffled_mixed_micro_batches(rows, tokenizer):
    encoded = encode(rows, tokenizer, 512, 256)
    epoch0 = plan_epoch(encoded, epoch=0, seed=1, micro_batch_size=8, group_size=4)
    epoch1 = plan_epoch(encoded, epoch=1, seed=1, micro_batch_size=8, group_size=4)
    for plan in (epoch0, epoch1):
        assert sorted(np.concatenate(plan).tolist()) == list(range(len(encoded)))
        for batch in plan:
            assert len(batch) >= 2 and len(np.unique(encoded.prompt_group[batch])) >= 2
    assert sum(len(b) == 8 for b in epoch0) >= len(epoch0) - 1  # only the epoch's last may differ
    mixed = [0 < encoded.desirable[b].sum() < len(b) for b in epoch0]
    assert sum(mixed) >= 0.9 * len(epoch0)  # both classes in (nearly) every micro-batch
    assert [b.tolist() for b in epoch0] != [b.tolist() for b in epoch1]
    assert [b.tolist() for b in epoch0] == [b.tolist() for b in plan_epoch(encoded, 0, 1, 8, 4)]  # seeded


def test_length_grouping_cuts_padding(rows, tokenizer):
    encoded = encode(rows, tokenizer, 512, 256)
    lengths = encoded.lengths

    def padded(plan):
        return sum(len(b) * lengths[b].max() for b in plan)

    rng = np.random.default_rng(0)
    shuffled = np.array_split(rng.permutation(len(encoded)), len(encoded) // 8)
    grouped = plan_epoch(encoded, 0, 0, micro_batch_size=8, group_size=16)
    assert padded(grouped) < 0.75 * padded(shuffled)


@pytest.mark.parametrize("budget", [1, 300, 700, 1 << 20])
def test_passes_cover_each_row_once_longest_first_within_the_budget(rows, tokenizer, budget):
    encoded = encode(rows, tokenizer, 512, 256)
    indices = np.arange(len(encoded))[:16]
    partners = indices[kl_partners(encoded.prompt_group[indices])]
    for completions_from in (None, partners):
        cut = passes(encoded, indices, 512, budget, completions_from=completions_from)
        assert sorted(np.concatenate(cut).tolist()) == list(range(len(indices)))
        widths = []
        for part in cut:
            batch = collate(encoded, indices[part], 512, 0,
                            completions_from=None if completions_from is None else completions_from[part])
            rows_, width = batch.input_ids.shape
            assert rows_ * width <= budget or rows_ == 1  # a row longer than the budget is a pass alone
            assert (batch.attention_mask.sum(1)[:1] == width).all()  # its first row is its longest
            widths.append(width)
        assert widths == sorted(widths, reverse=True)
        if budget == 1 << 20:
            assert len(cut) == 1
        if budget == 1:
            assert len(cut) == len(indices)


def test_z0_partners_never_share_the_prompt_even_when_pairs_sit_side_by_side(rows, tokenizer):
    encoded = encode(rows, tokenizer, 512, 256)
    # Pairs converted to events put a prompt's two answers next to each other: shift-by-one would
    # pair half the rows with their own prompt.
    by_prompt = np.argsort(encoded.prompt_group, kind="stable")[:8]
    groups = encoded.prompt_group[by_prompt]
    assert (groups == np.roll(groups, -1)).sum() >= 3
    partners = kl_partners(groups)
    assert (groups[partners] != groups).all()
    batch = collate(encoded, by_prompt, 512, tokenizer.eos_token_id, completions_from=by_prompt[partners])
    for row, (i, j) in enumerate(zip(by_prompt, by_prompt[partners])):
        p, c = encoded.prompt_ids[i], encoded.completion_ids[j]
        assert batch.input_ids[row, :len(p)].tolist() == p.tolist()
        assert batch.input_ids[row][batch.completion_mask[row]].tolist() == c.tolist()


def test_a_stream_encoded_a_few_rows_at_a_time_gives_exactly_the_examples_of_the_whole_list(tokenizer, hh_snapshot,
                                                                                             monkeypatch):
    import training.data as data
    from ingest.curate.snapshot import iter_split

    rows = read_split(hh_snapshot)[:90]
    for i in (0, 6, 7, 30, 89):  # dropped rows on chunk edges keep their own row numbers
        rows[i] = dict(rows[i], completion="  ")
    whole = encode(rows, tokenizer, 96, 48, check=False)
    monkeypatch.setattr(data, "ENCODE_ROWS", 7)
    chunked = encode(iter(rows), tokenizer, 96, 48, check=False)
    assert chunked.counts == whole.counts and chunked.dropped == whole.dropped
    assert [r for r, _ in chunked.dropped][:5] == [0, 6, 7, 30, 89] and chunked.counts["examples_in"] == 90
    for a, b in ((chunked.prompt_ids, whole.prompt_ids), (chunked.completion_ids, whole.completion_ids)):
        assert a.values.dtype == np.int32 and np.array_equal(a.values, b.values) and np.array_equal(a.offsets, b.offsets)
    for name in ("desirable", "prompt_group", "rows", "lengths"):
        assert np.array_equal(getattr(chunked, name), getattr(whole, name)), name
    assert chunked.fingerprint() == whole.fingerprint()
    streamed = encode(iter_split(hh_snapshot), tokenizer, 96, 48, check=False)  # the trainer's way: Parquet batches
    listed = encode(read_split(hh_snapshot), tokenizer, 96, 48, check=False)
    assert streamed.fingerprint() == listed.fingerprint() and streamed.counts == listed.counts
