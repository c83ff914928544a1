"""ddpmseg.common.device: the one device resolver (interpreter, DeepLab, torchrun workers)."""
import pytest
import torch

from ddpmseg.common.config import ConfigError
from ddpmseg.common.device import resolve_device


def test_auto_is_cuda_when_available_else_cpu():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu", local_rank=3) == torch.device("cpu")


def test_a_name_torch_does_not_know_is_one_config_error():
    with pytest.raises(ConfigError, match=r"^'device' 'gpu0' is not a torch device \("):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_says_what_to_use():
    with pytest.raises(ConfigError, match=r"""^'device' is 'cuda:1' but CUDA is not available; use "auto" or "cpu"$"""):
        resolve_device("cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_bare_cuda_is_this_ranks_gpu_under_torchrun():
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("auto", local_rank=0) == torch.device("cuda", 0)
