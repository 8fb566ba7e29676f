"""DDP under torchrun: 2 CPU processes (gloo) keep identical weights, equal to 1 process with the
same global batch."""
import os
import subprocess
import sys
from pathlib import Path

import torch

from bsrn.config import dump_config, load_config
from bsrn.models import create_model
from bsrn.train import train

ROOT = Path(__file__).resolve().parents[1]
WORKER = """
import os, sys, torch
import torch.distributed as dist
from bsrn.config import load_config
from bsrn.train import train
calls, all_reduce = [], dist.all_reduce
dist.all_reduce = lambda *a, **k: calls.append(1) or all_reduce(*a, **k)  # DDP's own are in C++
res = train(load_config(sys.argv[1]))
torch.save(res["model"].state_dict(), os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
open(os.path.join(sys.argv[2], f"reduces{os.environ['RANK']}"), "w").write(str(len(calls)))
"""


def test_two_gloo_ranks_stay_identical(dataset, tmp_path):
    over = ["model.args={num_feat: 8, num_block: 1}", "data.patch_size=8", "data.batch_size=4",
            "data.loader=memory", "train.threads=1", "train.log_every=2", "run.progress=false",
            "run.tensorboard=false", "val.dataset=null", "data.limit=4", "train.iterations=5",
            f"data.train=[{dataset('T91')}]", f"data.cache_dir={tmp_path / 'cache'}"]
    cfg_file = tmp_path / "ddp.yaml"
    cfg_file.write_text(dump_config(load_config(ROOT / "configs" / "quick.yaml",
                                                over + [f"run.dir={tmp_path / 'ddp'}"])))
    (tmp_path / "worker.py").write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", str(tmp_path / "worker.py"), str(cfg_file),
                          str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    # the ranks agree on stopping at log steps (2 and 4), not with an all-reduce every step
    assert [(tmp_path / f"reduces{r}").read_text() for r in (0, 1)] == ["2", "2"]
    # the same config on one process sees the same global batches: the same weights (up to the
    # order of the gradient sum)
    single = train(load_config(ROOT / "configs" / "quick.yaml",
                               over + [f"run.dir={tmp_path / 'single'}"]))["model"].state_dict()
    torch.manual_seed(0)  # run.seed: train() builds the network right after seeding
    init = create_model("bsrn", scale=2, num_feat=8, num_block=1).state_dict()
    assert any(not torch.allclose(r0[k], init[k], atol=1e-6) for k in r0)  # training moved them
    for k in r0:
        torch.testing.assert_close(r0[k], single[k], atol=1e-5, rtol=1e-4)
