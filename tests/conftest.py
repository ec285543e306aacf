import random

import numpy as np
import pytest
import torch

from tiny import byte_tokenizer, tiny_gpt2, tiny_llama


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # The GGUF de-quantization cache is shared across tests (it is slow to build)
    # but never written into the user's real cache folder by the test suite...
    # unless ADAPTIVE_LORA_CACHE is already set by the caller.
    import os

    if "ADAPTIVE_LORA_CACHE" not in os.environ:
        monkeypatch.setenv("ADAPTIVE_LORA_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def gpt2():
    return tiny_gpt2()


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture(params=["gpt2", "llama"])
def tiny_model(request):
    return tiny_gpt2() if request.param == "gpt2" else tiny_llama()


@pytest.fixture
def tokenizer():
    return byte_tokenizer()
