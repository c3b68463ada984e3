"""Benchmark readers on tiny fixtures in each distribution format (official JSON + images, HF parquet,
HF save_to_disk arrow, VLMEvalKit TSV), plus the ConfigError paths."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from vlmlab.data.benchmarks import BENCHMARKS, IN_DOMAIN, OUT_OF_DOMAIN, benchmark_from_config, load_benchmark
from vlmlab.errors import ConfigError
from vlmlab.presets import preset_dir
from vlmlab.scoring.metrics import METRICS


def png_bytes(colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def save_image(path: Path, colour: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path)
    return path


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_registry_matches_the_paper_split() -> None:
    assert IN_DOMAIN == ("vqav2", "aokvqa", "chartqa", "textvqa", "docvqa")
    assert OUT_OF_DOMAIN == ("mathvista", "mmtbench", "realworldqa")
    assert set(BENCHMARKS) == set(IN_DOMAIN) | set(OUT_OF_DOMAIN)
    assert set(BENCHMARKS) == set(METRICS)


# ------------------------------------------------------------------------------------- official releases


def test_vqav2_official_json(tmp_path: Path) -> None:
    write_json(
        tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json",
        {"questions": [{"image_id": 42, "question": "How many?", "question_id": 42000}]},
    )
    answers = [{"answer": "2", "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]
    write_json(
        tmp_path / "v2_mscoco_val2014_annotations.json",
        {
            "annotations": [
                {"question_id": 42000, "image_id": 42, "answers": answers, "answer_type": "number"}
            ]
        },
    )
    image = save_image(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    for split in (None, "val", "val2014", "validation"):
        (record,) = list(load_benchmark("vqav2", tmp_path, split))
        assert record["id"] == "42000" and record["benchmark"] == "vqav2"
        assert record["question"] == "How many?"
        assert record["answers"] == ["2"] * 10
        assert record["image"] == image
        assert record["meta"]["answer_type"] == "number"
    assert METRICS["vqav2"]("two", record) == 1.0


def test_aokvqa_official_json_with_coco2017_images(tmp_path: Path) -> None:
    item = {
        "question_id": "q1",
        "image_id": 7,
        "question": "What is he waiting for?",
        "choices": ["train", "cab"],
        "correct_choice_idx": 1,
        "direct_answers": ["cab"] * 10,
        "difficult_direct_answer": False,
    }
    write_json(tmp_path / "aokvqa_v1p0_val.json", [item])
    image = save_image(tmp_path / "coco" / "val2017" / "000000000007.jpg")
    (record,) = list(load_benchmark("aokvqa", tmp_path))
    assert record["answers"] == ["cab"] * 10
    assert record["image"] == image
    assert record["meta"]["choices"] == ["train", "cab"]


def test_chartqa_official_human_and_augmented(tmp_path: Path) -> None:
    write_json(tmp_path / "test" / "test_human.json", [{"imgname": "a.png", "query": "Max?", "label": "45"}])
    write_json(
        tmp_path / "test" / "test_augmented.json", [{"imgname": "b.png", "query": "Min?", "label": "3"}]
    )
    save_image(tmp_path / "test" / "png" / "a.png")
    save_image(tmp_path / "test" / "png" / "b.png")
    records = list(load_benchmark("chartqa", tmp_path))  # default split: test
    assert [r["id"] for r in records] == ["augmented-0", "human-0"]
    assert {r["meta"]["subset"] for r in records} == {"human", "augmented"}
    human = records[1]
    assert human["question"] == "Max?" and human["answers"] == ["45"]
    assert METRICS["chartqa"]("46", human) == 1.0  # 2.2% off


def test_textvqa_and_docvqa_official(tmp_path: Path) -> None:
    text_root = tmp_path / "textvqa"
    write_json(
        text_root / "TextVQA_0.5.1_val.json",
        {"data": [{"question_id": 5, "image_id": "abc", "question": "Brand?", "answers": ["nike"] * 10}]},
    )
    save_image(text_root / "train_images" / "abc.jpg")
    (text,) = list(load_benchmark("textvqa", text_root))
    assert text["answers"] == ["nike"] * 10 and text["image"].name == "abc.jpg"

    doc_root = tmp_path / "docvqa"
    write_json(
        doc_root / "val" / "val_v1.0.json",
        {
            "data": [
                {"questionId": 9, "question": "Date?", "image": "documents/p1.png", "answers": ["12/15/88"]}
            ]
        },
    )
    save_image(doc_root / "val" / "documents" / "p1.png")
    (doc,) = list(load_benchmark("docvqa", doc_root))
    assert doc["id"] == "9" and doc["image"] == doc_root / "val" / "documents" / "p1.png"
    assert METRICS["docvqa"]("12/15/89", doc) == pytest.approx(0.875)


def test_mathvista_official_multiple_choice_and_free_form(tmp_path: Path) -> None:
    data = {
        "1": {
            "pid": "1",
            "question": "Which angle?",
            "image": "images/1.jpg",
            "choices": ["135°", "145°"],
            "answer": "145°",
            "question_type": "multi_choice",
            "answer_type": "text",
            "precision": None,
        },
        "2": {
            "pid": "2",
            "question": "How many?",
            "image": "images/2.jpg",
            "choices": None,
            "answer": "12",
            "question_type": "free_form",
            "answer_type": "integer",
            "precision": None,
        },
    }
    write_json(tmp_path / "testmini.json", data)
    save_image(tmp_path / "images" / "1.jpg")
    save_image(tmp_path / "images" / "2.jpg")
    choice, free = load_benchmark("mathvista", tmp_path)
    assert choice["options"] == ["135°", "145°"] and choice["answer"] == "B"
    assert free["answers"] == ["12"] and free["meta"]["answer_type"] == "integer"
    assert METRICS["mathvista"]("The answer is (B).", choice) == 1.0
    assert METRICS["mathvista"]("I count 12.", free) == 1.0


def test_realworldqa_json_parses_option_lines(tmp_path: Path) -> None:
    question = (
        "Which way is the car facing?\n\nA. Left\nB. Straight\nC. Right\n\n"
        "Please answer directly with only the letter of the correct option and nothing else."
    )
    write_json(
        tmp_path / "annotations.json",
        [
            {"image": "0.png", "question": question, "answer": "C"},
            {"image": "1.png", "question": "How many cars are there?", "answer": "3"},
        ],
    )
    save_image(tmp_path / "images" / "0.png")
    save_image(tmp_path / "images" / "1.png")
    choice, free = load_benchmark("realworldqa", tmp_path)
    assert choice["question"] == "Which way is the car facing?"
    assert choice["options"] == ["Left", "Straight", "Right"] and choice["answer"] == "C"
    assert choice["meta"]["raw_question"] == question
    assert free["answers"] == ["3"] and "options" not in free
    assert METRICS["realworldqa"]("C", choice) == 1.0
    assert METRICS["realworldqa"]("three", free) == 1.0


def test_mmtbench_tsv_with_base64_and_image_reference(tmp_path: Path) -> None:
    encoded = base64.b64encode(png_bytes()).decode()
    lines = [
        "index\tquestion\tA\tB\tC\tanswer\timage\tcategory",
        f"0\tWhat colour?\tred\tblue\t\tA\t{encoded}\tcolour",
        "1\tWhich shape?\tsquare\tcircle\ttriangle\tC\t0\tshape",  # image "0": the image of row 0
    ]
    (tmp_path / "MMT-Bench_VAL.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    first, second = load_benchmark("mmtbench", tmp_path)
    assert first["options"] == ["red", "blue"] and first["answer"] == "A"
    assert second["options"] == ["square", "circle", "triangle"] and second["answer"] == "C"
    assert isinstance(second["image"], Image.Image) and second["image"].size == (4, 4)
    assert first["meta"]["category"] == "colour"


# ---------------------------------------------------------------------------------- Hugging Face formats


def test_hf_parquet_split_selection(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = {
        "question_id": ["q1"],
        "question": ["What?"],
        "image": [{"bytes": png_bytes(), "path": None}],
        "direct_answers": [["cab"] * 10],
        "choices": [["cab", "bus"]],
    }
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table(rows), tmp_path / "data" / "validation-00000-of-00001.parquet")
    rows["question_id"] = ["t1"]
    pq.write_table(pa.table(rows), tmp_path / "data" / "train-00000-of-00001.parquet")
    (record,) = list(load_benchmark("aokvqa", tmp_path))  # default "val" matches "validation"
    assert record["id"] == "q1" and isinstance(record["image"], Image.Image)
    assert record["answers"] == ["cab"] * 10
    assert [r["id"] for r in load_benchmark("aokvqa", tmp_path, "train")] == ["t1"]
    with pytest.raises(ConfigError, match="split 'dev'.*train, validation"):
        load_benchmark("aokvqa", tmp_path, "dev")


def test_hf_parquet_vqav2_answer_dicts_and_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    answers = [{"answer": "yes", "answer_confidence": "yes", "answer_id": i} for i in range(10)]
    hub_style = datasets.Dataset.from_dict(  # an Image feature in the parquet metadata, as on the Hub
        {
            "question_id": [1, 2, 3],
            "question": ["a?", "b?", "c?"],
            "image": [{"bytes": png_bytes(), "path": "x.png"}] * 3,
            "answers": [answers] * 3,
        }
    ).cast_column("image", datasets.Image())
    hub_style.to_parquet(str(tmp_path / "validation-00000-of-00001.parquet"))
    written = sorted(tmp_path.rglob("*"))
    monkeypatch.setattr(
        "socket.socket.connect", lambda *args: pytest.fail("a benchmark read used the network")
    )
    records = list(load_benchmark("vqav2", tmp_path, limit=2))
    assert [r["id"] for r in records] == ["1", "2"]
    assert records[0]["answers"] == ["yes"] * 10
    assert records[0]["image"].tile  # opened, not yet decoded
    assert sorted(tmp_path.rglob("*")) == written


def test_hf_save_to_disk_dataset_dict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "questionId": datasets.Value("int64"),
            "question": datasets.Value("string"),
            "image": datasets.Image(),
            "answers": [datasets.Value("string")],
        }
    )

    def saved(split: str, **columns: list) -> object:
        return datasets.Dataset.from_dict(columns, features=features, split=split)

    image = {"bytes": png_bytes("blue"), "path": None}
    datasets.DatasetDict(
        {
            "validation": saved("validation", questionId=[11], question=["Total?"], image=[image],
                                answers=[["$5", "5 dollars"]]),
            "test": saved("test", questionId=[12], question=["?"], image=[None], answers=[[]]),
        }
    ).save_to_disk(str(tmp_path))  # fmt: skip
    written = sorted(tmp_path.rglob("*"))
    monkeypatch.setattr(
        "socket.socket.connect", lambda *args: pytest.fail("a benchmark read used the network")
    )
    (record,) = list(load_benchmark("docvqa", tmp_path))
    assert record["id"] == "11" and record["answers"] == ["$5", "5 dollars"]
    assert record["image"].tile  # opened, not yet decoded: pixels are read when a record is used
    assert record["image"].getpixel((0, 0)) == (0, 0, 255)
    # a single saved split can be opened directly too
    (again,) = list(load_benchmark("docvqa", tmp_path / "validation"))
    assert again["id"] == "11"
    with pytest.raises(ConfigError, match="holds split 'validation'"):
        load_benchmark("docvqa", tmp_path / "validation", "test")
    with pytest.raises(ConfigError, match=r"Unknown split 'train'.*Valid choices: test, validation\.$"):
        load_benchmark("docvqa", tmp_path, "train")
    assert sorted(tmp_path.rglob("*")) == written  # read in place: no cache files beside the data


def test_hf_unreadable_files_are_one_line_config_errors(tmp_path: Path) -> None:
    (tmp_path / "validation-00000-of-00001.parquet").write_bytes(b"not parquet")
    with pytest.raises(ConfigError, match=r"validation-00000-of-00001.parquet' cannot be read .*: [^\n]+$"):
        load_benchmark("aokvqa", tmp_path)
    saved = tmp_path / "saved"
    saved.mkdir()
    write_json(saved / "state.json", {"_split": "validation"})
    with pytest.raises(ConfigError, match=r"saved' cannot be read as a Hugging Face dataset: [^\n]+$"):
        load_benchmark("docvqa", saved)
    write_json(tmp_path / "listed" / "dataset_dict.json", {"split_names": ["val"]})
    with pytest.raises(ConfigError, match=r"listed' cannot be read as a Hugging Face dataset: 'splits'$"):
        load_benchmark("docvqa", tmp_path / "listed")


# ------------------------------------------------------------------------------------------------ errors


def test_unknown_benchmark_names_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Unknown benchmark 'vqa2'.*vqav2"):
        load_benchmark("vqa2", tmp_path)
    # spelling variants of a known name are accepted
    write_json(tmp_path / "aokvqa_v1p0_val.json", [])
    assert list(load_benchmark("A-OKVQA", tmp_path)) == []


def test_bad_folder_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_benchmark("docvqa", tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"No DocVQA data for split 'val'.*val_v1.0.json"):
        load_benchmark("docvqa", tmp_path)


def test_missing_image_is_a_config_error(tmp_path: Path) -> None:
    write_json(
        tmp_path / "TextVQA_0.5.1_val.json",
        {"data": [{"question_id": 1, "image_id": "gone", "question": "?", "answers": ["a"]}]},
    )
    records = load_benchmark("textvqa", tmp_path)
    with pytest.raises(ConfigError, match="gone.jpg"):
        next(records)


def test_benchmark_from_config(tmp_path: Path) -> None:
    write_json(tmp_path / "aokvqa_v1p0_val.json", [])
    assert list(benchmark_from_config({"name": "aokvqa", "path": str(tmp_path), "split": "val"})) == []
    with pytest.raises(ConfigError, match="lacks path"):
        benchmark_from_config({"name": "aokvqa"})
    with pytest.raises(ConfigError, match="benchmark config key 'folder'"):
        benchmark_from_config({"name": "aokvqa", "path": str(tmp_path), "folder": "x"})


# ------------------------------------------------------------------ the benchmark scripts' timing (benchmarks/)

BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"

# A child that burns CPU until SIGTERM and reports its own CPU clock on SIGUSR1 and on SIGTERM: the truth
# the timing helper's count of a child is compared with.
BURNER = """
import signal, sys, time
def report(*_):
    print(time.process_time(), flush=True)
def stop(*_):
    report()
    sys.exit(0)
signal.signal(signal.SIGUSR1, report)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    pass
"""


def _timing_module():
    """benchmarks/timing.py (the scripts import it as `timing`; benchmarks/ is no package)."""
    import importlib.util
    import sys

    if "bench_timing" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_timing", BENCHMARKS_DIR / "timing.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_timing"] = module  # its dataclass looks its module up while being built
        spec.loader.exec_module(module)
    return sys.modules["bench_timing"]


def _burner():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", BURNER], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    return child


def _child_clock(child, signum: int) -> float:
    import os

    os.kill(child.pid, signum)
    return float(child.stdout.readline())


def _wait_for_child_cpu(child, seconds: float) -> None:
    """Sleep until `child` has spent `seconds` more CPU time (however busy the machine is)."""
    import time

    import psutil

    process = psutil.Process(child.pid)
    spent = sum(process.cpu_times()[:2])
    deadline = time.monotonic() + 60
    while sum(process.cpu_times()[:2]) - spent < seconds and time.monotonic() < deadline:
        time.sleep(0.05)


def test_timing_separates_waiting_from_working() -> None:
    import time

    timing = _timing_module()
    with timing.timed() as idle:
        time.sleep(0.3)
    assert idle.wall >= 0.3 and idle.cpu < 0.1  # sleeping costs no CPU
    with timing.timed() as busy:  # 0.3 s of CPU, whatever else the machine runs
        start = time.process_time()
        while time.process_time() - start < 0.3:
            pass
    assert busy.cpu >= 0.29 and busy.wall >= busy.cpu - 0.02
    assert busy.rate(30) == pytest.approx(30 / busy.wall) and busy.cpu_rate(30) == pytest.approx(
        30 / busy.cpu
    )
    assert "wall" in busy.describe() and "CPU" in busy.describe()
    assert timing.verdict(101, 100) == "met" and timing.verdict(99, 100) == "NOT met"
    assert timing.verdict(1.0, 1.05, higher_is_better=False) == "met"


def test_timing_counts_a_child_still_running_at_the_end() -> None:
    import signal

    timing = _timing_module()
    child = _burner()
    try:
        start = _child_clock(child, signal.SIGUSR1)
        with timing.timed(children=True) as counted, timing.timed() as alone:
            _wait_for_child_cpu(child, 0.3)
        end = _child_clock(child, signal.SIGTERM)
    finally:
        child.kill()
        child.wait()
    assert end - start > 0.1  # the child did work meanwhile
    assert counted.cpu == pytest.approx(end - start, abs=0.15)
    assert alone.cpu < 0.1  # without children=True only this (sleeping) process counts


def test_timing_counts_a_child_ended_inside_the_block_once() -> None:
    import signal

    timing = _timing_module()
    child = _burner()
    try:
        _wait_for_child_cpu(child, 0.3)  # CPU the child spends before the block: not the block's
        start = _child_clock(child, signal.SIGUSR1)
        with timing.timed(children=True) as counted:
            _wait_for_child_cpu(child, 0.3)
            end = _child_clock(child, signal.SIGTERM)
            child.wait()  # ended and waited for inside the block
    finally:
        child.kill()
        child.wait()
    assert start > 0.1 and end - start > 0.1
    assert counted.cpu == pytest.approx(end - start, abs=0.15)  # not its whole lifetime (end)


def _run_benchmark(script: str, *args: str) -> str:
    """`python benchmarks/SCRIPT ARGS` in a new process, forked from one that has imported torch and vlmlab
    (tests/processes.py): the scripts' size flags keep their work small, and the imports are paid once."""
    import os

    from processes import run_script

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    done = run_script(BENCHMARKS_DIR / script, *args, env=env, cwd=BENCHMARKS_DIR.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# bench_eval.py has no smoke run: it trains a run (Lightning) and then starts one fresh `vlmlab eval` process
# per size, each importing the whole stack (~10-15 s apiece here), so only its report is tested (below).


def test_bench_lomo_prints_wall_and_cpu_rates_and_both_verdicts() -> None:
    out = _run_benchmark("bench_lomo.py", "--spans", "6")
    assert re.search(r"spans/s wall .* spans per CPU second", out)
    assert re.search(
        r"goal >= 100 spans/s per core: (met|NOT met) on wall time, (met|NOT met) on CPU time", out
    )
    assert re.search(r"samples/s wall, [\d.]+ per CPU second", out)


def test_bench_synthetic_prints_wall_and_cpu_seconds() -> None:
    out = _run_benchmark("bench_synthetic.py", "--scale", "0.0005", "--image-size", "32", "--workers", "1")
    assert len(re.findall(r"s wall +[\d.]+ s CPU", out)) == 9  # 3 tasks x 3 splits
    assert re.search(r"total: .*wall [\d.]+ s, CPU [\d.]+ s .*ms CPU/sample", out)


def test_bench_packing_prints_rates_per_wall_and_cpu_second() -> None:
    out = _run_benchmark("bench_packing.py", "--batches", "1", "--micro-batch", "2")
    assert len(re.findall(r"samples/s wall, +[\d.]+ per CPU second", out)) == 2  # padded and packed
    assert re.search(r"goal >= 95% real tokens: (met|NOT met)", out)


def test_bench_fusion_prints_wall_and_cpu_per_step_and_both_ratios() -> None:
    # titok-tiny: clip-tiny would import open_clip, seconds of the run for nothing the output shows
    out = _run_benchmark(
        "bench_fusion.py", "--backbone", "qwen3-tiny", "--tokenizer", "titok-tiny", "--batch", "1",
        "--length", "32", "--steps", "1", "--threads", "1",
    )  # fmt: skip
    assert len(re.findall(r"s/step wall +[\d.]+ s CPU", out)) == 5
    assert len(re.findall(r"goal <= [\d.]+: (met|NOT met) on wall, (met|NOT met) on CPU", out)) == 2


def test_bench_data_prints_cpu_beside_wall(tmp_path: Path) -> None:
    # part 1 (start-up) starts two fresh Python processes, ~5 s of imports each: skipped here
    out = _run_benchmark(
        "bench_data.py", "--data-dir", str(tmp_path), "--shards", "2", "--per-shard", "10",
        "--resume-batch", "12", "--packing-batches", "2", "--skip-startup",
    )  # fmt: skip
    assert "1. start-up: skipped (--skip-startup)" in out
    assert re.search(r"ratio [\d.]+ wall \((met|NOT met)\), [\d.]+ CPU \((met|NOT met)\)", out)
    assert "3. packing, stage-2-like mix, 2 batches x 8 rows x 256" in out


def test_bench_loader_prints_samples_per_worker_and_a_gpus_need(tmp_path: Path) -> None:
    out = _run_benchmark(
        "bench_loader.py", "--data-dir", str(tmp_path), "--sizes", "256", "48", "--samples", "12",
        "--tokenizer", "clip-tiny", "--length", "256",
    )  # fmt: skip
    # the need, by hand from the printed parts: the model's FLOPs per sample are not printed, only its rate
    need = re.search(
        r"(\d+) samples per 256-token row, 45% MFU on an H100 .*: ([\d,]+) samples/s per GPU", out
    )
    assert need and int(need[1]) >= 1 and int(need[2].replace(",", "")) > 0, out
    rows = re.findall(
        r"^\s+(\d+) px JPEG:\s+(\d+) samples/s wall,\s+(\d+) per CPU second; [\d.]+ workers per GPU "
        r"\(wall [\d.]+ s, CPU [\d.]+ s\); stream state [\d.]+ kB per worker(.*)$",
        out,
        re.M,
    )
    assert [row[0] for row in rows] == ["256", "48"], out
    assert re.fullmatch(r" goal >= 150: (met|NOT met) on wall, (met|NOT met) on CPU", rows[0][3]), rows
    assert rows[1][3].strip() == ""  # the goal is stated at 256 px only


def test_checkpoint_bytes_prints_cpu_with_the_training_runs(tmp_path: Path) -> None:
    # a one-run grid (the design-space sweep builds dozens of meta-device models)
    sweep = tmp_path / "one.yaml"
    sweep.write_text(
        f"name: one\nbase: {preset_dir('model') / 'tiny.yaml'}\n"
        "axes: {tokenizer: [titok-tiny], freeze: [unfreeze-lm]}\nstages: {1: {}}\n"
    )
    out = _run_benchmark("checkpoint_bytes.py", "--skip-measure", "--sweep", str(sweep))
    assert re.search(r"titok-tiny +joint_decoder +1 +1 ", out)  # the grid's one run
    assert re.search(r"wall [\d.]+ s, CPU [\d.]+ s \([\d.]+ s CPU here", out)


def test_bench_eval_reports_rates_per_wall_and_per_cpu_second(monkeypatch, capsys) -> None:
    """bench_eval.py's table from given measurements: samples/s of the evaluation per wall and CPU second."""
    import importlib.util
    import sys

    monkeypatch.setitem(sys.modules, "timing", _timing_module())  # what the script imports as `timing`
    spec = importlib.util.spec_from_file_location("bench_eval_script", BENCHMARKS_DIR / "bench_eval.py")
    bench_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_eval)
    rows = [
        {"records": 250, "wall_s": 20.0, "cpu_s": 18.0, "predict_s": 5.0, "predict_cpu_s": 4.0,
         "peak_rss_mib": 1000.0},
        {"records": 2000, "wall_s": 60.0, "cpu_s": 50.0, "predict_s": 40.0, "predict_cpu_s": 25.0,
         "peak_rss_mib": 1200.0},
    ]  # fmt: skip
    bench_eval.report("CPU, fp32", rows)
    out = capsys.readouterr().out
    assert "eval CPU s" in out and "/CPU s" in out
    table = re.findall(
        r"^ +(\d+) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+) +\d+$", out, re.M
    )
    assert [row[0] for row in table] == ["250", "2000"]
    # samples/s = records / eval s, /CPU s = records / eval CPU s
    assert [(float(row[5]), float(row[6])) for row in table] == [(50.0, 62.5), (50.0, 80.0)]
    assert "peak RSS 2000 / 250 records: 1.200 (goal <= 1.10) ABOVE GOAL" in out


def test_bench_connectors_prints_tokens_times_and_flops_for_every_connector() -> None:
    from vlmlab.models.adapters import ADAPTERS

    out = _run_benchmark(
        "bench_connectors.py", "--backbone", "qwen3-tiny", "--tokenizer", "clip-tiny", "--tokens", "4",
        "--steps", "1", "--threads", "1", "--text", "8",
    )  # fmt: skip
    rows = re.findall(r"^(\w+)[^\n]*?\s+(\d+)  .{52}\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", out, re.M)
    assert {row[0] for row in rows} == set(ADAPTERS.names()) - {"embedding"}, out
    tokens = {row[0]: int(row[1]) for row in rows}
    # clip-tiny's 4 x 4 patches: mlp and linear keep 16, the others give 4 (pooled, shuffled by 2, latents)
    assert tokens == {"mlp": 16, "linear": 16, "avgpool": 4, "c_abstractor": 4, "perceiver": 4,
                      "pixel_shuffle": 4}  # fmt: skip
    assert "MM1: 64 or 144" in out and "Idefics2: 64 latents from 729 patches" in out
    for row in rows:  # forward + backward costs about 3 forwards: more than one, never more than four
        forward, both = float(row[4]), float(row[5])
        assert forward > 0 and forward < both <= 4 * forward + 0.01, row


def test_bench_loss_prints_both_peaks_by_hand_and_the_goal() -> None:
    out = _run_benchmark(
        "bench_loss.py", "--tokens", "64", "--vocab", "1000", "--hidden", "16", "--time-tokens", "8",
        "--steps", "1", "--threads", "1",
    )  # fmt: skip
    peaks = dict(re.findall(r"^\s+(dense|chunked)\s+peak\s+([\d.]+) GiB", out, re.M))
    assert set(peaks) == {"dense", "chunked"}, out
    # the dense loss's largest tensor is its fp32 logits: 64 x 1000 x 4 bytes, by hand
    assert re.search(
        rf"dense\s+peak\s+[\d.]+ GiB\s+largest tensor\s+{64 * 1000 * 4 / 2**30:7.3f} GiB", out
    ), out
    assert re.search(r"peak chunked / dense: [\d.]+ \(goal <= 0.25\) (meets goal|ABOVE GOAL)", out), out
    assert len(re.findall(r"^\s+(dense|chunked)\s+[\d.]+ s wall\s+[\d.]+ s CPU", out, re.M)) == 2, out


@pytest.mark.slow(seconds=25)
def test_bench_json_index_prints_memory_and_build_figures_with_their_goals(tmp_path: Path) -> None:
    # part 2 (launch to first step) starts 2 x --repeats fresh processes, ~5 s of imports each: skipped here;
    # part 3 starts two (0 and 2 workers)
    out = _run_benchmark(
        "bench_json_index.py", "--data-dir", str(tmp_path), "--entries", "300", "--small", "20",
        "--batches", "2", "--skip-startup",
    )  # fmt: skip
    assert re.search(r"1\. index of mix-300\.json: built in wall [\d.]+ s, CPU [\d.]+ s", out)
    assert "2. launch to first step: skipped (--skip-startup)" in out
    assert re.search(
        r"0 workers: [\d,]+ MB PSS \([\d,]+ anonymous, [\d,]+ file-backed\) \(process wall [\d.]+ s, CPU [\d.]+ s\)",
        out,
    )
    assert re.search(r"2 workers / 0 workers: [\d.]+ \(goal <= 1.2: (met|NOT met)\)", out)


@pytest.mark.slow(seconds=40)
def test_bench_compile_prints_eager_and_compiled_steps_with_the_goal() -> None:
    out = _run_benchmark(
        "bench_compile.py", "--fusions", "joint_decoder", "--length", "64", "--rows", "1", "--steps", "1",
        "--warmup", "1", "--threads", "1",
    )  # fmt: skip
    line = re.search(
        r"joint_decoder\s+eager\s+([\d.]+) s wall\s+[\d.]+ s CPU \| compiled\s+([\d.]+) s wall\s+[\d.]+ s CPU \| "
        r"first compiled step\s+[\d.]+ s \| compiled / eager ([\d.]+) \(goal <= 1.0: (met|NOT met)\)",
        out,
    )
    assert line, out
    assert float(line[3]) == pytest.approx(
        float(line[2]) / float(line[1]), rel=0.05, abs=0.02
    )  # printed rounded
    assert "graph breaks: 0;" in out
