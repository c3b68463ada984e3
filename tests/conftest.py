import os

import pytest
import torch
from data_helpers import IMAGE_ID, TPI, VOCAB, to_tensor

from vlmlab.data.encode import SampleEncoder
from vlmlab.data.text_tokenizer import load_text_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist: one worker per core, one thread each (and for the runs they start: the variable is
    # inherited), so the workers and the training processes they start share CI's two cores without
    # oversubscribing them by threads
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))


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
