"""The peer pro-gan-pth's training step (benchmarks/peer.py) at the shapes of benchmarks/test_train_step.py, in the
same group, so that the report and the closing ratio table compare our step with it in the same run. Skips, with
how to install it, where the peer does not import."""

import pytest

import peer
from conftest import record, run_synced
from test_train_step import step_cases


@pytest.mark.parametrize("device,res,batch", step_cases())
def test_peer_step(benchmark, request, device, res, batch):
    try:
        step = peer.make_step(device, res, batch, request.config.getoption("--peer"))
    except peer.PeerMissing as e:
        pytest.skip(str(e))
    for _ in range(2):  # warm-up: allocator, oneDNN/cuDNN primitives
        step()
    benchmark.group = f"train step {device} {res}"
    record(
        benchmark,
        device,
        impl=peer.NAME,
        res=res,
        batch=batch,
        images=batch,
        alpha=0.5,
        kernels="peer",
        amp="None",
        compiled_step=False,
    )
    run_synced(benchmark, step, device)
