"""The text tokenizer: a tiny offline one for CPU runs and tests, or any Qwen-style tokenizer from disk/hub.

Why a hand-built "tiny" tokenizer: the tiny backbones (vocabulary 512) cannot use Qwen's 151k-token
vocabulary, nothing may be downloaded in tests, and a tokenizer *trained* at import time would make token
ids depend on the trainer's tie-breaking. So "tiny" is a Unigram model with a fixed vocabulary:

- ids 0-2: ``<|endoftext|>`` (padding), ``<|im_start|>``, ``<|im_end|>`` (end of a turn, the EOS);
- ids 3-258: the 256 byte tokens ``<0x00>``..``<0xFF>``: any character without a vocabulary piece is
  spelled as its UTF-8 bytes (byte fallback), so *every* string round-trips exactly and none is unknown;
- then whole-word pieces for the synthetic tasks (colours, shapes, directions, moves, numbers, the
  "Final answer:" instruction, the chat roles) and common English words, so a synthetic question is about
  one token per word;
- ``<|image_pad|>`` at exactly ``image_token_id``; unused ids are filled with ``<|reserved_N|>``.

The pre-tokenizer splits text into words with their leading space, digits and punctuation runs (as GPT-2
and Qwen do), so pieces never span words and byte-token names like ``<0x41>`` typed in text are split
before they could match a vocabulary entry. Nothing normalises the text, hence exact round trips.

The tokenizer is saved with ``save_pretrained`` into a cache folder keyed by a hash of everything it is
built from and loaded back with ``AutoTokenizer.from_pretrained``, i.e. through the same path as a real one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmlab.errors import ConfigError
from vlmlab.files import shareable

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_PAD = "<|image_pad|>"
_VERSION = 1  # bump whenever the vocabulary or the pipeline below changes: it is part of the cache key

# The Qwen chat layout (ChatML). An image part renders as one <|image_pad|>; the encoder expands it to
# `tokens_per_image` ids. SampleEncoder builds exactly this layout token by token.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|image_pad|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Words with a leading space, most useful first (pieces past the vocabulary budget are dropped from the end).
_SPACED_TASK = """
the to of one step is row column answer square triangle pentagon circle yellow purple brown green cyan
star orange blue cross diamond hexagon red at right left your objects Northwest Northeast Southeast
Southwest response then in on steps land writing final after object clockwise following relative down
up Which contains image from bottom center move ring top counterclockwise you Possible options shown two
grid north east so are do It So map middle with statements positions described horizontal vertical
position continues arranged starting where every holds order within rows cell they we need and Listed
evenly Their After The three above below south west four five six seven eight nine ten eleven twelve
a by Describe
""".split()
_BARE_TASK = """
user assistant Final Move Step Start Consider Starting Row Where Output Horizontal Vertical Therefore We
After In The major ring left Describe red orange yellow green cyan blue purple brown
""".split()
_PUNCT = [" (", "):", ":'", " '", " 1", " 2", " 3", " 4", " 5", " 6", " 7", " 8", " 9", " 0"]
_SPACED_ENGLISH = """
an or not no yes was be it this that what how there can will has have for as if but all many
number color shape first last next each same other than left I me my he she his her its they them
do does did would should could about into out over under between before time more most some any only
also which who when why write text picture describe question true false total sum equal plus minus
""".split()
_BARE_ENGLISH = """
What How Is Are Answer Question The This There ing ed er es ly tion
""".split()


def _pieces() -> list[str]:
    """The fixed, ordered list of word pieces (duplicates removed, first occurrence wins)."""
    pieces = (
        [" " + w for w in _SPACED_TASK]
        + _BARE_TASK
        + _PUNCT
        + [" " + w for w in _SPACED_ENGLISH]
        + _BARE_ENGLISH
    )
    return [p for p in dict.fromkeys(pieces) if len(p) > 1]


_SPECIALS = [PAD_TOKEN, IM_START, IM_END]
_BYTES = [f"<0x{b:02X}>" for b in range(256)]
_PRETOKENIZE = r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"


def tiny_vocabulary(vocab_size: int, image_token_id: int) -> list[str]:
    """Token strings by id: specials, bytes, pieces (as many as fit), <|image_pad|> at `image_token_id`."""
    fixed = len(_SPECIALS) + len(_BYTES)
    if not fixed <= image_token_id < vocab_size:
        raise ConfigError(
            f"The tiny text tokenizer needs {fixed} <= image_token_id < vocab_size (its first {fixed} ids "
            f"are special and byte tokens), got image_token_id={image_token_id}, vocab_size={vocab_size}."
        )
    ordinary = iter([*_SPECIALS, *_BYTES, *_pieces()])
    vocab: list[str] = []
    for token_id in range(vocab_size):
        if token_id == image_token_id:
            vocab.append(IMAGE_PAD)
        else:
            vocab.append(next(ordinary, None) or f"<|reserved_{token_id}|>")
    return vocab


def _build_params(vocab_size: int, image_token_id: int) -> dict:
    return {
        "version": _VERSION,
        "vocab": tiny_vocabulary(vocab_size, image_token_id),
        "pretokenize": _PRETOKENIZE,
        "chat_template": CHAT_TEMPLATE,
    }


def _default_cache_dir() -> Path:
    root = os.environ.get("VLMLAB_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "vlmlab"


def _save_tiny(folder: Path, params: dict) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = params["vocab"]
    special = set(_SPECIALS) | {IMAGE_PAD}
    # Every piece costs the same, so the best segmentation is the one with the fewest tokens.
    scored = [(token, 0.0 if token in special or token in _BYTES else -1.0) for token in vocab]
    model = models.Unigram(scored, unk_id=0, byte_fallback=True)
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(params["pretokenize"]), behavior="isolated")
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        additional_special_tokens=[IM_START, IMAGE_PAD],
        clean_up_tokenization_spaces=False,  # a decode must give back the exact text
        model_max_length=1 << 20,
    )
    tokenizer.chat_template = params["chat_template"]
    tokenizer.save_pretrained(str(folder))


def build_tiny_tokenizer(
    vocab_size: int, image_token_id: int, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Build (once) the tiny tokenizer's folder and return it; concurrent builders never see a partial one."""
    params = _build_params(vocab_size, image_token_id)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode("utf-8")).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    folder = root / "tokenizers" / f"tiny-v{vocab_size}-img{image_token_id}-{digest}"
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    shareable(tmp, folder=True)  # a shared cache: others may read it (mkdtemp makes it 0700)
    try:
        _save_tiny(tmp, params)
        os.rename(tmp, folder)  # atomic; fails if another process won the race, which is fine
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_text_tokenizer(
    spec: str, vocab_size: int, image_token_id: int, cache_dir: str | os.PathLike | None = None
) -> PreTrainedTokenizerBase:
    """The text tokenizer for a backbone with `vocab_size` embeddings and `image_token_id` placeholders.

    `spec` is "tiny" (built offline, see the module docstring), a local folder or a hub id. Returns a
    transformers fast tokenizer (`PreTrainedTokenizerFast`); raises ConfigError when its `<|image_pad|>` id
    is not `image_token_id` or it has more tokens than the backbone has embeddings, because either would
    silently feed the model wrong ids.
    """
    from transformers import AutoTokenizer

    if spec == "tiny":
        source = str(build_tiny_tokenizer(vocab_size, image_token_id, cache_dir))
        kwargs = {}
    else:
        source = str(Path(spec).expanduser()) if Path(spec).expanduser().exists() else spec
        kwargs = {"cache_dir": str(cache_dir)} if cache_dir is not None else {}
        if source == spec:  # a hub id: without the network only the cache can answer, so ask it alone
            check_hub_tokenizer(spec)
            if hub_unreachable():
                kwargs["local_files_only"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"Could not load text tokenizer {spec!r}: {error}. Use 'tiny', a local folder or a hub id "
            "(hub ids need network access or a filled Hugging Face cache)."
        ) from error
    return _checked(tokenizer, spec, vocab_size, image_token_id)


def check_hub_tokenizer(spec: str) -> None:
    """One line, at once, for a text tokenizer that cannot be had: a local path that does not exist, or a
    hub id that is neither in the Hugging Face cache nor reachable."""
    if spec == "tiny" or Path(spec).expanduser().exists():
        return
    if spec.startswith(("/", "./", "../", "~")):
        raise ConfigError(
            f"data.text_tokenizer={spec!r} does not exist (valid: 'tiny', a local folder or a hub id)."
        )
    offline = hub_unreachable()
    if offline is None:
        return
    from huggingface_hub import try_to_load_from_cache

    cached = any(
        isinstance(try_to_load_from_cache(spec, name), str)
        for name in ("tokenizer_config.json", "tokenizer.json")
    )
    if not cached:
        raise ConfigError(
            f"Text tokenizer {spec!r} is not in the Hugging Face cache and the hub cannot be reached ({offline}); "
            "use 'tiny' or a local folder, or fill the cache where the hub is reachable."
        )


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be asked (HF_HUB_OFFLINE, or no connection to its endpoint within
    `timeout` seconds), or None: transformers would otherwise retry for most of a minute before failing."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # through a proxy: only a real request can tell
    endpoint = urlparse(constants.ENDPOINT)
    host, port = (
        endpoint.hostname or "huggingface.co",
        endpoint.port or (80 if endpoint.scheme == "http" else 443),
    )
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        return f"no connection to {host}:{port}: {error.strerror or error}"
    return None


def _checked(tokenizer: Any, spec: str, vocab_size: int, image_token_id: int) -> Any:
    """The tokenizer, once its ids are known to fit the backbone (see load_text_tokenizer)."""
    vocab = tokenizer.get_vocab()
    found = vocab.get(IMAGE_PAD)
    if found != image_token_id:
        raise ConfigError(
            f"Text tokenizer {spec!r} maps {IMAGE_PAD} to id {found} but the backbone's image_token_id is "
            f"{image_token_id}; they must be equal."
        )
    if len(tokenizer) > vocab_size:
        raise ConfigError(
            f"Text tokenizer {spec!r} has {len(tokenizer)} tokens but the backbone has only {vocab_size} "
            "embeddings."
        )
    for token in (IM_START, IM_END):
        if token not in vocab:
            raise ConfigError(f"Text tokenizer {spec!r} lacks {token}: vlmlab uses the Qwen chat layout.")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = PAD_TOKEN if PAD_TOKEN in vocab else IM_END
    return tokenizer


__all__ = [
    "CHAT_TEMPLATE",
    "IMAGE_PAD",
    "IM_END",
    "IM_START",
    "PAD_TOKEN",
    "build_tiny_tokenizer",
    "check_hub_tokenizer",
    "hub_unreachable",
    "load_text_tokenizer",
    "tiny_vocabulary",
]
