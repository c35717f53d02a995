"""Data-parallel training on plain DDP: 2 gloo processes on the loopback (issue 11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from infusion.training.distributed import shard_bounds


def test_shard_bounds_cover_the_batch_in_order():
    assert [shard_bounds(7, r, 3) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    assert [shard_bounds(8, r, 2) for r in range(2)] == [(0, 4), (4, 8)]
    assert [shard_bounds(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]


def _torchrun(tmp_path, args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INFUSION_CACHE": str(tmp_path / "cache")}
    if os.path.exists("/sys/class/net/lo"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo over the loopback interface
    # rendezvous on 127.0.0.1, port 0: torchrun binds a free port itself (no race for one)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


# Each process: the same model, its shard of one global batch (25 + 24 rows), a deterministic
# loss through per-step batch norm. After DDP the gradient on every process must equal the
# one-process gradient of the mean loss over the whole batch: this checks the sharding, the
# loss scaling for unequal shards, DDP's average and the whole-batch batch-norm statistics
# (without them, each shard would normalise with its own moments and the gradients differ).
GRADIENT_SCRIPT = """
import json, os, sys, torch
import torch.distributed as dist
from infusion import config
from infusion.training import distributed
from infusion.methods.base import Method

class Deterministic(Method):
    name = "infusion"
    def build_model(self, shape, cfg):
        raise AssertionError
    def loss(self, model, x, generator):
        mean, var = model(x, 1)
        return ((mean - x.flip(1)) ** 2 / var).sum(-1)

ctx, dev = distributed.setup(torch.device("cpu"))
cfg = config.preset("spiral")
torch.manual_seed(0)
from infusion.chain.model import GaussianChainModel
model = GaussianChainModel((2,), 3, cfg.model)
ref = GaussianChainModel((2,), 3, cfg.model)
ref.load_state_dict(model.state_dict())
method = Deterministic(cfg.method)
x = torch.rand(49, 2, generator=torch.Generator().manual_seed(1))
idx = torch.arange(49)
step = distributed.DataParallelLoss(model, method, ctx, dev)
objective, mean_loss = step(x[step.shard(idx)], len(idx), None)
objective.backward()
method.loss(ref, x, None).mean().backward()
# relative to the whole gradient's norm (the biases that feed batch norm have a true gradient
# of 0, so their own relative error is rounding over rounding)
diff = sum(float((p.grad - q.grad).square().sum()) for p, q in zip(model.parameters(), ref.parameters()))
norm = sum(float(q.grad.square().sum()) for q in ref.parameters())
err = (diff / norm) ** 0.5
ref_loss = float(method.loss(ref, x, None).mean())
distributed.finish(ctx)
# gloo's threads, which must be gone once finish() returns (``step`` still holds the DDP
# wrapper): a thread still running as Python exits can abort the process
tasks = "/proc/self/task"
gloo = [n for n in (open(f"{tasks}/{t}/comm").read().strip() for t in os.listdir(tasks))
        if "gloo" in n] if os.path.isdir(tasks) else []
json.dump({"err": err, "loss": mean_loss, "ref_loss": ref_loss, "gloo_threads": gloo},
          open(sys.argv[1] + f".{ctx.rank}.json", "w"))
"""


def test_ddp_gradient_equals_the_one_process_gradient(tmp_path):
    script = tmp_path / "grad.py"
    script.write_text(GRADIENT_SCRIPT)
    res = _torchrun(tmp_path, [str(script), str(tmp_path / "out")], timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    for rank in (0, 1):
        r = json.loads((tmp_path / f"out.{rank}.json").read_text())
        assert r["err"] < 1e-5, r  # |g_ddp - g| / |g|
        assert abs(r["loss"] - r["ref_loss"]) < 1e-5 * abs(r["ref_loss"]), r
        # the process group really ended in finish(), threads joined, before Python's exit
        assert r["gloo_threads"] == [], r


def test_torchrun_trains_walkback_end_to_end(tmp_path):
    settings = ["data.toy_size=256", "model.hidden=16,16", "method.T=3", "train.batch_size=50",
                "train.valid_examples=55", "sample.n=8", "sample.chains=2", "train.epochs=2"]
    run = tmp_path / "two"
    res = _torchrun(tmp_path, ["-m", "infusion", "train", "--preset", "spiral-walkback",
                               "--run-dir", str(run), "--device", "cpu", "--quiet"]
                    + [a for s in settings for a in ("--set", s)])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("epoch 1:") == 1  # rank 0 alone logs
    assert res.stdout.count("final checkpoint:") == 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert [r["epoch"] for r in rows] == [1, 2]
    # the last row's validation scores, recomputed here in one process from the weights
    # validated at epoch 2 (each process validates the whole validation set, same noise)
    from infusion import config, models
    from infusion.data import load_data
    from infusion.methods import build_method
    from infusion.training.validation import validate

    cfg = config.from_dict(json.loads((run / "config.json").read_text()))
    data, method = load_data(cfg, progress=False), build_method(cfg.method)
    model = method.build_model(data.shape, cfg.model)
    model.load_state_dict(models.load(run / "checkpoints" / "epoch-0002.pt")["model"])
    again = validate(model.train(), method, data, cfg)
    for key in ("valid_loss", "valid_bound_population"):
        assert rows[-1][key] == pytest.approx(again[key], rel=1e-6), key
