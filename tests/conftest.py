import os
import time

import pytest
import torch
from data_helpers import IMAGE_ID, TPI, VOCAB, to_tensor
from hypothesis import settings

from vlmlab.data.encode import SampleEncoder
from vlmlab.data.text_tokenizer import load_text_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# property tests: the same examples on every run (a failure on CI is a failure here), no example database
# written into the checkout, no per-example deadline (two xdist workers share two cores with training runs);
# each test sets its own max_examples, sized for CI
settings.register_profile("vlmlab", derandomize=True, database=None, deadline=None)
settings.load_profile("vlmlab")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist: one worker per core, one thread each (and for the runs they start: the variable is
    # inherited), so the workers and the training processes they start share CI's two cores without
    # oversubscribing them by threads
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist's worksteal schedule each of the N workers is first handed one contiguous share of
    this list (then steals from the back of another's): the tests marked slow go to the front of the shares,
    split between them by their expected seconds, so no worker begins a five-minute test when the others are
    nearly done."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    slow = [item for item in items if item.get_closest_marker("slow")]
    if workers < 2 or not slow:
        return

    def seconds(item: pytest.Item) -> float:
        return item.get_closest_marker("slow").kwargs.get("seconds", 60)

    rest = [item for item in items if not item.get_closest_marker("slow")]
    shares: list[list[pytest.Item]] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for item in sorted(slow, key=seconds, reverse=True):
        lightest = load.index(min(load))
        shares[lightest].append(item)
        load[lightest] += seconds(item)
    ordered, remaining, taken = [], len(items), 0
    for index, share in enumerate(shares):
        size = remaining // (workers - index)  # what worksteal sends this worker first
        remaining -= size
        fill = max(0, size - len(share))
        ordered += share + rest[taken : taken + fill]
        taken += fill
    items[:] = ordered + rest[taken:]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# the tiny text tokenizer and a sample encoder for data tests (tests/data_helpers.py values)
@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return load_text_tokenizer("tiny", VOCAB, IMAGE_ID, cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def encoder(tok):
    return SampleEncoder(tok, to_tensor, TPI, IMAGE_ID, max_length=256)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """VLMLAB_TEST_TIMELINE=FILE: one line per test (worker, start, end, test id), to see where workers idle."""
    path = os.environ.get("VLMLAB_TEST_TIMELINE")
    started = time.time()
    result = yield
    if path:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        with open(path, "a") as timeline:
            timeline.write(f"{worker}\t{started:.1f}\t{time.time():.1f}\t{item.nodeid}\n")
    return result


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real MLflow tracking server on localhost (sqlite backend and artifacts in a temporary folder) for the
    session: its URI. Skips when mlflow is not installed (`pip install -e '.[test]'` installs it)."""
    import shutil
    import subprocess
    import sys
    import urllib.request

    from ports import unused_port

    pytest.importorskip("mlflow")
    folder = tmp_path_factory.mktemp("mlflow")
    port = unused_port()
    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    log = open(folder / "server.log", "w")  # noqa: SIM115 - the server's, closed when it stops
    server = subprocess.Popen(
        [
            mlflow,
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            pytest.fail(f"mlflow server did not start:\n{(folder / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield uri
    os.killpg(server.pid, 15)
    server.wait(timeout=30)
    log.close()
