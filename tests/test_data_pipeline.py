"""The data side of training: tiny tokenizer, sample encoding, packing, the resumable stream, webdataset
shards and validation prompts. Expected values come from independent truths: decoding, hand-built
batches, binomial bounds and shards written here with `tarfile`, never from the code under test."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest
import torch
from data_helpers import IMAGE_ID, SIZE, TPI, VOCAB, to_tensor
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vlmlab.config import DataSourceConfig
from vlmlab.data.collate import (
    collate_packed,
    collate_padded,
    pack_rows,
    real_token_fraction,
)
from vlmlab.data.encode import SampleEncoder
from vlmlab.data.samples import check_sample, synthetic_to_sample
from vlmlab.data.synthetic import ANSWER_INSTRUCTION, COLORS, SHAPES, build_prompt, generate_split
from vlmlab.data.text_tokenizer import build_tiny_tokenizer, load_text_tokenizer
from vlmlab.data.validation import build_val_set, collate_prompts
from vlmlab.errors import ConfigError


def synthetic(task: str, n: int = 2, split: str = "train") -> list[dict]:
    return list(generate_split(task, split, n, seed=3, image_size=SIZE))


# ---------------------------------------------------------------- tokenizer
def test_tiny_tokenizer_round_trips_and_is_compact(tok):
    texts = []
    for task in ("spatialmap", "grid", "ring"):
        for s in synthetic(task):
            texts += [build_prompt(s, "text"), build_prompt(s, "image"), s["caption"], s["solution"]]
    texts += ["<0x41> <|reserved_300|>", "  two  spaces\t\ttabs\r\n", "naïve × 日本 ▁x", ""]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert max(ids, default=0) < VOCAB and IMAGE_ID not in ids
    assert len(tok) == VOCAB
    assert tok.convert_tokens_to_ids("<|image_pad|>") == IMAGE_ID
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    # the task vocabulary is whole words: one token per colour/shape, ~one per word of the instruction
    for word in [*COLORS, *SHAPES, "Northwest", "counterclockwise"]:
        assert len(tok.encode(" " + word, add_special_tokens=False)) == 1, word
    assert (
        len(tok.encode(ANSWER_INSTRUCTION, add_special_tokens=False)) <= len(ANSWER_INSTRUCTION.split()) + 3
    )


@settings(max_examples=300)
@given(text=st.text(max_size=60))
def test_tiny_tokenizer_round_trips_any_text(tok, text: str) -> None:
    """Any Unicode text (control characters, combining marks, astral planes) decodes back to itself and never
    produces the image placeholder id."""
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert max(ids, default=0) < VOCAB and IMAGE_ID not in ids


def test_tiny_tokenizer_rebuild_is_byte_identical_and_loads_with_autotokenizer(tmp_path, tok):
    from transformers import AutoTokenizer

    first = build_tiny_tokenizer(VOCAB, IMAGE_ID, tmp_path / "a")
    second = build_tiny_tokenizer(VOCAB, IMAGE_ID, tmp_path / "b")
    names = sorted(p.name for p in first.iterdir())
    assert "tokenizer.json" in names and names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert build_tiny_tokenizer(VOCAB, IMAGE_ID, tmp_path / "a") == first  # cached, not rebuilt
    loaded = AutoTokenizer.from_pretrained(str(first))
    text = "Where is the red star relative to the blue cross?"
    assert loaded.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    other = load_text_tokenizer("tiny", 1024, 700, cache_dir=tmp_path)
    assert other.convert_tokens_to_ids("<|image_pad|>") == 700 and len(other) == 1024


def test_load_text_tokenizer_rejects_mismatched_ids(tmp_path):
    folder = build_tiny_tokenizer(VOCAB, IMAGE_ID, tmp_path)
    with pytest.raises(ConfigError, match=r"511.*300"):
        load_text_tokenizer(str(folder), VOCAB, 300)
    with pytest.raises(ConfigError, match="512 tokens"):
        load_text_tokenizer(str(folder), 400, IMAGE_ID)
    with pytest.raises(ConfigError, match="image_token_id"):
        load_text_tokenizer("tiny", VOCAB, 100, cache_dir=tmp_path)


# ---------------------------------------------------------------- encoding
def test_labels_cover_exactly_the_response_and_im_end(tok, encoder):
    raw = synthetic("spatialmap", 1)[0]
    image = raw["image"]
    samples = [synthetic_to_sample(raw, mode) for mode in ("caption", "vqa", "tqa")]
    samples.append(
        {
            "id": "mixed",
            "source": "t",
            "segments": [
                {"type": "text", "text": "First "},
                {"type": "image", "image": image},
                {"type": "text", "text": " then "},
                {"type": "image", "image": image.rotate(90)},
            ],
            "response": "Final answer: red circle",
        }
    )
    for sample in samples:
        out = encoder.encode(sample)
        ids, labels = out["input_ids"], out["labels"]
        scored = labels != -100
        assert tok.decode(ids[scored]) == sample["response"] + "<|im_end|>"
        assert torch.equal(labels[scored], ids[scored])
        assert scored[-1] and scored.nonzero().min() == len(ids) - scored.sum()  # one span, at the end
        n_images = sum(s["type"] == "image" for s in sample.get("segments", []))
        assert int((ids == IMAGE_ID).sum()) == TPI * n_images
        assert out["pixel_values"].shape == (n_images, 3, SIZE, SIZE)
        prompt_text = "".join(
            s["text"] if s["type"] == "text" else "<|image_pad|>" * TPI
            for s in sample.get("segments", [{"type": "text", "text": sample.get("prompt")}])
        )
        expected = f"<|im_start|>user\n{prompt_text}<|im_end|>\n<|im_start|>assistant\n"
        assert tok.decode(ids[~scored]) == expected
    # images in placeholder order
    mixed = encoder.encode(samples[-1])
    assert torch.equal(mixed["pixel_values"][1], to_tensor(image.rotate(90)))


def test_encoding_matches_the_chat_template(tok):
    encoder = SampleEncoder(tok, to_tensor, 1, IMAGE_ID, 256)
    raw = synthetic("ring", 1)[0]
    sample = synthetic_to_sample(raw, "vqa")
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": sample["segments"][1]["text"]}],
        },
        {"role": "assistant", "content": sample["response"]},
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert rendered.endswith("<|im_end|>\n")
    expected = tok.encode(rendered[:-1], add_special_tokens=False)
    assert encoder.encode(sample)["input_ids"].tolist() == expected
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert encoder.encode_prompt(sample)["input_ids"].tolist() == tok.encode(prompt, add_special_tokens=False)


def test_multi_turn_encoding_follows_the_chat_template_token_by_token(tok):
    """System + two user turns with two images + two answers: the ids are the chat template's, and the
    labels are exactly the tokens of each assistant turn plus its <|im_end|>."""
    encoder = SampleEncoder(tok, to_tensor, 1, IMAGE_ID, 256)
    red, blue = Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    sample = {
        "id": "chat",
        "messages": [
            {"role": "system", "content": "You answer briefly."},
            {
                "role": "user",
                "content": [{"type": "image", "image": red}, {"type": "text", "text": "Colour?"}],
            },
            {"role": "assistant", "content": "red"},
            {"role": "user", "content": [{"type": "text", "text": "And "}, {"type": "image", "image": blue}]},
            {"role": "assistant", "content": "blue, and the first was red"},
        ],
    }
    template = [
        {**m, "content": [{"type": "image"} if p["type"] == "image" else p for p in m["content"]]}
        if isinstance(m["content"], list)
        else m
        for m in sample["messages"]
    ]
    rendered = tok.apply_chat_template(template, tokenize=False)
    encoded = encoder.encode(sample)
    ids, labels = encoded["input_ids"].tolist(), encoded["labels"].tolist()
    assert ids == tok.encode(rendered[:-1], add_special_tokens=False)  # the last "\n" is not trained
    scored = [i for i, label in enumerate(labels) if label != -100]
    assert all(labels[i] == ids[i] for i in scored)
    # the scored tokens are exactly the two answers, each closed by <|im_end|>, and nothing else
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    runs, current = [], []
    for i in scored:
        if current and i != current[-1] + 1:
            runs.append(current)
            current = []
        current.append(i)
    runs.append(current)
    assert [tok.decode([ids[i] for i in run]) for run in runs] == [
        "red<|im_end|>",
        "blue, and the first was red<|im_end|>",
    ]
    assert all(ids[run[-1]] == im_end for run in runs)
    assert torch.equal(encoded["pixel_values"], torch.stack([to_tensor(red), to_tensor(blue)]))
    prompt = tok.apply_chat_template(template[:-1], tokenize=False, add_generation_prompt=True)
    assert encoder.encode_prompt(sample)["input_ids"].tolist() == tok.encode(prompt, add_special_tokens=False)


@pytest.mark.parametrize(
    "messages, error",
    [
        ([{"role": "user", "content": "hi"}], "ends on a user turn"),
        ([{"role": "assistant", "content": "hi"}], "must alternate"),
        (
            [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
            "system turn may only come first",
        ),
        ([{"role": "bot", "content": "a"}], "Unknown role"),
    ],
)
def test_malformed_conversations_are_one_clear_error(messages, error):
    with pytest.raises(ConfigError, match=error):
        check_sample({"id": "x", "messages": messages})


def test_truncation_drops_prompt_text_from_the_left_only(tok):
    encoder = SampleEncoder(tok, to_tensor, 8, IMAGE_ID, max_length=40)
    words = [f" w{i}" for i in range(40)]
    sample = {
        "id": "long",
        "source": "t",
        "segments": [
            {"type": "text", "text": "".join(words[:20])},
            {"type": "image", "image": Image.new("RGB", (8, 8))},
            {"type": "text", "text": "".join(words[20:])},
        ],
        "response": "Final answer: yes",
    }
    out = encoder.encode(sample)
    ids = out["input_ids"]
    assert len(ids) == 40 and int((ids == IMAGE_ID).sum()) == 8 and out["pixel_values"].shape[0] == 1
    scored = out["labels"] != -100
    assert tok.decode(ids[scored]) == "Final answer: yes<|im_end|>"
    text = tok.decode(ids[~scored])
    kept = text.split("<|image_pad|>")[-1].split("<|im_end|>")[0]
    assert kept and "".join(words).endswith(kept)  # a suffix of the prompt text survives
    assert text.startswith("<|im_start|>user\n<|image_pad|>")  # the text before the image went first
    assert encoder.num_dropped == 0
    sample["response"] = " ".join(["answer"] * 60)
    assert encoder.encode(sample) is None and encoder.num_dropped == 1
    prompt = encoder.encode_prompt(sample, max_length=30)
    assert len(prompt["input_ids"]) == 30 and "labels" not in prompt
    assert tok.decode(prompt["input_ids"]).endswith("<|im_end|>\n<|im_start|>assistant\n")


# ---------------------------------------------------------------- collation and packing
def fake(ids: list[int], images: list[float]) -> dict:
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(ids),
        "pixel_values": torch.tensor(images).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).clone(),
    }


def test_collate_packed_hand_checked():
    a, b, c = fake([1, 2, 3], [1.0]), fake([4, 5], []), fake([6, 7, 8, 9], [2.0, 3.0])
    batch = collate_packed([[a, b], [c]], max_length=6, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 0, 0]]
    assert batch["segment_ids"].tolist() == [[0, 0, 0, 1, 1, -1], [0, 0, 0, 0, -1, -1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, 5, -100], [-100, 7, 8, 9, -100, -100]]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0]
    assert batch["num_real_tokens"] == 9 and real_token_fraction(batch) == 9 / 12
    padded = collate_padded([a, c], pad_id=0)
    assert padded["input_ids"].tolist() == [[1, 2, 3, 0], [6, 7, 8, 9]]
    assert padded["segment_ids"].tolist() == [[0, 0, 0, -1], [0, 0, 0, 0]]
    assert padded["labels"].tolist() == [[-100, 2, 3, -100], [-100, 7, 8, 9]]


def test_pack_rows_places_every_sample_exactly_once():
    rng = random.Random(1)
    samples = [fake([i] * rng.randint(1, 50), [float(i)] * rng.randint(0, 2)) for i in range(300)]
    rows = pack_rows(samples, max_length=64, max_open_rows=4, buffer_size=16)
    placed = [id(s) for row in rows for s in row]
    assert sorted(placed) == sorted(id(s) for s in samples)
    assert all(sum(len(s["input_ids"]) for s in row) <= 64 for row in rows)
    batch = collate_packed(rows, 64, pad_id=-7)
    for r, row in enumerate(rows):  # each segment holds exactly its sample's tokens, first one unlabelled
        for segment, sample in enumerate(row):
            where = batch["segment_ids"][r] == segment
            assert torch.equal(batch["input_ids"][r][where], sample["input_ids"])
            first = where.nonzero()[0, 0]
            assert batch["labels"][r, first] == -100 and batch["position_ids"][r][where].tolist() == list(
                range(len(sample["input_ids"]))
            )
    expected_pixels = torch.cat([s["pixel_values"] for row in rows for s in row])
    assert torch.equal(batch["pixel_values"], expected_pixels)


# ---------------------------------------------------------------- validation
def test_val_set_and_left_padded_prompts(tok, encoder):
    vqa = build_val_set(
        DataSourceConfig(name="v", task="ring", mode="vqa", split="test", image_size=SIZE), encoder, 3, seed=1
    )
    tqa = build_val_set(DataSourceConfig(name="t", task="ring", mode="tqa", split="test"), encoder, 2, seed=1)
    raws = list(generate_split("ring", "test", 3, seed=1, image_size=SIZE))
    assert [item["answer"] for item in vqa] == [raw["answer"] for raw in raws]
    for item, raw in zip(vqa, raws):
        text = tok.decode(item["input_ids"])
        assert text.endswith(build_prompt(raw, "image") + "<|im_end|>\n<|im_start|>assistant\n")
        assert item["options"] == raw["options"] and item["source"] == "v"
        assert item["pixel_values"].shape == (1, 3, SIZE, SIZE)
    assert tqa[0]["pixel_values"].shape[0] == 0 and build_prompt(raws[0], "text") in tok.decode(
        tqa[0]["input_ids"]
    )
    items = [tqa[0], vqa[0], vqa[1]]
    batch = collate_prompts(items, pad_id=0)
    length = max(len(i["input_ids"]) for i in items)
    assert batch["input_ids"].shape == (3, length)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        assert torch.equal(batch["input_ids"][row, length - n :], item["input_ids"])
        assert batch["segment_ids"][row].tolist() == [-1] * (length - n) + [0] * n
        assert batch["position_ids"][row, length - n :].tolist() == list(range(n))
    assert torch.equal(batch["pixel_values"], torch.cat([vqa[0]["pixel_values"], vqa[1]["pixel_values"]]))


def test_data_modules_do_not_import_training_layers():
    root = Path(__file__).resolve().parent.parent / "vlmlab" / "data"
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(
                    ("vlmlab.models", "vlmlab.train", "vlmlab.eval", "vlmlab.sweep")
                )
