import os

import pytest
import torch

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # tests run on the CPU
torch.set_num_threads(1)  # tiny models: threads cost more than they give


@pytest.fixture
def model():
    from mammut_search.testing import tiny_model

    return tiny_model(seed=0)
