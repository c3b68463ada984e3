"""The presets ship inside the package: every shipped sweep keeps its run ids, names resolve anywhere, and a
wheel (not an editable checkout) carries every YAML and works from an empty folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vlmlab.cli import main as vlmlab_main
from vlmlab.errors import ConfigError
from vlmlab.presets import KINDS, preset_dir, preset_names, preset_root, resolve
from vlmlab.sweep.expand import expand
from vlmlab.sweep.spec import load_sweep

REPO = Path(__file__).resolve().parent.parent
# Run ids of every shipped sweep, written by `vlmlab sweep <file> --dry-run --json` on main before the presets
# moved into the package (71b4d11): a run id is the hash of what the run learns, so an unchanged id means an
# unchanged run (and finished runs are found again).
PINNED_IDS = json.loads((REPO / "tests" / "fixtures" / "sweep_run_ids.json").read_text())


def test_every_shipped_sweep_is_pinned():
    assert sorted(PINNED_IDS) == preset_names("sweeps")


@pytest.mark.parametrize("sweep", sorted(PINNED_IDS))
def test_run_ids_of_shipped_sweeps_are_unchanged(sweep, tmp_path):
    dag = expand(load_sweep(sweep, output_dir=tmp_path))
    assert sorted(run.id for run in dag) == PINNED_IDS[sweep]


def test_shipped_sweep_by_name_writes_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_sweep("quickstart")
    assert spec.path == preset_dir("sweeps") / "quickstart.yaml"
    assert spec.output_dir == tmp_path / "quickstart_out" / "runs"  # never inside the installed package


def test_a_users_file_wins_over_a_preset_name(tmp_path):
    own = tmp_path / "tiny.yaml"
    own.write_text((preset_dir("backbone") / "qwen3-tiny.yaml").read_text())
    assert resolve("backbone", own) == own
    assert resolve("backbone", "qwen3-tiny") == preset_dir("backbone") / "qwen3-tiny.yaml"


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_preset_names_list_the_valid_ones(kind):
    with pytest.raises(ConfigError) as error:
        resolve(kind, "no-such-preset")
    message = str(error.value)
    assert "'no-such-preset'" in message and all(name in message for name in preset_names(kind))


def test_sweep_by_unknown_name_is_one_line(capsys):
    assert vlmlab_main(["sweep", "design_spcae", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Did you mean 'design_space'?" in err


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """vlmlab built as a wheel and unpacked into a folder of its own (pip install --target), so the package
    under test is the wheel's, not this checkout."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", work, REPO],
        check=True,
        capture_output=True,
        cwd=work,
    )
    (wheel,) = work.glob("vlmlab-*.whl")
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel],
        check=True,
        capture_output=True,
    )
    return wheel, target


def test_the_wheel_carries_every_preset(installed_wheel):
    wheel, _ = installed_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {str(path.relative_to(preset_root().parent.parent)) for path in preset_root().rglob("*.yaml")}
    assert shipped and shipped <= names


def test_the_wheel_runs_from_an_empty_folder(installed_wheel, tmp_path):
    _, target = installed_wheel
    empty = tmp_path / "empty"
    empty.mkdir()
    mine = empty / "mine.yaml"
    mine.write_text("model: {backbone: qwen3-tiny, tokenizer: clip-tiny, fusion: mot}\n")
    # the wheel's copy first on the path: the checkout's editable finder comes after it
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run(
        [sys.executable, "-c", "import vlmlab; print(vlmlab.__file__)"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(target))
    for command in (["describe", "mine.yaml", "--json"], ["sweep", "quickstart", "--dry-run", "--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "vlmlab.cli", *command], cwd=empty, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        json.loads(done.stdout)
    assert sorted(path.name for path in empty.iterdir()) == ["mine.yaml"]  # a dry run writes nothing
