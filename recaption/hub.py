"""Before loading a model by hub id: is it in the local cache, or can the hub be reached at all?

Without network, ``from_pretrained`` retries for about half a minute, logs each attempt, and the
caller then sees an error about the model id, which is fine: the network is the problem. This
module answers in well under a second, once, with what to do (a local folder, a pre-downloaded
cache, ``HF_HUB_OFFLINE=1``). It is used for the captioner, T5 and the VAE alike.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from recaption.errors import ConfigError, ModelUnavailableError

_TRUE = {"1", "true", "yes", "on"}
# One quick question to the hub; a working connection answers in well under this.
LOOKUP_TIMEOUT_S = 5.0


def is_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (standard error by default) is a terminal; a closed or stand-in stream
    is not."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def quiet_progress_bars(stream: Any = None) -> bool:
    """Outside a terminal (a log file, ``ray job logs``, a Ray worker), turn Hugging Face's tqdm
    bars off: transformers' "Loading weights" and the hub's downloads write ``\\r``-separated updates
    that a log shows as one long line per load. The progress that matters there is recaption's own
    log lines. A terminal keeps them, and so does an explicit ``HF_HUB_DISABLE_PROGRESS_BARS``.
    Returns whether they were turned off."""
    if is_terminal(stream) or "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ:
        return False
    # read by huggingface_hub (and through it transformers) at import, and by child processes
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return True


def hub_offline() -> bool:
    """Whether Hugging Face's offline mode is on (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    if any(
        os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    ):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # an old huggingface_hub: the variables above decide
        return False


def in_cache(repo_id: str, filename: str, revision: str | None = None, subfolder: str | None = None) -> bool:
    """Whether ``filename`` of a hub repository is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    path = f"{subfolder.strip('/')}/{filename}" if subfolder else filename
    try:
        found = try_to_load_from_cache(repo_id, path, revision=revision)
    except Exception:  # an id the cache cannot even name
        return False
    return isinstance(found, str)


def _hint(repo_id: str) -> str:
    return (
        f"Pass a local folder holding the model instead, or pre-download it where there is network "
        f"(`hf download {repo_id}`) and run with HF_HUB_OFFLINE=1 (HF_HOME pointing at that cache)"
    )


def require_model(
    repo_id: str,
    option: str,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    filename: str = "config.json",
    local_files_only: bool = False,
) -> None:
    """Fail at once, naming ``option``, when a hub model can be neither found in the cache nor fetched.

    A local folder, or a model whose ``filename`` is cached, passes without a network call. Offline
    (``HF_HUB_OFFLINE=1`` or ``local_files_only``), a model not in the cache fails here. Online, one
    lookup with a short timeout tells "no network" from "no such model" before ``from_pretrained``
    would retry.
    """
    if Path(repo_id).expanduser().is_dir():
        return
    if in_cache(repo_id, filename, revision, subfolder):
        return
    if local_files_only or hub_offline():
        raise ModelUnavailableError(
            option, repo_id, "offline mode is on and it is not in the local cache", _hint(repo_id)
        )
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
    except Exception:  # no huggingface_hub API to ask: from_pretrained will say
        return
    try:
        HfApi().model_info(repo_id, revision=revision, timeout=LOOKUP_TIMEOUT_S)
    except GatedRepoError:
        return  # exists; from_pretrained reports the access problem with its own message
    except RevisionNotFoundError:
        raise ConfigError(
            "revision", revision, f"a revision of {repo_id}", hint="the hub has no such revision"
        ) from None
    except RepositoryNotFoundError:
        raise ConfigError(
            option, repo_id, "a Hugging Face hub id or a local folder", hint="the hub has no such model"
        ) from None
    except Exception as e:  # connection refused, DNS failure, timeout, proxy errors...
        raise ModelUnavailableError(
            option,
            repo_id,
            f"the Hugging Face hub did not answer ({type(e).__name__}; no network?) "
            f"and it is not in the local cache",
            _hint(repo_id),
        ) from None
