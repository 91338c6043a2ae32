"""Step 6 of load-test (``forward``): build the model with transformers on the plan's device
map and run one forward pass on a few tokens from the folder's own tokenizer.

Never with the folder's own code (``trust_remote_code=False``). :func:`build_model` is looked
up here when called, so a test can make the model fail to build.
"""

from __future__ import annotations

import contextlib
import gc
import logging as logging_module
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..findings import Finding, finding
from ..interrupts import temporary_folder
from .device_map import DevicePlan
from .results import ForwardResult

__all__ = ["build_model", "quiet_transformers", "run_forward", "sample_tokens"]

_SAMPLE_TEXT = "The quick brown fox jumps over the lazy dog."


def run_forward(root: Path, config: Mapping[str, Any], plan: DevicePlan, dtype: str, offload_root: str
                ) -> tuple[ForwardResult | None, list[Finding]]:
    """Build the model with transformers on the plan's map and run one forward pass."""
    # 1. transformers and accelerate, and a model type transformers has without the folder's code.
    try:
        import accelerate  # noqa: F401 - from_pretrained(device_map=...) needs it
        import transformers
    except ImportError as exc:
        missing = getattr(exc, "name", None) or "transformers"
        return None, [finding("HFC740", f"forward=True skipped: {missing} is not installed "
                              "(pip install transformers accelerate); the weights were loaded and verified")]
    import torch

    skipped = _unknown_model_type(config)
    if skipped is not None:
        return None, [skipped]
    # 2. Build the model on the plan's map and run it on a few tokens, its warnings captured.
    started = time.perf_counter()
    hf_map = {module: (int(device[5:]) if device.startswith("cuda:") else device)
              for module, device in plan.modules.items()}
    torch_dtype = {"keep": "auto", "float32": torch.float32, "float16": torch.float16,
                   "bfloat16": torch.bfloat16}[dtype]
    model = None
    captured: list[str] = []
    with temporary_folder(lambda: tempfile.mkdtemp(prefix="hfconv-forward-", dir=offload_root)) as offload:
        try:
            with quiet_transformers(transformers, captured):
                model, model_class = build_model(transformers, root, hf_map, torch_dtype, offload)
                ids, source = sample_tokens(transformers, root, config)
                first = next((d for d in plan.modules.values() if d.startswith("cuda:")), "cpu")
                inputs = torch.tensor([ids], dtype=torch.long, device=first)
                with torch.no_grad():
                    output = model(input_ids=inputs)
            # 3. What came out, and whether it is finite.
            logits, name = _output_tensor(output)
            finite_mask = torch.isfinite(logits)
            finite = bool(finite_mask.all().item())
            result = ForwardResult(output=name, shape=tuple(logits.shape), finite=finite, tokens=len(ids),
                                   token_source=source, model_class=model_class,
                                   seconds=time.perf_counter() - started)
            notes: list[Finding] = [finding("HFC746", message) for message in dict.fromkeys(captured)]
            if not finite:
                bad = int((~finite_mask).sum().item())
                notes.append(finding("HFC742", f"forward pass: {bad:,} of {logits.numel():,} {name} are NaN or "
                                     f"infinite (dtype {str(logits.dtype).removeprefix('torch.')})"))
            return result, notes
        except Exception as exc:  # noqa: BLE001 - any failure of the model is the finding
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return None, [finding("HFC741", f"forward pass failed: {type(exc).__name__}: {message[:500]}")]
        finally:  # the model first: its offloaded weights live in the folder removed next
            del model
            gc.collect()


def _unknown_model_type(config: Mapping[str, Any]) -> Finding | None:
    """HFC740 when config.json names no model type transformers has built in."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        return None
    why = (f"model_type {model_type!r} is not built into transformers" if isinstance(model_type, str)
           else "config.json has no model_type")
    return finding("HFC740", f"forward=True skipped: {why} and hfconv never runs a folder's own code")


def _output_tensor(output: Any) -> tuple[Any, str]:
    """The model's logits, else its last hidden state (a model without an LM head), with its name."""
    logits = getattr(output, "logits", None)
    if logits is not None:
        return logits, "logits"
    hidden = getattr(output, "last_hidden_state", None)
    return (hidden if hidden is not None else output[0]), "last_hidden_state"


class _Capture(logging_module.Handler):
    """Collects accelerate's log warnings (``Some parameters are on the meta device...``) for
    the report instead of letting Python's last-resort handler print them on stderr."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging_module.WARNING)
        self.into = into

    def emit(self, record: logging_module.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.into.append(f"{record.name.split('.')[0]}: {record.getMessage().strip()}"[:500])


@contextlib.contextmanager
def quiet_transformers(transformers: Any, captured: list[str] | None = None) -> Iterator[None]:
    """transformers' log lines and progress bars off for the forward pass, restored after;
    accelerate's warnings go to ``captured`` (reported as HFC746), not to stderr."""
    logging = transformers.utils.logging
    verbosity = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    accelerate_log = logging_module.getLogger("accelerate")
    handler = _Capture(captured if captured is not None else [])
    propagate = accelerate_log.propagate
    accelerate_log.addHandler(handler)
    accelerate_log.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        accelerate_log.removeHandler(handler)
        accelerate_log.propagate = propagate
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def build_model(transformers: Any, root: Path, hf_map: dict[str, Any], torch_dtype: Any, offload: str
                ) -> tuple[Any, str]:
    """The model on ``hf_map`` (a causal LM where transformers has one, else the base model) and its class name."""
    kwargs: dict[str, Any] = dict(device_map=hf_map, dtype=torch_dtype, offload_folder=offload,
                                  trust_remote_code=False)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(root), **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" not in str(exc):
            raise
        model = transformers.AutoModel.from_pretrained(str(root), **kwargs)
    model.eval()
    return model, type(model).__name__


def sample_tokens(transformers: Any, root: Path, config: Mapping[str, Any]) -> tuple[list[int], str]:
    """A few token ids from the folder's own tokenizer (first that works), else fixed ids."""
    with contextlib.suppress(Exception):
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(root), trust_remote_code=False)
        ids = list(tokenizer(_SAMPLE_TEXT)["input_ids"])[:32]
        if ids:
            return ids, "AutoTokenizer"
    if (root / "tokenizer.model").is_file():
        with contextlib.suppress(Exception):
            import sentencepiece

            processor = sentencepiece.SentencePieceProcessor(model_file=str(root / "tokenizer.model"))
            ids = processor.encode(_SAMPLE_TEXT)[:31]
            bos = processor.bos_id()
            if ids:
                return ([bos] if bos >= 0 else []) + ids, "tokenizer.model"
    if (root / "tokenizer.json").is_file():
        with contextlib.suppress(Exception):
            import tokenizers

            ids = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json")).encode(_SAMPLE_TEXT).ids[:32]
            if ids:
                return ids, "tokenizer.json"
    vocab = config.get("vocab_size")
    top = vocab if isinstance(vocab, int) and vocab > 1 else 2
    return [min(i, top - 1) for i in range(1, 9)], "fixed ids (no usable tokenizer)"
