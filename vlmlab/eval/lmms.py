"""A trained vlmlab run as an lmms-eval model: ``lmms-eval --model vlmlab --model_args run=RUN_DIR``.

Needs the optional extra (``pip install -e '.[eval]'``). lmms-eval 0.7 finds the adapter through the
``lmms_eval.models`` entry point that pyproject.toml declares (`lmms_eval_models` below returns its
manifest); without an installed entry point, ``python -m vlmlab.eval.lmms --model vlmlab ...`` registers
the adapter and then runs lmms-eval's own command line.

Model args (``--model_args key=value,...``; they win over lmms-eval's ``--batch_size`` / ``--device``):

- ``run`` (required): a finished stage run folder; its checkpoint chain is applied (best, else final).
- ``device``: ``cuda``, ``cuda:1``, ``cpu``, ... (default: CUDA when there is one; one GPU per process
  under ``accelerate launch``).
- ``dtype``: ``float32`` (default), ``bfloat16`` or ``float16``: the weights stay float32 and the model
  runs under autocast in that precision, the regime the run was trained in (Lightning's ``*-mixed``).
- ``batch_size`` (default 1): prompts per forward pass (left-padded batches, as ``vlmlab eval`` does).
- ``max_new_tokens`` (default 128): used when the task's ``generation_kwargs`` set none.
- ``max_length``: prompt budget in tokens (default: the run's ``data.max_length``); longer prompts lose
  context text from the left, as in training; a prompt whose images alone do not fit is answered with ''.
- ``loglikelihood``: ``nll`` (default) or ``logprob``, the sign of loglikelihood scores (see below).

Prompts are one user turn in the run's chat layout: the images of ``doc_to_visual`` then the task's text,
or, where the text holds one ``<image>`` marker per image, each image where its marker stands. Decoding is
greedy (vlmlab.models.generation.greedy_generate with the key-value cache); sampling arguments are
ignored with a warning. ``until`` strings cut the decoded text at the first one that occurs.

``loglikelihood`` scores a continuation as the start of the assistant's answer: the sum of the log-probs
of its tokens after the prompt, and whether each of them is the argmax (greedy). The continuation is
tokenized on its own, as answers are in training, so a task's ``target_delimiter`` (default ' ') is part
of what is scored; chat-style tasks usually want ``target_delimiter: ""``. The score goes back with the
sign lmms-eval 0.7's evaluator reads, whatever its interface's docstring says: ``multiple_choice`` picks
the choice of the *smallest* value (``np.argmin``; its own models return the loss), so by default the
adapter returns the negative log-likelihood (``-sum log p``). ``loglikelihood=logprob`` returns
``sum log p`` instead, which is what the ``perplexity`` aggregation (``exp(-mean)``) of
``output_type: loglikelihood`` tasks expects (no built-in lmms-eval task has that output type).
The pairs go back wrapped in lmms-eval's ``GenerationResult`` (``.text`` holds the pair) while its
evaluator would otherwise turn a plain pair into a string (lmms-eval 0.7.3 does, for every model).
Multi-round generation is not supported.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vlmlab.errors import ConfigError, unknown_choice

MODEL_NAME = "vlmlab"


def lmms_eval_models() -> list:
    """The payload of the `lmms_eval.models` entry point (see pyproject.toml): the adapter's manifest.

    Defined before anything is imported from lmms-eval, and this module never imports `lmms_eval.models`
    itself: that package loads the entry points while it initialises, possibly in the middle of importing
    this module.
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_NAME, simple_class_path="vlmlab.eval.lmms.VlmlabLMM")]


INSTALL_HINT = (
    "lmms-eval is not installed; it is vlmlab's optional extra: pip install -e '.[eval]' "
    "(from the vlmlab checkout)."
)

try:
    from lmms_eval.api.instance import GenerationResult, Instance, unwrap_generation_output
    from lmms_eval.api.model import lmms
    from lmms_eval.api.registry import register_model
    from loguru import logger  # an lmms-eval dependency
except ImportError as error:  # the extra is missing: say how to get it, not a bare ModuleNotFoundError
    raise ConfigError(INSTALL_HINT) from error

IMAGE_MARKER = "<image>"
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# lmms-eval 0.7.3's evaluator passes *every* response through unwrap_generation_output, which turns a
# (score, is_greedy) tuple into its str(); a GenerationResult's `text` passes through untouched
_WRAP_SCORES = not isinstance(unwrap_generation_output((0.0, True))[0], tuple)
# loglikelihood=...: the factor on sum(log p) (lmms-eval's multiple_choice takes the argmin: nll)
LOGLIKELIHOOD_SIGNS = {"nll": -1.0, "logprob": 1.0}
# generation arguments of sampling and beam search (ignored: decoding is greedy)
_SAMPLING = ("temperature", "do_sample", "top_p", "top_k", "num_beams")


def register() -> None:
    """Register the adapter in this process (what the entry point does when lmms-eval starts)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    for manifest in lmms_eval_models():
        MODEL_REGISTRY_V2.register_manifest(manifest, overwrite=True)


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ConfigError(f"vlmlab model arg {name} must be a positive integer, got {value!r}.") from None
    if number < 1:
        raise ConfigError(f"vlmlab model arg {name} must be a positive integer, got {value!r}.")
    return number


def _as_images(visuals: Any, where: str) -> list[Image.Image]:
    """doc_to_visual's output as a list of PIL images (file paths are opened); anything else is refused."""
    if visuals is None:
        return []
    if not isinstance(visuals, list | tuple):
        visuals = [visuals]
    images = []
    for visual in visuals:
        if isinstance(visual, list | tuple):
            images += _as_images(visual, where)
        elif isinstance(visual, Image.Image):
            images.append(visual)
        elif isinstance(visual, str | Path) and Path(visual).suffix.lower() in Image.registered_extensions():
            images.append(Image.open(visual))
        else:
            raise NotImplementedError(
                f"vlmlab adapter ({where}): only images are supported (PIL images or image files), "
                f"got {type(visual).__name__} {str(visual)[:80]!r} (videos and audio are not)."
            )
    return images


def prompt_sample(
    context: str, images: Sequence[Image.Image], sample_id: str = "lmms-eval"
) -> dict[str, Any]:
    """The request as a one-turn vlmlab sample: images first, or at their `<image>` markers."""
    markers = context.count(IMAGE_MARKER)
    segments: list[dict[str, Any]] = []
    if markers and markers == len(images):
        for index, text in enumerate(context.split(IMAGE_MARKER)):
            if index:
                segments.append({"type": "image", "image": images[index - 1]})
            if text:
                segments.append({"type": "text", "text": text})
    else:
        if markers:
            logger.warning(
                f"{sample_id}: the prompt has {markers} {IMAGE_MARKER} markers for {len(images)} images; "
                "the markers are dropped and the images put first."
            )
            context = context.replace(IMAGE_MARKER, "")
        segments = [{"type": "image", "image": image} for image in images]
        if context or not segments:
            segments.append({"type": "text", "text": context})
    return {"id": sample_id, "segments": segments, "response": ""}


def cut_at_stops(text: str, until: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    end = len(text)
    for stop in until:
        if stop:
            found = text.find(stop)
            if found != -1:
                end = min(end, found)
    return text[:end]


@register_model(MODEL_NAME)
class VlmlabLMM(lmms):
    """lmms-eval's view of a vlmlab run (a "simple" model: text prompts plus doc_to_visual images)."""

    is_simple = True

    def __init__(
        self,
        run: str | None = None,
        device: str | None = None,
        dtype: str = "float32",
        batch_size: int | str = 1,
        max_new_tokens: int | str = 128,
        max_length: int | str | None = None,
        loglikelihood: str = "nll",
        max_batch_size: int | None = None,  # passed by lmms-eval; batches here are fixed-size
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ConfigError(
                f"Unknown vlmlab model args {sorted(unknown)}; valid: run, device, dtype, batch_size, "
                "max_new_tokens, max_length, loglikelihood."
            )
        if not run:
            raise ConfigError("The vlmlab lmms-eval model needs a run folder: --model_args run=RUN_DIR.")
        if loglikelihood not in LOGLIKELIHOOD_SIGNS:
            raise unknown_choice("loglikelihood (vlmlab model arg)", loglikelihood, LOGLIKELIHOOD_SIGNS)
        self.loglikelihood_sign = LOGLIKELIHOOD_SIGNS[loglikelihood]
        from vlmlab.runs.load import load_run, text_side  # heavy imports only when a model is built

        if str(dtype).lower() not in DTYPES:
            raise unknown_choice("dtype (vlmlab model arg)", dtype, DTYPES)
        self._dtype = DTYPES[str(dtype).lower()]
        self._batch_size = _positive_int("batch_size", batch_size)
        self.max_new_tokens = _positive_int("max_new_tokens", max_new_tokens)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # `accelerate launch`: one GPU per process
            from accelerate import Accelerator

            self.accelerator = Accelerator()
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes
            device = (
                device if device and ":" in str(device) else f"cuda:{self.accelerator.local_process_index}"
            )
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"vlmlab model arg device={device!r}, but this machine has no CUDA device.")

        from vlmlab.eval.export import refuse_open_weight

        refuse_open_weight(Path(run))
        self.config, model = load_run(str(run))
        budget = _positive_int("max_length", max_length) if max_length is not None else None
        self._tokenizer, self.encoder = text_side(self.config, model, budget)
        self._model = model.to(self._device).eval()
        self.run = str(run)
        self.stop_ids = [
            token
            for token in (self._tokenizer.convert_tokens_to_ids("<|im_end|>"), self._tokenizer.eos_token_id)
            if token is not None
        ]
        self._warned: set[str] = set()

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> VlmlabLMM:
        """Like lmms-eval's, except that model args win over the harness' own (`--batch_size` always
        comes with a default of 1, which would otherwise collide with `batch_size=` in model args)."""
        from lmms_eval.utils import simple_parse_args_string

        harness = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**harness, **simple_parse_args_string(arg_string)})

    # -- what lmms-eval reads
    @property
    def model(self) -> torch.nn.Module:
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def eot_token_id(self) -> int:
        return self.stop_ids[0]

    def tok_encode(self, text: str) -> list[int]:
        return self.encoder.text_ids(text)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self._tokenizer.decode(list(tokens), skip_special_tokens=True)

    # -- helpers
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self._device.type, dtype=self._dtype)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def _doc(self, task: str, split: str, doc_id: int) -> Any:
        return self.task_dict[task][split][doc_id]

    def _visuals(self, doc_to_visual: Callable | None, task: str, split: str, doc_id: int) -> list:
        if doc_to_visual is None:
            return []
        where = f"{task}/{split}/{doc_id}"
        return _as_images(doc_to_visual(self._doc(task, split, doc_id)), where)

    def _batches(self, items: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        """Items longest first (less padding), in batches of `batch_size`."""
        ordered = sorted(items, key=lambda item: -len(item["input_ids"]))
        for start in range(0, len(ordered), self._batch_size):
            yield ordered[start : start + self._batch_size]

    def _progress(self, total: int, what: str):
        from tqdm import tqdm

        return tqdm(total=total, disable=self.rank != 0, desc=f"vlmlab {what}")

    def _stop_ids(self, until: Sequence[str]) -> list[int]:
        """The end-of-turn ids, plus each stop string that is exactly one token (stopping there gives the
        same text as generating on and cutting, so it only saves time)."""
        stops = list(self.stop_ids)
        for stop in until:
            ids = self.encoder.text_ids(stop)
            if len(ids) == 1 and self.tok_decode(ids) == stop:
                stops.append(ids[0])
        return stops

    def _generation_settings(self, gen_kwargs: dict[str, Any]) -> tuple[list[str], int]:
        gen_kwargs = dict(gen_kwargs or {})
        until = gen_kwargs.pop("until", None)
        if until is None:
            until = []
        elif isinstance(until, str):
            until = [until]
        elif not isinstance(until, list | tuple) or not all(isinstance(s, str) for s in until):
            raise ConfigError(
                f"generation_kwargs 'until' must be a string or a list of strings, got {until!r}."
            )
        max_new = gen_kwargs.pop("max_new_tokens", None)
        max_new = self.max_new_tokens if max_new is None else _positive_int("max_new_tokens", max_new)
        temperature, beams = gen_kwargs.get("temperature") or 0, gen_kwargs.get("num_beams") or 1
        if gen_kwargs.get("do_sample") is True or float(temperature) > 0 or int(beams) > 1:
            sampling = {key: gen_kwargs[key] for key in _SAMPLING if key in gen_kwargs}
            self._warn_once("sampling", f"vlmlab decodes greedily; ignoring generation kwargs {sampling}.")
        return list(until), max_new

    # -- the three request types
    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        from vlmlab.data.validation import collate_prompts
        from vlmlab.models.generation import greedy_generate

        results: list[str | None] = [None] * len(requests)
        # requests with the same generation settings decode together
        settings: dict[str, tuple[list[str], int]] = {}
        items: dict[str, list[dict[str, Any]]] = {}
        for index, request in enumerate(requests):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            key = json.dumps(gen_kwargs or {}, sort_keys=True, default=str)
            if key not in settings:
                settings[key] = self._generation_settings(gen_kwargs)
                items[key] = []
            sample_id = f"{task}/{split}/{doc_id}"
            images = self._visuals(doc_to_visual, task, split, doc_id)
            encoded = self.encoder.encode_prompt(prompt_sample(context, images, sample_id))
            if encoded is None:
                self._warn_once(
                    f"long:{sample_id}",
                    f"{sample_id}: the prompt does not fit in {self.encoder.max_length} tokens even without "
                    "its text; answered ''.",
                )
                results[index] = ""
                continue
            items[key].append({"index": index, **encoded})
        progress = self._progress(len(requests), "generate_until")
        progress.update(sum(result is not None for result in results))
        for key, group in items.items():
            until, max_new = settings[key]
            stops = self._stop_ids(until)
            for batch in self._batches(group):
                collated = collate_prompts(batch, self.encoder.pad_id)
                pixels = collated["pixel_values"]
                with self._autocast():
                    outputs = greedy_generate(
                        self._model,
                        collated["input_ids"].to(self._device),
                        collated["segment_ids"].to(self._device),
                        pixels.to(self._device) if pixels.numel() else None,
                        max_new,
                        stops,
                    )
                for item, tokens in zip(batch, outputs):
                    text = cut_at_stops(self.tok_decode(tokens), until)
                    results[item["index"]] = text
                    request = requests[item["index"]]
                    self.cache_hook.add_partial("generate_until", (request.args[0], request.args[1]), text)
                progress.update(len(batch))
        progress.close()
        return [result if result is not None else "" for result in results]

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]] | list[GenerationResult]:
        from vlmlab.data.validation import collate_prompts

        results: list[tuple[float, bool] | None] = [None] * len(requests)
        items = []
        for index, request in enumerate(requests):
            args = request.args
            if len(args) == 2:  # unconditional scoring (acc_mutual_info): no doc, no images
                (context, continuation), images, sample_id = args, [], f"request {index}"
            else:
                context, continuation, doc_to_visual, doc_id, task, split = args
                sample_id = f"{task}/{split}/{doc_id}"
                if callable(continuation):
                    continuation = continuation(self._doc(task, split, doc_id))
                images = self._visuals(doc_to_visual, task, split, doc_id)
            if not isinstance(continuation, str):
                raise ConfigError(
                    f"{sample_id}: loglikelihood needs a string continuation (doc_to_target), got "
                    f"{type(continuation).__name__} {continuation!r:.60}."
                )
            target = self.encoder.text_ids(continuation)
            if not target:
                results[index] = (0.0, True)
                continue
            budget = self.encoder.max_length - len(target)
            encoded = (
                self.encoder.encode_prompt(prompt_sample(context, images, sample_id), budget)
                if budget >= 8
                else None
            )
            if encoded is None:
                self._warn_once(
                    f"long:{sample_id}",
                    f"{sample_id}: the prompt and a {len(target)}-token continuation do not fit in "
                    f"{self.encoder.max_length} tokens; its log-likelihood is -inf.",
                )
                results[index] = (self._impossible, False)
                continue
            ids = torch.cat([encoded["input_ids"], torch.tensor(target, dtype=torch.long)])
            items.append({"index": index, "input_ids": ids, "pixel_values": encoded["pixel_values"]})
            items[-1]["target"] = target
        progress = self._progress(len(requests), "loglikelihood")
        progress.update(sum(result is not None for result in results))
        for batch in self._batches(items):
            collated = collate_prompts(batch, self.encoder.pad_id)
            pixels = collated["pixel_values"]
            with self._autocast():
                logits = self._model(
                    collated["input_ids"].to(self._device),
                    pixel_values=pixels.to(self._device) if pixels.numel() else None,
                    segment_ids=collated["segment_ids"].to(self._device),
                    position_ids=collated["position_ids"].to(self._device),
                ).logits
            length = logits.shape[1]
            for row, item in enumerate(batch):
                n = len(item["target"])
                # left padding: every row ends at the last column; position t predicts token t + 1
                scores = torch.log_softmax(logits[row, length - n - 1 : length - 1].float(), dim=-1)
                target = torch.tensor(item["target"], device=scores.device)
                score = self.loglikelihood_sign * float(scores.gather(1, target[:, None]).sum())
                greedy = bool((scores.argmax(dim=-1) == target).all())
                results[item["index"]] = (score, greedy)
                request = requests[item["index"]]
                self.cache_hook.add_partial("loglikelihood", request.args[:2], (score, greedy))
            progress.update(len(batch))
        progress.close()
        scores = [result if result is not None else (self._impossible, False) for result in results]
        # GenerationResult only where the evaluator would otherwise stringify the pairs (see _WRAP_SCORES)
        return [GenerationResult(text=score) for score in scores] if _WRAP_SCORES else scores

    @property
    def _impossible(self) -> float:
        """The score of a continuation the model cannot see: log p = -inf."""
        return self.loglikelihood_sign * float("-inf")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "The vlmlab lmms-eval adapter does not support multi-round generation "
            "(generate_until_multi_round); use single-turn generate_until, loglikelihood or "
            "multiple_choice tasks."
        )


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m vlmlab.eval.lmms ARGS`: `lmms-eval ARGS` with the vlmlab adapter registered first."""
    register()
    from lmms_eval.cli.dispatch import main as lmms_eval_main

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    lmms_eval_main()


if __name__ == "__main__":
    main()


__all__ = ["VlmlabLMM", "cut_at_stops", "lmms_eval_models", "main", "prompt_sample", "register"]
