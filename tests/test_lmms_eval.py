"""lmms-eval as the harness: `lmms-eval --model vlmlab --model_args run=...` on a tiny local task.

The test writes the task (YAMLs + a parquet file with generated images), trains a tiny run, runs lmms-eval's
command line offline and checks its results file against vlmlab's own greedy generation and the model's own
loss, computed here without the adapter.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from processes import run_script

from vlmlab.config import ExperimentConfig, load_config
from vlmlab.data.validation import collate_prompts
from vlmlab.errors import ConfigError
from vlmlab.models.generation import greedy_generate
from vlmlab.runs.load import load_run, text_side
from vlmlab.train.run import train

HAVE_LMMS_EVAL = importlib.util.find_spec("lmms_eval") is not None
needs_lmms_eval = pytest.mark.skipif(
    not HAVE_LMMS_EVAL,
    reason="lmms-eval is not installed (vlmlab's eval extra: pip install -e '.[eval]')",
)
REPO = Path(__file__).resolve().parent.parent
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "WANDB_MODE": "disabled",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
COLORS = ["red", "blue", "green", "yellow", "purple", "orange"]
UNTIL = ["yellow", "\n\n"]  # stop strings: a word piece the tiny model likes to say, and a byte run
MAX_NEW = 6
LMMS_EVAL_MAIN = "import sys; from lmms_eval.cli.dispatch import main; sys.argv[0] = 'lmms-eval'; main()"


def test_vlmlab_runs_without_lmms_eval_and_names_the_extra(tmp_path):
    """vlmlab never imports lmms-eval; asking for the adapter without it says how to install it."""
    script = (
        "import sys\n"
        "import vlmlab.cli, vlmlab.runs.load, vlmlab.eval.benchmark_eval, vlmlab.scoring.accuracy\n"
        "assert not any(m.split('.')[0] == 'lmms_eval' for m in sys.modules), 'lmms_eval imported'\n"
        "sys.modules['lmms_eval'] = None  # as if the extra were not installed\n"
        "from vlmlab.errors import ConfigError\n"
        "try:\n"
        "    import vlmlab.eval.lmms\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
    )
    (tmp_path / "check.py").write_text(script)
    # a new process forked from one that imported the training stack (tests/processes.py): it has not
    # imported lmms_eval either, so what the script finds imported is vlmlab's doing
    out = run_script(tmp_path / "check.py", env=dict(os.environ), cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "pip install -e '.[eval]'" in out.stdout


@needs_lmms_eval
def test_prompt_layout_and_stop_strings():
    from vlmlab.eval.lmms import cut_at_stops, prompt_sample

    a, b = Image.new("RGB", (8, 8), "red"), Image.new("RGB", (8, 8), "blue")
    # no marker: the images first, then the text (as `vlmlab eval --benchmark` lays out a record)
    sample = prompt_sample("What is shown?", [a, b])
    assert [s["type"] for s in sample["segments"]] == ["image", "image", "text"]
    assert sample["segments"][0]["image"] is a and sample["response"] == ""
    # one <image> marker per image: each image where its marker stands
    sample = prompt_sample("Left <image> and right <image>, which is red?", [a, b])
    assert [(s["type"], s.get("text")) for s in sample["segments"]] == [
        ("text", "Left "),
        ("image", None),
        ("text", " and right "),
        ("image", None),
        ("text", ", which is red?"),
    ]
    assert sample["segments"][1]["image"] is a and sample["segments"][3]["image"] is b
    # markers that do not match the images are dropped; the images go first
    sample = prompt_sample("<image> compare", [a, b])
    assert [(s["type"], s.get("text")) for s in sample["segments"]] == [
        ("image", None),
        ("image", None),
        ("text", " compare"),
    ]
    assert prompt_sample("text only", [])["segments"] == [{"type": "text", "text": "text only"}]
    assert cut_at_stops("abc\n\ndef", ["\n\n", "c"]) == "ab"
    assert cut_at_stops("abc", ["x", ""]) == "abc"


# -- a tiny trained run and a tiny local task


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lmms") / "run"
    data = {
        "max_length": 96,
        "micro_batch_size": 4,
        "train": [
            {"kind": "synthetic", "task": "spatialmap", "mode": "vqa", "difficulty": {"num_objects": 2}}
        ],
    }
    train_cfg = {"stage": 2, "freeze": "unfreeze-all", "max_steps": 2, "global_batch_size": 4}
    model = {
        "backbone": "qwen3-tiny",
        "tokenizer": "clip-tiny",
        "random_tokenizer": True,
        "fusion": "joint_decoder",
    }
    train(
        load_config(
            ExperimentConfig,
            [{"model": model, "data": data, "train": {**train_cfg, "output_dir": str(out)}}],
        )
    )
    return out


def docs() -> list[dict]:
    """The task's records: a coloured square and a question (one with an <image> marker mid-text)."""
    records = []
    for index, color in enumerate(COLORS):
        image = Image.new("RGB", (40, 40), "white")
        ImageDraw.Draw(image).rectangle([6, 6 + index, 30, 34], fill=color)
        question = f"What color is the square? ({index})"
        if index == 3:
            question = f"Here is a picture: <image> What color is the square? ({index})"
        records.append({"image": image, "question": question, "answer": color, "color": color})
    return records


class Reference:
    """What the run answers, computed with vlmlab's own pieces: greedy_generate per prompt (no batch), and
    the model's own loss for the log-likelihoods."""

    def __init__(self, run: Path):
        self.config, self.model = load_run(run)
        self.tokenizer, self.encoder = text_side(self.config, self.model)

    def prompt(self, record: dict) -> dict:
        text = record["question"]
        if "<image>" in text:
            before, after = text.split("<image>")
            segments = [{"type": "text", "text": before}, {"type": "image", "image": record["image"]}]
            segments.append({"type": "text", "text": after})
        else:
            segments = [{"type": "image", "image": record["image"]}, {"type": "text", "text": text}]
        return self.encoder.encode_prompt({"id": "ref", "segments": segments, "response": ""})

    def generate(self, record: dict) -> str:
        batch = collate_prompts([self.prompt(record)], self.encoder.pad_id)
        stops = [self.tokenizer.convert_tokens_to_ids("<|im_end|>"), self.tokenizer.eos_token_id]
        [tokens] = greedy_generate(
            self.model, batch["input_ids"], batch["segment_ids"], batch["pixel_values"], MAX_NEW, stops
        )
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = min([text.find(s) for s in UNTIL if s in text], default=len(text))
        return text[:cut]

    @torch.no_grad()
    def score(self, record: dict, continuation: str) -> tuple[float, bool]:
        """(sum of log p of the continuation's tokens after the prompt, all of them the argmax)."""
        prompt = self.prompt(record)
        target = self.encoder.text_ids(continuation)
        ids = torch.cat([prompt["input_ids"], torch.tensor(target)])[None]
        labels = torch.full_like(ids, -100)
        labels[0, -len(target) :] = torch.tensor(target)
        out = self.model(ids, pixel_values=prompt["pixel_values"], labels=labels)
        assert out.num_scored_tokens == len(target)
        greedy = bool((out.logits[0, -len(target) - 1 : -1].argmax(-1) == torch.tensor(target)).all())
        return -float(out.loss) * len(target), greedy


@pytest.fixture(scope="module")
def reference(run_dir) -> Reference:
    return Reference(run_dir)


def write_task(root: Path, records: list[dict]) -> Path:
    """Three lmms-eval tasks over one local parquet file: generation (target `answer`), multiple choice and
    log-likelihood (target `color`)."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    root.mkdir(parents=True, exist_ok=True)
    columns = {key: [r[key] for r in records] for key in ("image", "question", "answer", "color")}
    features = Features(
        {"image": ImageFeature(), **{k: Value("string") for k in ("question", "answer", "color")}}
    )
    Dataset.from_dict(columns, features=features).to_parquet(str(root / "test.parquet"))
    common = (
        "dataset_path: parquet\n"
        f"dataset_kwargs:\n  data_files:\n    test: {root / 'test.parquet'}\n"
        "test_split: test\n"
        "doc_to_visual: image\n"
        'doc_to_text: "{{question}}"\n'
    )
    (root / "gen.yaml").write_text(
        f"task: vlmlab_tiny_gen\n{common}doc_to_target: answer\noutput_type: generate_until\n"
        f"generation_kwargs:\n  max_new_tokens: {MAX_NEW}\n  until: {json.dumps(UNTIL)}\n  temperature: 0\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    (root / "mc.yaml").write_text(
        f"task: vlmlab_tiny_mc\n{common}doc_to_target: color\noutput_type: multiple_choice\n"
        f"doc_to_choice: {json.dumps(COLORS)}\ntarget_delimiter: ' '\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    # lmms-eval 0.7.3's own process_results for output_type loglikelihood unpacks the list of responses as
    # one (score, is_greedy) pair and fails for every model; a task's own process_results works
    (root / "ll.yaml").write_text(
        f"task: vlmlab_tiny_ll\n{common}doc_to_target: color\noutput_type: loglikelihood\n"
        "process_results: !function ll_utils.process_results\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: score\n    aggregation: mean\n    higher_is_better: false\n"
    )
    (root / "ll_utils.py").write_text(
        "def process_results(doc, results):\n"
        "    [(score, is_greedy)] = results\n"
        "    return {'acc': float(is_greedy), 'score': score}\n"
    )
    return root


def samples_of(out_dir: Path, task: str) -> dict[int, dict]:
    [path] = out_dir.rglob(f"*_samples_{task}.jsonl")
    return {s["doc_id"]: s for s in map(json.loads, path.read_text().splitlines())}


def flat(value):
    while isinstance(value, list):
        [value] = value
    return value


@needs_lmms_eval
@pytest.mark.slow(seconds=50)
def test_lmms_eval_command_line_on_a_local_task(run_dir, reference, tmp_path):
    records = docs()
    predictions = [reference.generate(r) for r in records]
    # two answers are what the run says (exact_match must count them: non-empty ones where there are),
    # the others are the colours
    said = [i for i, p in enumerate(predictions) if p.strip()]
    for index in (said + [i for i in range(len(records)) if i not in said])[:2]:
        records[index]["answer"] = predictions[index].strip()
    expected_em = sum(p.strip() == r["answer"] for p, r in zip(predictions, records)) / len(records)
    assert expected_em >= 2 / len(records)
    task_dir = write_task(tmp_path / "task", records)

    out_dir = tmp_path / "out"
    env = {
        **os.environ,
        **OFFLINE,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_DATASETS_CACHE": str(tmp_path / "ds"),
    }
    script = Path(sys.executable).parent / "lmms-eval"  # the console script the extra installs
    launcher = [str(script)] if script.exists() else [sys.executable, "-c", LMMS_EVAL_MAIN]
    command = [
        *launcher,
        "--model",
        "vlmlab",
        "--model_args",
        f"run={run_dir},device=cpu,max_new_tokens=99",  # the task's max_new_tokens wins
        "--tasks",
        "vlmlab_tiny_gen,vlmlab_tiny_mc,vlmlab_tiny_ll",
        "--include_path",
        str(task_dir),
        "--batch_size",
        "4",  # batches of 4 over 6 prompts: left padding and a short last batch
        "--output_path",
        str(out_dir),
        "--log_samples",
        "--verbosity",
        "WARNING",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    log = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, log
    assert "Error during evaluation" not in log, log

    [results_file] = out_dir.rglob("*_results.json")
    results = json.loads(results_file.read_text())
    assert results["model_name"] == "vlmlab" or "vlmlab" in json.dumps(results["config"])
    scores = results["results"]

    # generation: every prediction is vlmlab's greedy answer to the same prompt, cut at `until`
    generated = samples_of(out_dir, "vlmlab_tiny_gen")
    assert sorted(generated) == list(range(len(records)))
    for doc_id, sample in generated.items():
        # lmms-eval logs `resps` (the raw answer) only where it differs from the stripped `filtered_resps`
        raw = flat(sample.get("resps", sample["filtered_resps"]))
        assert raw == predictions[doc_id], (doc_id, raw, predictions[doc_id])
        assert flat(sample["filtered_resps"]) == predictions[doc_id].strip()
    assert scores["vlmlab_tiny_gen"]["exact_match,none"] == pytest.approx(expected_em)

    # multiple choice: lmms-eval picks the smallest score, the adapter's -sum log p; acc_norm divides it by
    # the choice's length in characters
    expected_acc = expected_norm = 0.0
    mc = samples_of(out_dir, "vlmlab_tiny_mc")
    for doc_id, record in enumerate(records):
        logp = [reference.score(record, f" {c}")[0] for c in COLORS]
        logged = [float(pair[0]) for pair in mc[doc_id]["filtered_resps"]]  # one (score, greedy) per choice
        assert logged == pytest.approx([-x for x in logp], abs=1e-3)
        gold = COLORS.index(record["color"])
        expected_acc += (max(range(len(COLORS)), key=lambda i: logp[i]) == gold) / len(records)
        normed = [logp[i] / len(c) for i, c in enumerate(COLORS)]
        expected_norm += (max(range(len(COLORS)), key=lambda i: normed[i]) == gold) / len(records)
    assert scores["vlmlab_tiny_mc"]["acc,none"] == pytest.approx(expected_acc)
    assert scores["vlmlab_tiny_mc"]["acc_norm,none"] == pytest.approx(expected_norm)

    # log-likelihood (the task's own process_results): whether the colour is the greedy continuation, and
    # the mean score (-sum log p)
    pairs = [reference.score(r, r["color"]) for r in records]
    ll = scores["vlmlab_tiny_ll"]
    assert ll["acc,none"] == pytest.approx(sum(greedy for _, greedy in pairs) / len(records))
    assert ll["score,none"] == pytest.approx(-sum(logp for logp, _ in pairs) / len(records), abs=1e-3)


@needs_lmms_eval
def test_adapter_requests_directly(run_dir, reference):
    """The adapter without the evaluator: registration, model args, both loglikelihood signs, bf16."""
    from lmms_eval.api.instance import Instance, unwrap_generation_output
    from lmms_eval.models import get_model

    from vlmlab.eval.lmms import VlmlabLMM

    assert get_model("vlmlab") is VlmlabLMM  # the `lmms_eval.models` entry point of pyproject.toml

    records = docs()
    task_dict = {"tiny": {"test": records}}

    def request(kind, index, *args):
        metadata = {"task": "tiny", "doc_id": index, "repeats": 1}
        return Instance(request_type=kind, arguments=args, idx=0, metadata=metadata)

    def visual(doc):
        return [doc["image"]]

    model = VlmlabLMM.create_from_arg_string(
        f"run={run_dir},batch_size=3,loglikelihood=logprob,max_new_tokens={MAX_NEW}",
        {"batch_size": 1, "device": "cpu", "max_batch_size": None},  # model args win over the harness'
    )
    model.task_dict = task_dict
    assert model.batch_size == 3 and model.device == torch.device("cpu")
    gen = [
        request("generate_until", i, r["question"], {"until": UNTIL}, visual, i, "tiny", "test")
        for i, r in enumerate(records)
    ]
    assert model.generate_until(gen) == [reference.generate(r) for r in records]

    pairs = [(i, f" {c}") for i in range(len(records)) for c in COLORS[:2]]
    lls = [
        request("loglikelihood", i, records[i]["question"], cont, visual, i, "tiny", "test")
        for i, cont in pairs
    ]
    # a continuation taken from the doc (doc_to_target as a function) and an unconditional one (no doc)
    lls.append(
        request("loglikelihood", 1, records[1]["question"], lambda d: d["answer"], visual, 1, "tiny", "test")
    )
    lls.append(request("loglikelihood", 0, "", " red"))
    got = [unwrap_generation_output(x)[0] for x in model.loglikelihood(lls)]  # as the evaluator reads them
    want = [reference.score(records[i], cont) for i, cont in pairs]
    want.append(reference.score(records[1], records[1]["answer"]))
    for (value, greedy), (ref_value, ref_greedy) in zip(got, want):
        assert value == pytest.approx(ref_value, abs=1e-3) and greedy == ref_greedy
    assert got[-1][0] < 0

    nll = VlmlabLMM(run=str(run_dir), device="cpu", dtype="bf16", max_new_tokens=MAX_NEW)
    nll.task_dict = task_dict
    [(value, _)] = [unwrap_generation_output(x)[0] for x in nll.loglikelihood(lls[:1])]
    assert value == pytest.approx(-want[0][0], rel=0.05)  # the default sign: -sum log p, under bf16 autocast
    texts = nll.generate_until(gen[:2])
    assert len(texts) == 2 and all(isinstance(t, str) and not any(s in t for s in UNTIL) for t in texts)

    with pytest.raises(NotImplementedError, match="multi-round"):
        model.generate_until_multi_round(gen[:1])
    video = request("generate_until", 0, "q", {}, lambda d: ["clip.mp4"], 0, "tiny", "test")
    with pytest.raises(NotImplementedError, match="only images"):
        model.generate_until([video])
    with pytest.raises(ConfigError, match="Unknown vlmlab model args"):
        VlmlabLMM(run=str(run_dir), pretrained="x")
    with pytest.raises(ConfigError, match="dtype"):
        VlmlabLMM(run=str(run_dir), dtype="int3")
    with pytest.raises(ConfigError, match="not a vlmlab run folder"):
        VlmlabLMM(run=str(run_dir / "nope"))
