"""What is trained for a chat model: joint tokenization, the end-of-turn token, truncation, unsplittable examples.

Real tokenizers (tests/data/tokenizers: Mistral v0.1, Qwen2.5, Phi-3-mini; and GPT-2), real HH-RLHF dialogues
split by thumbs' own HH parser. The oracle is the tokenizer's own `apply_chat_template(..., tokenize=True)`:
prompt = the generation prompt's ids, completion = what follows, through the family's end-of-turn token.
"""

from __future__ import annotations

import gzip
import json

import pytest
from transformers import AutoTokenizer

from ingest.intake.records import split_hh_pair
from tests.conftest import GPT2_TOKENIZER, HH_PATH, TOKENIZERS
from training.data import DataError, encode
from training.sequences import Template, end_of_turn_id, fit_prompt

END_OF_TURN = {"mistral-7b-v0.1": "</s>", "qwen2.5": "<|im_end|>", "phi-3-mini": "<|end|>"}

# Qwen3's rule, cut down: the last assistant turn after the last user turn gets a think block (empty when the
# answer carries no reasoning); the generation prompt stops at the assistant header unless thinking is off.
QWEN3_STYLE = (
    "{%- for m in messages %}{%- if m.role == 'assistant' and loop.last %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}")
# Phi-3.5-mini's: after the conversation's last turn (no generation prompt) EOS follows `<|end|>`.
PHI35_STYLE = (
    "{% for m in messages %}{% if m.role == 'user' %}{{ '<|user|>\\n' + m.content + '<|end|>\\n' }}"
    "{% elif m.role == 'assistant' %}{{ '<|assistant|>\\n' + m.content + '<|end|>\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}")


def tokenizer(name: str):
    return AutoTokenizer.from_pretrained(GPT2_TOKENIZER if name == "gpt2" else TOKENIZERS / name)


def hh_rows(n: int, start: int = 0) -> list:
    """n real HH-RLHF dialogues as thumbs rows: the chosen answer desirable, the rejected one not."""
    rows = []
    with gzip.open(HH_PATH, "rt") as f:
        for i, line in enumerate(f):
            if i < start:
                continue
            pair = json.loads(line)
            messages, chosen, rejected = split_hh_pair(pair["chosen"], pair["rejected"])
            rows += [{"prompt": messages, "completion": chosen, "desirable": True},
                     {"prompt": messages, "completion": rejected, "desirable": False}]
            if len(rows) >= 2 * n:
                return rows


def oracle(tok, messages, completion, end_token):
    """(prompt ids, completion ids) from the tokenizer's own chat-template tokenization."""
    prompt = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])
    full = list(tok.apply_chat_template(messages + [{"role": "assistant", "content": completion}],
                                        tokenize=True)["input_ids"])
    assert full[:len(prompt)] == prompt
    rest = full[len(prompt):]
    return prompt, rest[:rest.index(tok.convert_tokens_to_ids(end_token)) + 1]


@pytest.mark.parametrize("name", sorted(END_OF_TURN))
def test_completion_is_the_joint_tokenizations_span_through_the_end_of_turn_token(name):
    tok = tokenizer(name)
    rows = [r for r in hh_rows(25) if r["completion"].strip()]
    encoded = encode(rows, tok, 100_000, 50_000)
    assert len(encoded) == len(rows) and not encoded.dropped
    end = tok.convert_tokens_to_ids(END_OF_TURN[name])
    assert end_of_turn_id(tok) == end
    for k, row in enumerate(rows):
        prompt, completion = oracle(tok, row["prompt"], row["completion"], END_OF_TURN[name])
        assert encoded.prompt_ids[k].tolist() == prompt
        assert encoded.completion_ids[k].tolist() == completion
        assert encoded.completion_ids[k][-1] == end and end not in encoded.completion_ids[k][:-1].tolist()


def test_qwen3_style_think_block_stays_on_the_prompt_side_and_is_counted():
    tok = tokenizer("qwen2.5")
    tok.chat_template = QWEN3_STYLE
    rows = hh_rows(3)
    encoded = encode(rows, tok, 100_000, 50_000)
    assert encoded.counts["template_inserted"] == len(rows) == len(encoded)
    think = tok("<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"]
    for k, row in enumerate(rows):
        generation_prompt = tok.apply_chat_template(row["prompt"], add_generation_prompt=True,
                                                    tokenize=True)["input_ids"]
        prompt = encoded.prompt_ids[k].tolist()
        assert prompt == list(generation_prompt) + think  # what vLLM renders, then the block the model did not write
        answer = tok(row["completion"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        assert encoded.completion_ids[k].tolist() == answer  # the answer through <|im_end|>, no "\n" after it


def test_phi35_style_eos_after_end_of_turn_is_not_trained():
    tok = tokenizer("phi-3-mini")
    tok.chat_template = PHI35_STYLE
    rows = hh_rows(3)
    encoded = encode(rows, tok, 100_000, 50_000)
    rendered = tok.apply_chat_template(rows[0]["prompt"] + [{"role": "assistant", "content": rows[0]["completion"]}],
                                       tokenize=False)
    assert rendered.endswith("<|end|>\n<|endoftext|>")
    end, eos = tok.convert_tokens_to_ids("<|end|>"), tok.eos_token_id
    for c in encoded.completion_ids:
        assert c[-1] == end and eos not in c.tolist()


def test_plain_template_for_tokenizers_without_one_ends_with_eos():
    tok = tokenizer("gpt2")
    rows = [{"prompt": [{"role": "user", "content": "Name a colour."}], "completion": "Blue.", "desirable": True},
            {"prompt": [{"role": "user", "content": "Hi"}], "completion": "Hey.", "desirable": False}]
    encoded = encode(rows, tok, 512, 256)
    assert encoded.prompt_ids[0].tolist() == tok("\n\nHuman: Name a colour.\n\nAssistant:")["input_ids"]
    assert encoded.completion_ids[0].tolist() == tok(" Blue.")["input_ids"] + [tok.eos_token_id]
    assert end_of_turn_id(tok) == tok.eos_token_id


def test_a_prompt_whose_tokens_merge_with_the_answer_is_unsplittable_counted_and_listed():
    tok = tokenizer("gpt2")
    # The generation prompt ends in a space: alone it is the token 'Ġ', before an answer it merges into 'ĠBlue'.
    tok.chat_template = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    rows = hh_rows(4)
    encoded = encode(rows, tok, 4096, 2048, check=False)
    assert encoded.counts["unsplittable"] == len(rows) and len(encoded) == 0
    assert [row for row, _ in encoded.dropped] == list(range(len(rows)))
    assert all("not a prefix" in reason and "'Ġ'" in reason for _, reason in encoded.dropped)
    with pytest.raises(DataError, match="could be tokenized.*thumbs inspect"):
        encode(rows, tok, 4096, 2048)


def test_a_template_that_renders_the_prompt_differently_before_an_answer_is_unsplittable():
    tok = tokenizer("gpt2")
    tok.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>\n{% endif %}")  # '\n' only when generating
    encoded = encode(hh_rows(2), tok, 4096, 2048, check=False)
    assert encoded.counts["unsplittable"] == 4 and "does not start with the rendered" in encoded.dropped[0][1]


@pytest.mark.parametrize("name", ["qwen2.5", "mistral-7b-v0.1", "phi-3-mini"])
def test_truncation_keeps_bos_system_and_headers_drops_oldest_turns_first_and_is_counted(name):
    tok = tokenizer(name)
    template = Template(tok)
    rows = [r for r in hh_rows(60) if len(r["prompt"]) >= 3 and r["completion"].strip()][:20]
    full = encode(rows, tok, 100_000, 50_000)
    limit = 64
    short = encode(rows, tok, limit + 24, limit)
    over = [k for k in range(len(rows)) if len(full.prompt_ids[k]) > limit]
    assert len(over) >= 10 and short.counts["truncated_prompt"] == len(over) and short.counts["dropped_turns"] > 0
    head = common_prefix(*template.ids([template.prompt([{"role": "user", "content": q}]) for q in ("Hi", "Yo")]))
    assert len(head) >= 1  # BOS, the system prompt, the first turn's header
    for k in range(len(rows)):
        p, fp = short.prompt_ids[k].tolist(), full.prompt_ids[k].tolist()
        assert len(p) <= limit and p[:len(head)] == head  # what the model always sees stays
        assert p[-3:] == fp[-3:]  # the generation prompt stays
        kept, dropped, cut = fit_prompt(template, rows[k]["prompt"], limit)
        if k not in over:
            assert p == fp and (dropped, cut) == (0, 0)
            continue
        assert dropped > 0 or cut > 0
        # Oldest first: what is left is the newest turns, the first of them possibly cut at its start.
        original = rows[k]["prompt"]
        assert kept[1:] == original[len(original) - len(kept) + 1:]
        assert original[len(original) - len(kept)]["content"].strip().endswith(kept[0]["content"].strip())
        prompt, completion = oracle(tok, kept, rows[k]["completion"], END_OF_TURN[name])
        assert p == prompt  # a prompt the template itself renders, jointly tokenized with its answer
        assert short.completion_ids[k].tolist() == completion[:limit + 24 - len(p)]  # the completion keeps its start
    assert short.counts["truncated_completion"] == sum(
        len(short.prompt_ids[k]) + len(full.completion_ids[k]) > limit + 24 for k in range(len(rows))) > 0


def common_prefix(a: list, b: list) -> list:
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return a[:n]


def test_a_single_long_message_loses_its_start_and_keeps_its_end():
    tok = tokenizer("qwen2.5")
    long_question = " ".join(f"word{i}" for i in range(300)) + " so what is the answer?"
    rows = [{"prompt": [{"role": "user", "content": long_question}], "completion": "Forty-two.", "desirable": True},
            {"prompt": [{"role": "user", "content": "Hi"}], "completion": "Hello.", "desirable": False}]
    encoded = encode(rows, tok, 128, 100)
    text = tok.decode(encoded.prompt_ids[0])
    assert len(encoded.prompt_ids[0]) <= 100 and encoded.counts["truncated_prompt"] == 1
    assert text.startswith("<|im_start|>system\nYou are Qwen") and "word0 " not in text
    assert text.endswith("so what is the answer?<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(DataError, match="could be tokenized"):  # a limit below the system prompt itself
        encode(rows, tok, 30, 20)


def test_generation_stops_where_training_ends_completions():
    from evaluation.generate import stop_ids

    phi3 = tokenizer("phi-3-mini")
    assert stop_ids(phi3) == sorted({phi3.eos_token_id, phi3.convert_tokens_to_ids("<|end|>")})
    assert stop_ids(tokenizer("gpt2")) == [50256]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(END_OF_TURN))
def test_thumbs_inspect_shows_the_trained_ids_and_the_marked_span(name, hh_snapshot):
    from typer.testing import CliRunner

    from flows.cli import app
    from ingest.curate.snapshot import read_split

    base = TOKENIZERS / name
    result = CliRunner().invoke(app, ["inspect", "--snapshot", str(hh_snapshot), "--base-model", str(base),
                                      "--n", "50", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = read_split(hh_snapshot)
    tok = tokenizer(name)
    assert report["template"] == "chat" and report["end_of_turn"] == END_OF_TURN[name]
    assert report["counts"]["unsplittable"] == 0 and len(report["examples"]) == 50
    compared = 0
    for ex in report["examples"]:  # 50 real dialogues: the ids are the joint tokenization's span
        row = rows[ex["row"]]
        prompt, completion = oracle(tok, row["prompt"], row["completion"], END_OF_TURN[name])
        if len(prompt) + len(completion) <= 512:  # untruncated under the default limits
            assert (ex["prompt_ids"], ex["completion_ids"]) == (prompt, completion)
            compared += 1
    assert compared >= 45
    text = CliRunner().invoke(app, ["inspect", "--snapshot", str(hh_snapshot), "--base-model", str(base), "--n", "1"])
    assert text.exit_code == 0
    first = report["examples"][0]
    assert first["prompt_text"] + "⟦" + first["completion_text"] + "⟧" in text.stdout
    assert f"completion_ids: {first['completion_ids']}" in text.stdout and "unsplittable" in text.stdout
