"""The image pathway carries information: the easiest image question is learned from the pixels.

"What colour is the square?" (4 colours, a 28 px square anywhere on a 64 px grey canvas) can only be answered
from the image. Each fusion trains on it for 60 steps and must answer held-out images (>= 90 %, Wilson lower
bound above 50 % against 25 % chance). The same training with the image features zeroed stays near chance:
the contrast that shows accuracy comes from the pixels, not from the prompt or a label prior. A change that
cut the pathway (features not scattered into the sequence, cross-attention gates or masks wrong, a tokenizer
that ignores its input) fails the first check.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from test_training import experiment

from vlmlab.data.collate import collate_padded
from vlmlab.models.fusion import FUSIONS
from vlmlab.runs.load import text_side
from vlmlab.scoring.accuracy import evaluate_items
from vlmlab.scoring.intervals import wilson
from vlmlab.train.run import build_model

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 220), "yellow": (230, 210, 30)}
QUESTION = "What colour is the square? Options: red, green, blue, yellow."
STEPS, BATCH, HELD_OUT = 60, 16, 64


def colour_sample(rng: random.Random, index: int) -> dict:
    name = rng.choice(list(COLOURS))
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    x, y = rng.randint(4, 30), rng.randint(4, 30)
    ImageDraw.Draw(image).rectangle([x, y, x + 28, y + 28], fill=COLOURS[name])
    return {
        "id": str(index),
        "segments": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}],
        "response": f"Final answer: {name}",
        "answer": name,
        "options": list(COLOURS),
        "source": "colour",
    }


def train_and_score(tmp: Path, fusion: str, zero_images: bool) -> float:
    config = experiment(tmp, fusion, 2, fusion)
    torch.manual_seed(0)
    model = build_model(config)[0]
    if zero_images:
        features = model.image_features
        model.image_features = lambda pixels: torch.zeros_like(features(pixels))
    tokenizer, encoder = text_side(config, model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    rng = random.Random(0)
    model.train()
    for step in range(STEPS):
        samples = [colour_sample(rng, step * BATCH + k) for k in range(BATCH)]
        batch = collate_padded([encoder.encode(s) for s in samples], tokenizer.pad_token_id)
        loss = model(
            batch["input_ids"], batch["pixel_values"], batch["labels"], batch.get("segment_ids")
        ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    held_out = random.Random(99)  # other layouts and colours than training saw
    items = []
    for index in range(HELD_OUT):
        sample = colour_sample(held_out, index)
        items.append({"id": sample["id"], **encoder.encode_prompt(sample), "answer": sample["answer"],
                      "options": sample["options"]})  # fmt: skip
    result = evaluate_items(model, tokenizer, items, max_new_tokens=8)
    assert result["chance"] == 0.25
    return result["accuracy"]


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_the_colour_of_the_square_is_learned_from_the_image(tmp_path: Path, fusion: str) -> None:
    accuracy = train_and_score(tmp_path, fusion, zero_images=False)
    assert accuracy >= 0.9 and wilson(round(accuracy * HELD_OUT), HELD_OUT)[0] > 0.5, accuracy


def test_with_the_image_features_zeroed_it_stays_near_chance(tmp_path: Path) -> None:
    assert train_and_score(tmp_path, "joint_decoder", zero_images=True) <= 0.45
