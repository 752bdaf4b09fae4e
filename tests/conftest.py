import atexit
import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests run on the CPU
# exported image encoders (mammut_search.cpu_encoder) go to a cache of this run, shared by its subprocesses
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="mammut-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)
torch.set_num_threads(1)  # tiny models: threads cost more than they give


@pytest.fixture
def model():
    from mammut_search.testing import tiny_model

    return tiny_model(seed=0)
