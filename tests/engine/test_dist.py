import json
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from gn_detect.engine import dist as gdist
from gn_detect.engine.checkpoint import Checkpointer

pytestmark = pytest.mark.dist

_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_not_under_torchrun_is_single_process(monkeypatch):
    for var in _ENV:
        monkeypatch.delenv(var, raising=False)
    info = gdist.init_distributed()
    assert (info.rank, info.world_size, info.local_rank) == (0, 1, 0)
    assert not gdist.is_dist_initialized()
    assert gdist.get_rank() == 0 and gdist.get_world_size() == 1 and gdist.is_main_process()
    assert gdist.all_gather_object({"x": 1}) == [{"x": 1}]


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = gdist.init_distributed(timeout=timedelta(seconds=30))
    result = {
        "info": [info.rank, info.world_size, info.local_rank, str(info.device)],
        "helpers": [gdist.get_rank(), gdist.get_world_size(), gdist.is_main_process()],
        "backend": torch.distributed.get_backend(),
        "gathered": gdist.all_gather_object({"rank": rank}),
    }
    # Checkpointer in a 2-rank world: rank 0 writes the file, rank 1 its RNG side file.
    torch.manual_seed(100 + rank)
    ck = Checkpointer(out_dir, nn.Linear(2, 2))
    path = ck.save("last", 3)
    torch.distributed.barrier()
    expected = torch.rand(2).tolist()
    torch.manual_seed(0)
    ck.load(os.path.join(out_dir, "checkpoints", "last.pth"))
    result["rng_resumed"] = torch.rand(2).tolist() == expected
    result["saved_by_me"] = path is not None
    result["files"] = sorted(os.listdir(os.path.join(out_dir, "checkpoints")))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    result["destroyed"] = not gdist.is_dist_initialized()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


@pytest.mark.slow
def test_two_process_gloo(tmp_path):
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=90)  # never hang the suite on a stuck rendezvous
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    assert [p.exitcode for p in procs] == [0, 0]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(results):
        assert res["info"] == [r, 2, r, "cpu"]
        assert res["helpers"] == [r, 2, r == 0]
        assert res["backend"] == "gloo"
        assert res["gathered"] == [{"rank": 0}, {"rank": 1}]
        assert res["rng_resumed"] is True  # each rank got its own RNG stream back
        assert res["saved_by_me"] is (r == 0)
        assert res["files"] == ["last.pth", "last.rank1.rng.pth"]
        assert res["destroyed"] is True
