import pytest
import torch.nn.attention.flex_attention as flex_module


@pytest.fixture
def cpu_flex_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let FlexAttention's eager (math) path run backward on CPU.

    torch refuses CPU backward up front because it has no fused CPU backward kernel; the eager
    higher-order op it would run instead is exact, so the equivalence tests lift that one check.
    """
    original = flex_module._validate_device

    def validate(query, key, value):  # type: ignore[no-untyped-def]
        if query.device.type != "cpu":
            original(query, key, value)

    monkeypatch.setattr(flex_module, "_validate_device", validate)
