"""Open-weight VLMs (paper, Appendix B): tiny random Qwen2.5-VL and Gemma 3 built from their config classes,
saved in the released layout, loaded through `model.open_weight`, fed through their own processors,
fine-tuned with SFT (vlmlab's Lightning loop) and GRPO (TRL) on SpatialMap and evaluated on the four
held-out settings; the binary final-answer reward; the open-weight sweep's grid (Table 15, Appendix B)."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest
import torch
from paper_facts import (
    APPENDIX_B_DATASETS,
    APPENDIX_B_MODELS,
    APPENDIX_B_RL_MODELS,
    TABLE_15,
    TRAIN_SAMPLES_PER_DATASET,
)
from ports import unused_port
from tiny_open_weight import FAMILIES, build_tiny, save_tiny, save_tiny_remote

from vlmlab.cli import main as vlmlab_main
from vlmlab.config import DataSourceConfig, ExperimentConfig, ModelConfig, load_config
from vlmlab.data.chat_encode import ChatEncoder, collate_chat
from vlmlab.data.samples import synthetic_to_sample
from vlmlab.data.synthetic.generate import generate_split
from vlmlab.errors import ConfigError
from vlmlab.models.open_weight import load_open_weight, parameter_group
from vlmlab.presets import preset_root
from vlmlab.runs.record import RECORD_KEYS, RUN_KEYS, config_hash, validate_record
from vlmlab.sweep.expand import expand
from vlmlab.sweep.spec import load_sweep
from vlmlab.train import grpo
from vlmlab.train.run import train

REPO = Path(__file__).resolve().parent.parent
PRESETS = preset_root()
SWEEP = PRESETS / "sweeps" / "open_weight.yaml"
HUB_IDS = {  # how the sweep names the paper's models (their hub repositories)
    "Qwen2.5-VL-7B": "Qwen/Qwen2.5-VL-7B-Instruct",
    "Qwen2.5-VL-3B": "Qwen/Qwen2.5-VL-3B-Instruct",
    "InternVL3-8B": "OpenGVLab/InternVL3-8B-hf",
    "Gemma-3-4B": "google/gemma-3-4b-it",
    "Kimi-VL-A3B": "moonshotai/Kimi-VL-A3B-Instruct",
}
END_OF_TURN = {"qwen2_5_vl": "<|im_end|>", "gemma3": "<end_of_turn>"}


@pytest.fixture(scope="module", params=FAMILIES)
def saved(request, tmp_path_factory) -> tuple[str, Path]:
    family = request.param
    return family, save_tiny(family, tmp_path_factory.mktemp(family) / "base")


def spatialmap(mode: str, count: int = 2, size: int = 96) -> list[dict]:
    raws = generate_split("spatialmap", "test", count, seed=3, image_size=size, image=mode != "tqa")
    return [synthetic_to_sample(raw, mode) for raw in raws]


# ------------------------------------------------------------------------------- loading and processor


def test_saved_model_loads_through_the_new_path_with_the_same_weights(saved) -> None:
    family, folder = saved
    reference, processor = build_tiny(family)  # the same seed: the weights that were saved
    model = load_open_weight(ModelConfig(open_weight=str(folder)))
    assert type(model.hf).__name__ == type(reference).__name__
    encoder = ChatEncoder(model.processor, 512, image_size=96)
    batch = collate_chat([encoder.encode(s) for s in spatialmap("vqa")], encoder.pad_id)
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "segment_ids"}
    with torch.no_grad():
        ours = model(**inputs).logits
        theirs = reference.eval()(**inputs).logits
    torch.testing.assert_close(ours, theirs)
    # every parameter in exactly one group; the vision tower, projector and language model all present
    groups = model.parameter_groups()
    assert {g for g, params in groups.items() if params} == {"image_tokenizer", "adapter", "language_model"}
    assert sum(p.numel() for params in groups.values() for _, p in params) == sum(
        p.numel() for p in reference.parameters()
    )


def test_parameter_groups_follow_the_released_module_names() -> None:
    assert parameter_group("model.visual.blocks.0.attn.qkv.weight") == "image_tokenizer"
    assert parameter_group("model.visual.merger.mlp.0.weight") == "adapter"  # Qwen2.5-VL's projector
    assert parameter_group("model.multi_modal_projector.mm_input_projection_weight") == "adapter"
    assert (
        parameter_group("model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight")
        == "image_tokenizer"
    )
    assert parameter_group("model.language_model.layers.0.self_attn.q_proj.weight") == "language_model"
    assert parameter_group("lm_head.weight") == "language_model"
    with pytest.raises(ConfigError, match="audio_tower.conv.weight"):
        parameter_group("model.audio_tower.conv.weight")


# transformers' image-text-to-text classes the paper's models (and their neighbours) use: every parameter of
# each maps onto a vlmlab group (names only: built on the meta device from the default configs)
HF_CLASSES = (
    ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig"),
    ("Qwen2VLForConditionalGeneration", "Qwen2VLConfig"),
    ("Qwen3VLForConditionalGeneration", "Qwen3VLConfig"),
    ("Gemma3ForConditionalGeneration", "Gemma3Config"),
    ("InternVLForConditionalGeneration", "InternVLConfig"),
    ("LlavaForConditionalGeneration", "LlavaConfig"),
)


@pytest.mark.parametrize(("model_class", "config_class"), HF_CLASSES)
def test_every_parameter_of_the_hf_classes_has_a_group(model_class: str, config_class: str) -> None:
    import transformers

    with torch.device("meta"):
        model = getattr(transformers, model_class)(getattr(transformers, config_class)())
    sizes: dict[str, int] = {}
    for name, param in model.named_parameters():
        sizes[parameter_group(name)] = sizes.get(parameter_group(name), 0) + param.numel()
    assert set(sizes) == {"image_tokenizer", "adapter", "language_model"}
    # the language model is the largest part and the projector the smallest, in every released design
    assert sizes["language_model"] > sizes["image_tokenizer"] > sizes["adapter"] > 0


def test_remote_code_runs_only_for_a_named_model(tmp_path: Path) -> None:
    """A repository with its own modelling code (Kimi-VL's kind): refused unless trust_remote_code names it."""
    folder = save_tiny_remote(tmp_path / "remote")
    with pytest.raises(ConfigError, match="list .* in model.trust_remote_code"):
        load_open_weight(ModelConfig(open_weight=str(folder)))
    with pytest.raises(ConfigError, match="custom code"):
        load_open_weight(ModelConfig(open_weight=str(folder), trust_remote_code=["some/other-model"]))
    model = load_open_weight(ModelConfig(open_weight=str(folder), trust_remote_code=[str(folder)]))
    assert type(model.hf).__name__ == "TinyRemoteVL"
    assert {g for g, params in model.parameter_groups().items() if params} == {
        "image_tokenizer",
        "adapter",
        "language_model",
    }


def test_files_that_do_not_match_the_architecture_are_refused(tmp_path: Path) -> None:
    folder = save_tiny("qwen2_5_vl", tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 3  # a layer the weights file does not have
    config["text_config"]["layer_types"] = ["full_attention"] * 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="does not load strictly .*missing: .*layers.2"):
        load_open_weight(ModelConfig(open_weight=str(folder)))
    with pytest.raises(ConfigError, match="Cannot load open-weight model"):
        load_open_weight(ModelConfig(open_weight=str(tmp_path / "nothing-here")))


def test_processor_path_matches_the_models_own_processor(saved) -> None:
    """Our encoding of a sample = the processor's own one-call chat path (same ids, same pixels)."""
    family, folder = saved
    model = load_open_weight(ModelConfig(open_weight=str(folder)))
    processor = model.processor
    encoder = ChatEncoder(processor, 512, image_size=96)
    sample = spatialmap("vqa", 1)[0]
    image, question = sample["segments"][0]["image"], sample["segments"][1]["text"]
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}
    ]
    theirs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    ours = encoder.encode_prompt(sample)
    assert ours["input_ids"].tolist() == theirs["input_ids"][0].tolist()
    torch.testing.assert_close(ours["pixel_values"], theirs["pixel_values"], rtol=0, atol=0)
    for key in ("image_grid_thw", "token_type_ids", "mm_token_type_ids"):
        if key in theirs:
            assert (
                ours[key].tolist()
                == (
                    theirs[key][0] if theirs[key].dim() == 2 and key != "image_grid_thw" else theirs[key]
                ).tolist()
            )
    # training: the whole conversation; labels exactly on the answer and the end-of-turn marker
    full = [*messages, {"role": "assistant", "content": [{"type": "text", "text": sample["response"]}]}]
    whole = processor.apply_chat_template(full, tokenize=True, return_dict=True, return_tensors="pt")
    encoded = encoder.encode(sample)
    assert encoded["input_ids"].tolist() == whole["input_ids"][0].tolist()
    labelled = [
        t for t, label in zip(encoded["input_ids"].tolist(), encoded["labels"].tolist()) if label != -100
    ]
    assert processor.tokenizer.decode(labelled) == sample["response"] + END_OF_TURN[family]


def test_text_only_samples_and_mixed_batches(saved) -> None:
    _, folder = saved
    model = load_open_weight(ModelConfig(open_weight=str(folder)))
    encoder = ChatEncoder(model.processor, 1024, image_size=96)
    text = encoder.encode(spatialmap("tqa", 1)[0])
    assert text["pixel_values"].numel() == 0
    image = encoder.encode(spatialmap("vqa", 1)[0])
    batch = collate_chat([text, image], encoder.pad_id)
    assert batch["input_ids"].shape[0] == 2
    assert batch["pixel_values"].shape == image["pixel_values"].shape  # only the image sample's pixels
    assert batch["attention_mask"].sum().item() == len(text["input_ids"]) + len(image["input_ids"])
    loss = model(**{k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}).loss
    assert torch.isfinite(loss)
    # too long: dropped and counted, never cut
    short = ChatEncoder(model.processor, 16, image_size=96)
    assert short.encode(spatialmap("tqa", 1)[0]) is None and short.num_dropped == 1


# -------------------------------------------------------------------------------------------- reward

OPTIONS = ["Northeast", "Northwest", "Southeast", "Southwest"]


def test_final_answer_reward_correct_incorrect_unparseable() -> None:
    completions = [
        [{"role": "assistant", "content": "The cross is below and right. Final answer: Southeast"}],
        [{"role": "assistant", "content": "Final answer: Northwest"}],  # a valid option, but wrong
        [{"role": "assistant", "content": "It is somewhere to the south."}],  # no final answer
        "Final answer: Southeast",  # plain (non-conversational) completion
        [{"role": "assistant", "content": [{"type": "text", "text": "Final answer: Southwest"}]}],
    ]
    rewards = grpo.final_answer_reward(
        completions,
        answer=["Southeast", "Southeast", "Southeast", "Southeast", "Southwest"],
        options=[OPTIONS] * 5,
    )
    assert rewards == [1.0, 0.0, 0.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------- training, end to end


def run_config(base: Path, out: Path, method: str, **rl) -> ExperimentConfig:
    val = [
        {
            "name": "spatialmap-vqa-val",
            "kind": "synthetic",
            "task": "spatialmap",
            "mode": "vqa",
            "split": "test",
        }
    ]
    return load_config(
        ExperimentConfig,
        [
            {
                "model": {"open_weight": str(base)},
                "data": {
                    "packing": False,
                    "max_length": 512,
                    "micro_batch_size": 2,
                    "val_samples": 2,
                    "train": [
                        {
                            "kind": "synthetic",
                            "task": "spatialmap",
                            "mode": "vqa",
                            "split": "train",
                            "num_samples": 8,
                        }
                    ],
                    "val": val,
                },
                "train": {
                    "stage": 3,
                    "freeze": "unfreeze-lm",
                    "method": method,
                    "max_steps": 4,
                    "global_batch_size": 2,
                    "transfer_eval_samples": 3,
                    "accelerator": "cpu",
                    "output_dir": str(out),
                    "select_best": True,
                    "val_every_n_steps": 2,
                    "checkpoint_every_n_steps": 2,
                    "log_every_n_steps": 1,
                },
                "optim": {"lr": {"adapter": 1e-3, "language_model": 1e-3, "image_tokenizer": 1e-3}},
                "rl": {
                    "prompts_per_step": 2,
                    "num_generations": 2,
                    "micro_batch_size": 2,
                    "max_completion_length": 6,
                    "max_steps": 3,
                    "eval_every_n_steps": 2,
                    "lr": 1e-3,
                    **rl,
                },
            }
        ],
    )


def check_four_settings(run: Path, samples: int) -> None:
    record = json.loads((run / "eval.json").read_text())
    cells = record["metrics"]["spatialmap"]
    assert {(m, s) for m in cells for s in cells[m]} == {
        ("vqa", "ind"),
        ("vqa", "ood"),
        ("tqa", "ind"),
        ("tqa", "ood"),
    }
    for modality in cells.values():
        for cell in modality.values():
            assert cell["n"] == samples and 0.0 <= cell["score"] <= 1.0
    assert record["chance"]["spatialmap"]["vqa"]["ind"] == pytest.approx(0.25)


def changed_groups(before: Path, after: Path) -> dict[str, bool]:
    """Per vlmlab group: whether any parameter differs between two saved models (loaded as models: the
    files keep the release's key names, which transformers maps onto its modules)."""
    old = dict(load_open_weight(ModelConfig(open_weight=str(before))).hf.named_parameters())
    new = dict(load_open_weight(ModelConfig(open_weight=str(after))).hf.named_parameters())
    changed: dict[str, bool] = {}
    for name, value in old.items():
        group = parameter_group(name)
        changed[group] = changed.get(group, False) or not torch.equal(value, new[name])
    return changed


def _recording_reward(seen: list[tuple[str, str, list[str], float]]):
    real = grpo.final_answer_reward

    def recording(completions, answer, options, **kwargs):
        rewards = real(completions, answer, options, **kwargs)
        seen.extend(
            (grpo.completion_text(c), a, o, r) for c, a, o, r in zip(completions, answer, options, rewards)
        )
        # a random model never answers right: add a length term so that the group advantages are not all
        # zero and the policy-gradient step moves the weights (the binary part is what is checked below)
        return [r + len(grpo.completion_text(c)) / 100 for r, c in zip(rewards, completions)]

    return recording


@pytest.fixture(scope="module")
def finished(saved, tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """One finished run per method and model family (trained once, read by every test below): the base
    evaluation, SFT, and GRPO with the rewards it was given recorded."""
    _, base = saved
    runs = tmp_path_factory.mktemp("runs")
    done = {}
    for method in ("eval", "sft"):
        done[method] = train(run_config(base, runs / method, method)), runs / method
    seen: list[tuple[str, str, list[str], float]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grpo, "final_answer_reward", _recording_reward(seen))
        grpo_out = tmp_path_factory.mktemp("grpo") / "grpo"  # apart: the results layout reads runs/
        done["grpo"] = train(run_config(base, grpo_out, "grpo")), grpo_out
    done["grpo_rewards"] = seen
    return done


def test_sft_trains_the_language_model_and_evaluates_the_four_settings(saved, finished) -> None:
    _, base = saved
    record, run = finished["sft"]
    assert (run / "result.json").exists() and record["timings"]["steps"] == 4
    assert json.loads((run / "result.json").read_text()) == record
    # the saved checkpoint loads as it is (save_pretrained + processor)
    assert (run / "final" / "config.json").exists() and (run / "final" / "processor_config.json").exists()
    changed = changed_groups(base, run / "final")
    assert changed == {"image_tokenizer": False, "adapter": True, "language_model": True}  # unfreeze-lm
    with (run / "logs" / "metrics.csv").open() as handle:  # the loss falls on the answer tokens
        losses = [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.2
    check_four_settings(run, 3)
    assert record["best"]["step"] in (2, 4)


def test_grpo_uses_the_final_answer_reward_and_trains(saved, finished) -> None:
    _, base = saved
    record, run = finished["grpo"]
    seen = finished["grpo_rewards"]
    assert record["timings"]["steps"] == 3
    # every completion was scored against its own prompt's gold answer and options, 2 prompts x 2 samples
    assert len(seen) == 3 * 2 * 2
    for text, answer, options, reward in seen:
        assert answer in options and reward == float(
            f"Final answer: {answer}" in text and text.strip().endswith(answer)
        )
    assert len(record["rewards"]) == 3
    changed = changed_groups(base, run / "final")
    assert changed["image_tokenizer"] is False and changed["language_model"] is True
    assert (run / "best" / "meta.json").exists() and record["best"]["step"] in (2, 3)
    check_four_settings(run, 3)
    assert not (run / "checkpoints").exists()  # resumable state removed once the run is done


def test_base_evaluation_run(saved, finished) -> None:
    _, base = saved
    record, run = finished["eval"]
    assert record["timings"]["steps"] == 0 and record["checkpoint"] == str(base)
    check_four_settings(run, 3)
    assert not (run / "final").exists()  # nothing trained, nothing saved


def test_records_of_every_method_share_one_key_set(finished) -> None:
    """SFT, GRPO and eval-only runs write their result.json through one builder: the same keys, each record
    valid as an evaluation record, with the run's folder name as its id and the hash of its config."""
    keys = {}
    for method in ("eval", "sft", "grpo"):
        record, run = finished[method]
        written = json.loads((run / "result.json").read_text())
        assert written == record and validate_record(written) == written
        assert written["run_id"] == run.name and written["config_hash"] == config_hash(written["config"])
        keys[method] = set(written)
    assert keys["eval"] == keys["sft"] == keys["grpo"] == {*RECORD_KEYS, *RUN_KEYS} - {"baselines"}
    assert finished["eval"][0]["rewards"] is None and finished["sft"][0]["rewards"] is None


def test_open_weight_settings_fail_with_one_line(tmp_path: Path, saved) -> None:
    _, base = saved
    config = run_config(base, tmp_path / "x", "sft")
    config.data.packing = True
    with pytest.raises(ConfigError, match="data.packing: false"):
        train(config)
    config = run_config(base, tmp_path / "y", "grpo", num_generations=1)
    with pytest.raises(ConfigError, match="at least 2"):
        train(config)
    config = run_config(base, tmp_path / "z", "grpo")
    config.model.open_weight = None
    with pytest.raises(ConfigError, match="open-weight models"):
        train(config)
    with pytest.raises(ConfigError, match="training method"):
        load_config(ExperimentConfig, [{"train": {"method": "ppo"}}])


# ------------------------------------------------------------------------------------------- the sweep


def test_open_weight_sweep_has_the_papers_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert vlmlab_main(["sweep", str(SWEEP), "--dry-run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    datasets, modalities = len(APPENDIX_B_DATASETS), 2
    expected = {
        HUB_IDS[name]: {
            "eval": datasets,  # the base model, once per dataset
            "sft": datasets * modalities,  # Tables 8-9
            "grpo": datasets if name in APPENDIX_B_RL_MODELS else 0,  # Tables 10-11: VQA only
        }
        for name in APPENDIX_B_MODELS
    }
    assert data["counts"]["open_weight"] == expected
    assert data["counts"]["total"] == 5 * 3 + 5 * 3 * 2 + 2 * 3 == 51
    assert vlmlab_main(["sweep", str(SWEEP), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "total                             30     6    15     51" in text


def test_open_weight_sweep_configs_follow_table_15() -> None:
    dag = expand(load_sweep(SWEEP))
    sft, rl = TABLE_15["sft"], TABLE_15["rl"]
    for run in dag:
        config = run.config
        method, task = config["train"]["method"], config["data"]["train"][0]["task"]
        assert (
            task in APPENDIX_B_DATASETS
            and config["data"]["train"][0]["num_samples"] == TRAIN_SAMPLES_PER_DATASET
        )
        assert config["train"]["transfer_eval_samples"] == 500 and config["data"]["packing"] is False
        if method == "sft":
            assert config["train"]["global_batch_size"] == sft["batch"]
            assert config["train"]["max_steps"] == TRAIN_SAMPLES_PER_DATASET // sft["batch"] * sft["epochs"]
            groups = ("image_tokenizer", "adapter", "language_model")  # an open-weight model's groups
            assert {config["optim"]["lr"][g] for g in groups} == {sft["lr"]} and config["optim"][
                "warmup_steps"
            ] == 0
            assert tuple(config["optim"]["betas"]) == sft["betas"] and config["optim"]["min_lr_ratio"] == 0.0
        if method == "grpo":
            assert config["data"]["train"][0]["mode"] == "vqa"
            r = config["rl"]
            assert (r["lr"], r["epochs"], r["prompts_per_step"], r["num_generations"], r["kl_coef"]) == (
                rl["lr"],
                rl["epochs"],
                rl["batch"],
                rl["samples_per_prompt"],
                rl["kl"],
            )
            assert rl["batch"] == rl["rollout_batch"]  # one prompt batch per rollout, as the code assumes
        # only Kimi-VL may run its repository's code
        trusted = config["model"]["open_weight"] in config["model"]["trust_remote_code"]
        assert trusted == (config["model"]["open_weight"] == HUB_IDS["Kimi-VL-A3B"])


def test_grpo_arguments_are_table_15(tmp_path: Path) -> None:
    config = load_config(
        ExperimentConfig, [{"model": {"open_weight": "org/model"}, "train": {"method": "grpo"}}]
    )
    args = grpo.grpo_arguments(config, tmp_path)
    rl = TABLE_15["rl"]
    assert args.learning_rate == rl["lr"] and args.lr_scheduler_type == "constant" and args.warmup_steps == 0
    assert (args.adam_beta1, args.adam_beta2) == rl["betas"] and args.num_train_epochs == rl["epochs"]
    assert args.num_generations == rl["samples_per_prompt"] and args.beta == rl["kl"]
    completions = rl["batch"] * rl["samples_per_prompt"]  # 640: one optimizer step per rollout batch
    assert args.generation_batch_size == completions
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == completions
    with pytest.raises(ConfigError, match="not a multiple"):
        config.rl.micro_batch_size = 7
        grpo.grpo_arguments(config, tmp_path)


def test_results_print_the_tables_from_real_runs(finished, tmp_path: Path, capsys) -> None:
    """The records the runs write (eval.json next to result.json and the saved model's JSON files) are
    what `vlmlab results --layout open_weight` reads: base and SFT give Table 8 with the change."""
    runs = finished["sft"][1].parent  # the base evaluation and the SFT run, side by side
    assert finished["eval"][1].parent == runs
    capsys.readouterr()
    assert (
        vlmlab_main(["results", str(runs), "--layout", "open_weight", "--out", str(tmp_path / "tables")]) == 0
    )
    text = capsys.readouterr().out
    evaluated = {
        name: json.loads((runs / name / "eval.json").read_text())["metrics"]["spatialmap"]
        for name in ("eval", "sft")
    }
    sft, before = evaluated["sft"]["tqa"]["ind"]["score"], evaluated["eval"]["tqa"]["ind"]["score"]
    change = round(100 * sft, 1) - round(100 * before, 1)
    assert f"{100 * sft:.1f} ({change:+.1f})" in text  # the SFT cell with its change from the base model
    assert (tmp_path / "tables" / "open_weight_sft_vqa.csv").exists()


@pytest.mark.slow(seconds=70)
def test_fsdp_training_of_an_open_weight_model_equals_ddp(tmp_path: Path) -> None:
    """train.strategy: fsdp cuts the model at its `_no_split_modules` (decoder layers, vision blocks): two
    sharded processes train the same weights as two DDP processes, and validate and evaluate on the
    sharded model (generation in lockstep). The FSDP run is started as a user starts it, one command that
    Lightning's launcher turns into two processes; the DDP reference's two ranks are started together
    (tests/test_training.py run_cli)."""
    import subprocess
    import sys

    from omegaconf import OmegaConf
    from test_training import run_cli

    base = save_tiny("qwen2_5_vl", tmp_path / "base")
    results = {}
    for strategy in ("ddp", "fsdp"):
        config = run_config(base, tmp_path / strategy, "sft")
        config.data.micro_batch_size = 1
        config.train.max_steps = 3
        path = tmp_path / f"{strategy}.yaml"
        path.write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
        options = [f"train.strategy={strategy}", "train.devices=2", "train.accelerator=cpu"]
        options.append("train.deterministic=true")
        if strategy == "ddp":
            ranks = run_cli(str(path), *options, ranks=2)
            assert ranks.wait(timeout=600) == 0, ranks.stderr_text()[-3000:]
        else:
            command = [sys.executable, "-m", "vlmlab.cli", "train", str(path), *options]
            env = {**os.environ, "MASTER_PORT": str(unused_port())}
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-3000:]
        results[strategy] = json.loads((tmp_path / strategy / "eval.json").read_text())["metrics"]
    ddp = dict(
        load_open_weight(ModelConfig(open_weight=str(tmp_path / "ddp" / "final"))).hf.named_parameters()
    )
    fsdp = dict(
        load_open_weight(ModelConfig(open_weight=str(tmp_path / "fsdp" / "final"))).hf.named_parameters()
    )
    assert ddp.keys() == fsdp.keys()
    for name in ddp:
        torch.testing.assert_close(fsdp[name], ddp[name], rtol=1e-4, atol=1e-5, msg=name)
    assert changed_groups(base, tmp_path / "fsdp" / "final")["language_model"]
    assert results["fsdp"] == results["ddp"]


def test_single_process_methods_refuse_a_multi_process_layout(saved, tmp_path: Path) -> None:
    _, base = saved
    config = run_config(base, tmp_path / "e", "eval")
    config.train.devices, config.train.global_batch_size = 2, 4
    with pytest.raises(ConfigError, match="evaluates in one process"):
        train(config)
    config = run_config(base, tmp_path / "g", "grpo")
    config.train.devices, config.train.global_batch_size = 2, 4
    with pytest.raises(ConfigError, match="accelerate launch --num_processes 2"):
        train(config)


def test_grpo_stops_at_a_signal_and_resumes_from_its_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """SIGUSR1 (Slurm's time-limit signal) during step 2: the HF Trainer checkpoint of step 2 is written and
    the run stops; the same command resumes from it and finishes the remaining steps."""
    import os
    import signal

    from vlmlab.errors import TrainingStopped

    base = save_tiny("qwen2_5_vl", tmp_path / "base")
    real, calls = grpo.final_answer_reward, {"n": 0, "kill_at": 2}

    def signalling(completions, answer, options, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["kill_at"]:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(completions, answer, options, **kwargs)

    monkeypatch.setattr(grpo, "final_answer_reward", signalling)
    config = run_config(base, tmp_path / "run", "grpo", max_steps=4)
    config.train.checkpoint_every_n_steps = 100  # only the signal writes one
    with pytest.raises(TrainingStopped, match="SIGUSR1 received: stopped after step 2"):
        train(config)
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("checkpoint-*")] == ["checkpoint-2"]
    assert not (tmp_path / "run" / "result.json").exists()
    calls["kill_at"] = -1
    record = train(config)
    assert record["timings"]["steps"] == 4
    assert [entry["step"] for entry in record["rewards"]] == [1, 2, 3, 4]  # 1-2 before, 3-4 after resuming
    assert calls["n"] == 4  # the resumed run rolled out steps 3 and 4 only


def test_export_of_an_open_weight_run_points_at_its_checkpoint(finished, tmp_path: Path, capsys) -> None:
    run = finished["sft"][1]
    capsys.readouterr()
    assert vlmlab_main(["export", str(run), "--out", str(tmp_path / "hf")]) != 0
    error = capsys.readouterr().err
    assert "save_pretrained folder already" in error and str(run / "best") in error
    assert "Traceback" not in error


def test_the_stream_encodes_images_of_any_size_as_the_processor_does(saved) -> None:
    """Images drawn at another size than the encoder plans with (200 vs 384 pixels): the stream's batches
    hold each sample exactly as the processor encodes it with its real image."""
    from vlmlab.config import DataConfig, DataSourceConfig
    from vlmlab.data.sources import open_source
    from vlmlab.data.stream import TrainStream, train_loader

    family, folder = saved
    model = load_open_weight(ModelConfig(open_weight=str(folder)))
    encoder = ChatEncoder(model.processor, 512, image_size=384)
    source = DataSourceConfig(
        kind="synthetic", task="spatialmap", mode="vqa", split="train", num_samples=4, image_size=200
    )
    samples = list(open_source(source, seed=0, image_size=384).samples_in_order(4))
    expected = [encoder.encode(sample)["input_ids"].tolist() for sample in samples]
    blank = {
        **samples[0],
        "segments": [{**p, "image": None} if p["type"] == "image" else p for p in samples[0]["segments"]],
    }
    if family == "qwen2_5_vl":  # dynamic resolution: the plan (a 384-pixel stand-in) is not the real length
        assert encoder.length(blank) != len(expected[0])
    else:  # Gemma 3 resizes every image to its fixed input size: the same number of tokens
        assert encoder.length(blank) == len(expected[0])
    data = DataConfig(train=[source], packing=False, micro_batch_size=2, max_length=512)
    loader = iter(train_loader(TrainStream.from_config(data, encoder, seed=0, image_size=384)))
    for _ in range(2):
        batch = next(loader)
        for row, mask in zip(batch["input_ids"], batch["attention_mask"]):
            assert row[mask.bool()].tolist() in expected


def test_generation_budget_and_end_of_turn(saved) -> None:
    """Batched answers (left-padded prompts) are the greedy continuation transformers' generate() gives each
    prompt alone, within `max_new_tokens` and cut before the model's end-of-turn token."""
    from vlmlab.data.validation import build_val_set
    from vlmlab.scoring.accuracy import generate_texts

    family, folder = saved
    model = load_open_weight(ModelConfig(open_weight=str(folder))).eval()
    encoder = ChatEncoder(model.processor, 512, image_size=96)
    source = DataSourceConfig(kind="synthetic", task="spatialmap", mode="vqa", split="test", image_size=96)
    items = build_val_set(source, encoder, 3, seed=0, image_size=96)
    tokenizer = model.tokenizer
    for budget in (1, 5):
        texts = generate_texts(model, tokenizer, items, max_new_tokens=budget)
        for text, item in zip(texts, items):
            inputs = {
                k: v[None] if k in ("input_ids",) else v
                for k, v in item.items()
                if isinstance(v, torch.Tensor)
            }
            for key in ("token_type_ids", "mm_token_type_ids"):
                if key in inputs:
                    inputs[key] = inputs[key][None]
            with torch.no_grad():
                reference = model.hf.generate(**inputs, max_new_tokens=budget, do_sample=False)[
                    0, len(item["input_ids"]) :
                ]
            stop = tokenizer.convert_tokens_to_ids(END_OF_TURN[family])
            tokens = reference.tolist()
            tokens = tokens[: tokens.index(stop)] if stop in tokens else tokens
            assert len(reference) <= budget
            # batched with left padding (3 prompts of different lengths) = one prompt alone
            assert text == tokenizer.decode(tokens, skip_special_tokens=True)


def test_data_inspect_shows_what_the_open_weight_model_sees(tmp_path: Path) -> None:
    """`vlmlab data inspect` on an open-weight config renders through the model's processor: its chat
    markup, its image markers (one <image> for the run of image tokens) and the scored answer."""
    from omegaconf import OmegaConf

    from vlmlab.data.inspect import inspect

    base = save_tiny("qwen2_5_vl", tmp_path / "base")
    config = run_config(base, tmp_path / "run", "sft")
    path = tmp_path / "exp.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))
    report = inspect(str(path), [], 2, 1, None)
    assert re.search(r"<\|im_start\|>user\n<\|vision_start\|><image><\|vision_end\|>Consider the map", report)
    assert re.search(
        r"<\|im_start\|>assistant\n\[\[Final answer: (North|South)(east|west)<\|im_end\|>\]\]", report
    )
    counts = [int(n) for n in re.findall(r"1 image\(s\), (\d+) image tokens", report)]
    assert len(counts) == 2 and all(n > 1 for n in counts)  # the processor's many tokens per image


def test_grpo_selects_its_checkpoint_on_samples_the_tables_do_not_report(tmp_path: Path) -> None:
    """The sweep's validation set (which picks the best RL checkpoint) and the evaluation's test samples
    (which the tables report) share no prompt."""
    from vlmlab.data.validation import build_val_set
    from vlmlab.scoring.transfer import EVAL_SEED
    from vlmlab.train.data import TrainData

    run = next(r for r in expand(load_sweep(SWEEP)) if r.config["train"]["method"] == "grpo")
    config = load_config(ExperimentConfig, [run.config])
    config.model.open_weight = str(save_tiny("qwen2_5_vl", tmp_path / "base"))
    model = load_open_weight(config.model)
    data = TrainData(config, model)
    (validation,) = data.val_sets().values()
    assert len(validation) == config.data.val_samples
    source = DataSourceConfig(kind="synthetic", task=config.data.val[0].task, mode="vqa", split="test")
    test = build_val_set(
        source, data.encoder, 500, seed=EVAL_SEED, image_size=384
    )  # as vlmlab.scoring.transfer
    assert not {tuple(i["input_ids"].tolist()) for i in validation} & {
        tuple(i["input_ids"].tolist()) for i in test
    }


# ------------------------------------------------------------------------------------ LoRA (issue 26, SFT)


def test_sft_with_lora_trains_the_adapters_and_saves_a_merged_model(saved, tmp_path: Path) -> None:
    """LLaMA-Factory's default for SFT: LoRA on every projection of the language model. The run's record
    counts the adapters as summed by hand from the text config; the saved model is the plain architecture
    (adapters merged), where only the projections of the language model (and the always-trained projector)
    differ from the base."""
    _, base = saved
    config = run_config(base, tmp_path / "lora", "sft")
    config.train.freeze = "lora-lm"
    config.train.max_steps, config.train.transfer_eval_samples = 3, 0
    config.train.select_best, config.train.val_every_n_steps = False, None
    config.data.val = []
    config.train.lora.rank = 4
    record = train(config)
    text = load_open_weight(ModelConfig(open_weight=str(base))).hf.config.get_text_config()
    heads, kv_heads = text.num_attention_heads, text.num_key_value_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    hidden, inner = text.hidden_size, text.intermediate_size
    per_layer = sum(  # r x (in + out) for q, k, v, o, gate, up, down
        4 * (i + o)
        for i, o in [
            (hidden, heads * head_dim),
            (hidden, kv_heads * head_dim),
            (hidden, kv_heads * head_dim),
            (heads * head_dim, hidden),
            (hidden, inner),
            (hidden, inner),
            (inner, hidden),
        ]
    )
    lm = record["freezing"]["language_model"]
    assert lm["lora"] == "r=4 alpha=16" and lm["trainable_params"] == per_layer * text.num_hidden_layers
    final = tmp_path / "lora" / "final"
    assert json.loads((final / "meta.json").read_text())["lora"]["language_model"]["rank"] == 4
    before = dict(load_open_weight(ModelConfig(open_weight=str(base))).hf.named_parameters())
    after = dict(load_open_weight(ModelConfig(open_weight=str(final))).hf.named_parameters())  # plain names
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    in_lm = {name for name in changed if parameter_group(name) == "language_model"}
    assert in_lm and all(name.rsplit(".", 2)[-2] in projections for name in in_lm)
    assert {parameter_group(name) for name in changed} == {"language_model", "adapter"}


def test_lora_layouts_not_supported_fail_with_one_line(saved, tmp_path: Path) -> None:
    _, base = saved
    for method, strategy, words in (("grpo", "auto", "GRPO"), ("sft", "fsdp", "train.strategy auto or ddp")):
        config = run_config(base, tmp_path / method, method)
        config.train.freeze, config.train.strategy = "lora-lm", strategy
        with pytest.raises(ConfigError) as error:
            train(config)
        assert words in str(error.value) and "\n" not in str(error.value)
        assert not (tmp_path / method / "config.yaml").exists()  # refused before anything is written
