import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run one op at a time: a thread pool only adds synchronisation (10x slower when the
    machine is busy), so the render tests use one intra-op thread and restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
