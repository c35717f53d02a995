"""Data-parallel training: 2 processes (gloo, loopback) reproduce 1 process (issue 6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from infusion import config
from infusion.distributed import shard_bounds
from infusion.train import train


def test_shard_bounds_cover_the_batch_in_order():
    assert [shard_bounds(7, r, 3) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert [shard_bounds(8, r, 2) for r in range(2)] == [(0, 4), (4, 8)]
    assert [shard_bounds(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]


# 275 points in batches of 50: five full batches split 25/25 and a last one of 25 split 13/12;
# 55 validation points in batches of 50 and 5 (3/2).
SETTINGS = ["data.toy_size=275", "model.hidden=32,32", "method.T=4", "train.batch_size=50",
            "train.valid_examples=55", "sample.n=8", "sample.chains=2", "train.epochs=2"]


# Same global batches, same noise, whole-batch batch-norm statistics: only the order of
# float32 sums differs (BN sums split over 2 processes, gradients averaged over 2). Measured
# on one step, the gradients agree to 1e-6 relative; after 12 Adam steps the losses agree to
# about 1e-7 relative. A real difference (per-process noise or statistics, a wrong gradient
# scale) moves these numbers by 1e-2 or more. (Adam magnifies rounding in the biases that
# feed batch norm, whose true gradient is 0, so raw weights are not compared; the samples
# they produce are.)
def test_two_processes_give_the_one_process_loss_curve(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INFUSION_CACHE": str(tmp_path / "cache")}
    if os.path.exists("/sys/class/net/lo"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo over the loopback interface
    # rendezvous on 127.0.0.1, port 0: torchrun binds a free port itself (no race for one)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0",
           "-m", "infusion", "train", "--preset", "spiral", "--run-dir", str(tmp_path / "two"),
           "--device", "cpu", "--quiet"] + [a for s in SETTINGS for a in ("--set", s)]
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        cfg = config.override(config.preset("spiral"), SETTINGS)  # meanwhile, one process
        train(cfg, tmp_path / "one", device="cpu", progress=False, log=lambda s: None)
        out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert out.count("epoch 1:") == 1  # rank 0 alone logs
    assert out.count("final checkpoint:") == 1

    def curve(run):
        return [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").open()]

    two, one = curve("two"), curve("one")
    assert len(two) == len(one) == cfg.train.epochs
    for a, b in zip(two, one):
        for key in ("train_loss", "valid_loss", "valid_bound"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-5), (key, a, b)
    # the samples agree too (same per-sample seeds)
    s2 = np.load(tmp_path / "two" / "samples.npz")["means"]
    s1 = np.load(tmp_path / "one" / "samples.npz")["means"]
    np.testing.assert_allclose(s2, s1, rtol=0, atol=1e-4)
