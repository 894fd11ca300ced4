import torch
from torch import nn

from repsuite.faceswap import FaceSwapModule
from repsuite.optim import adam_kwargs
from tests.faceswap.test_module import TINY_KW


def test_adam_kwargs_fuses_on_cpu_and_not_where_the_kernel_is_missing():
    layer = nn.Linear(3, 2)
    assert adam_kwargs(list(layer.parameters())) == {"fused": True}
    assert adam_kwargs([{"params": list(layer.parameters()), "lr": 1e-3}]) == {"fused": True}
    assert adam_kwargs([]) == {}
    assert adam_kwargs([nn.Parameter(torch.zeros(2, device="meta"))]) == {}
    assert adam_kwargs([nn.Parameter(torch.zeros(2, dtype=torch.complex64))]) == {}


def test_fused_and_plain_adam_take_the_same_steps():
    torch.manual_seed(0)
    ref, new = nn.Linear(8, 4), nn.Linear(8, 4)
    new.load_state_dict(ref.state_dict())
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2, betas=(0.0, 0.999), **kw)
            for m, kw in ((ref, {}), (new, {"fused": True}))]  # fmt: skip
    for _ in range(5):
        x = torch.randn(16, 8)
        for m, opt in zip((ref, new), opts, strict=True):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(ref.parameters(), new.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_face_swapper_optimizers_are_fused_on_cpu():
    opt_g, opt_d = FaceSwapModule(**TINY_KW).configure_optimizers()
    assert opt_g.defaults["fused"] and opt_d.defaults["fused"]
