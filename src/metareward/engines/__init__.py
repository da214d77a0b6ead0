"""Generation engines behind one interface (``base.Engine``); ``make_engine`` picks one by config.

``make_engine`` is the only way the package's commands and the run loop get an engine
(``tests/test_engine_options.py`` checks the commands). Importing this package imports no backend
(torch, transformers, vLLM, openai): each is imported when its engine is built."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from metareward.engines.base import Engine

if TYPE_CHECKING:
    from metareward.config import EngineConfig


def make_engine(cfg: EngineConfig, model_path: str, log_dir: str | Path | None = None) -> Engine:
    """Build the configured engine for ``model_path`` (imports heavy backends only when used).

    ``log_dir``: where a server the engine starts itself (``openai`` with ``server_command``) writes its
    log, ``server.log``; default the system's temporary directory."""
    if cfg.name == "hf":
        from metareward.engines.hf import HFEngine

        return HFEngine(model_path, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size, threads=cfg.threads,
                        compile=cfg.compile, fused_decoder=cfg.fused_decoder, decode_kernel=cfg.decode_kernel)
    if cfg.name == "vllm":
        from metareward.engines.vllm import make_vllm_engine

        return make_vllm_engine(cfg, model_path)
    if cfg.name == "openai":
        from metareward.engines.openai import OpenAIEngine

        return OpenAIEngine.from_config(cfg, model_path, log_dir=log_dir)
    raise ValueError(f"unknown engine {cfg.name!r}")
