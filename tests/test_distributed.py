"""Two CPU processes (gloo on the loopback interface): EnD on the global batch equals one process on the whole batch,
RR-ClArC trains under DDP, the distributed CAV equals the single-process one, and processes that disagree on
the configuration fail at start-up instead of hanging.

All scenarios run in one ``torch.multiprocessing.spawn`` of two workers (starting processes is the slow part);
each writes its results to JSON / safetensors files that the tests below read.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from hf_debias import EnDConfig, RRClArCConfig, compute_cav, get_debias_model
from hf_debias.distributed import gather

WORLD = 2
BATCH = 16


def batch():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, 16, 16, generator=generator)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    b = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0])
    return x, y, b


def fresh_model():
    torch.manual_seed(0)
    return timm.create_model("simple_convnet", num_classes=3)


def norm_free_model():
    """For exact comparisons: BatchNorm in training mode normalises with each process's own batch statistics
    (SyncBatchNorm needs CUDA), which would change the features themselves, not the penalty."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3),
                               torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(16, 3))


def end_gradients(model, x, y, b, config):
    wrapped = get_debias_model(model, config).train()
    out = wrapped(x, labels=y, bias_labels=b)
    out.loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, grads


def worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    out_dir = Path(folder)
    x, y, b = batch()
    local = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    results = {}

    # 1. EnD on the global batch, under DDP: the penalty and the gradients of one process on the whole batch.
    model = norm_free_model()
    wrapped = get_debias_model(model, EnDConfig(alpha=1.0, beta=1.0))
    ddp = torch.nn.parallel.DistributedDataParallel(wrapped.train())
    out = ddp(x[local], labels=y[local], bias_labels=b[local])
    out.loss.backward()
    results["end_penalty"] = out.penalty.item()
    if rank == 0:
        # parameters EnD froze (the head's bias under normalize_forward="train") have no gradient
        save_file({name: p.grad.contiguous() for name, p in model.named_parameters() if p.grad is not None},
                  str(out_dir / "grads.st"))

    # 2. A step where this process's own half has no same-bias pair (global and per-process penalty) completes.
    for global_batch in (True, False):
        no_pairs = slice(0, 2) if rank == 1 else local  # rank 1: two samples, different labels and bias
        model = fresh_model()
        ddp = torch.nn.parallel.DistributedDataParallel(
            get_debias_model(model, EnDConfig(global_batch=global_batch)).train())
        x2, y2, b2 = (x[no_pairs], torch.tensor([0, 1]), torch.tensor([0, 1])) if rank == 1 else (
            x[local], y[local], b[local])
        out = ddp(x2, labels=y2, bias_labels=b2)
        out.loss.backward()
        results[f"no_pair_step_{global_batch}"] = out.loss.item()

    # 3. RR-ClArC (double backward) under DDP: two optimiser steps, the replicas stay identical.
    model = fresh_model()
    cav = compute_cav(fresh_model(), "stages.2", (x, (y == 0).long()), validation_fraction=0, progress=False)
    ddp = torch.nn.parallel.DistributedDataParallel(
        get_debias_model(model, RRClArCConfig(cav=cav, lamb=10.0, freeze="none")).train())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        out = ddp(x[local], labels=y[local])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    results["rrclarc_penalty"] = out.penalty_terms["rrclarc_penalty"].item()
    save_file({"fc": model.fc.weight.detach().contiguous()}, str(out_dir / f"rrclarc_fc_{rank}.st"))

    # 4. The distributed CAV: data split over the processes, sums reduced, the same CAV everywhere.
    for method in ("signal", "svm"):
        cav = compute_cav(fresh_model(), "stages.2", (x, (b == 1).long()), method=method, validation_fraction=0,
                          progress=False)
        save_file({"cav": cav.vector}, str(out_dir / f"cav_{method}_{rank}.st"))
        results[f"cav_{method}_samples"] = cav.num_samples

    # 5. Processes that disagree on the configuration fail at start-up, on every process, with a clear message.
    try:
        get_debias_model(fresh_model(), EnDConfig(alpha=1.0 + rank))
        results["mismatch"] = None
    except ValueError as error:
        results["mismatch"] = str(error)

    # 6. Labels in another integer dtype on one process (int32 here, int64 there): EnD's global-batch gather and
    # the plain gather agree instead of aborting gloo, and the loss is the all-int64 one.
    model = norm_free_model()
    wrapped = get_debias_model(model, EnDConfig(alpha=1.0, beta=1.0)).train()
    dtype = torch.int64 if rank == 0 else torch.int32
    out = wrapped(x[local], labels=y[local].to(dtype), bias_labels=b[local].to(dtype))
    results["mixed_dtype_penalty"] = out.penalty.item()
    gathered = gather(b[local].to(torch.uint8 if rank == 0 else torch.int16))
    results["mixed_dtype_gather"] = [str(gathered.dtype), gathered.tolist()]

    (out_dir / f"results_{rank}.json").write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(function, folder: Path) -> None:
    """Run ``function(rank, port, folder)`` in WORLD fresh processes, which import this file by name."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(Path(__file__).parent) + (os.pathsep + old if old else "")
    try:
        try:
            torch.multiprocessing.spawn(getattr(sys.modules[__name__], function.__name__),
                                        args=(free_port(), str(folder)), nprocs=WORLD, join=True)
        except torch.multiprocessing.ProcessRaisedException as error:
            # The rendezvous port is picked free but released before the workers bind it; on a busy machine
            # another socket can take it in between. One retry on a fresh port; a real failure fails twice.
            if "Address already in use" not in str(error) and "Connection" not in str(error):
                raise
            torch.multiprocessing.spawn(getattr(sys.modules[__name__], function.__name__),
                                        args=(free_port(), str(folder)), nprocs=WORLD, join=True)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    spawn(worker, folder)
    return folder, [json.loads((folder / f"results_{rank}.json").read_text()) for rank in range(WORLD)]


def test_end_on_two_processes_equals_one_process_on_the_whole_batch(runs):
    folder, results = runs
    x, y, b = batch()
    out, expected = end_gradients(norm_free_model(), x, y, b, EnDConfig(alpha=1.0, beta=1.0))
    assert results[0]["end_penalty"] == pytest.approx(out.penalty.item(), abs=1e-5)
    assert results[1]["end_penalty"] == pytest.approx(out.penalty.item(), abs=1e-5)
    grads = load_file(str(folder / "grads.st"))
    assert set(grads) == set(expected)
    for name, grad in expected.items():
        assert torch.allclose(grads[name], grad, atol=1e-5), name
    # ...and differs from the per-process penalty, which is what a naive port would compute.
    half = EnDConfig(alpha=1.0, beta=1.0)
    local = get_debias_model(norm_free_model(), half).train()(x[:8], labels=y[:8], bias_labels=b[:8])
    assert abs(local.penalty.item() - out.penalty.item()) > 1e-3


def test_labels_of_different_integer_dtypes_on_each_process_agree(runs):
    _, results = runs
    # both processes computed the global penalty, equal to the one of the all-int64 run of scenario 1
    assert results[0]["mixed_dtype_penalty"] == pytest.approx(results[0]["end_penalty"], rel=1e-6)
    assert results[1]["mixed_dtype_penalty"] == pytest.approx(results[0]["end_penalty"], rel=1e-6)
    _, _, b = batch()
    for rank in range(WORLD):
        assert results[rank]["mixed_dtype_gather"] == ["torch.int64", b.tolist()]


def test_a_process_without_same_bias_pairs_completes_the_step(runs):
    _, results = runs
    for rank_results in results:
        for global_batch in (True, False):
            assert torch.isfinite(torch.tensor(rank_results[f"no_pair_step_{global_batch}"]))


def test_rrclarc_trains_under_ddp_and_the_replicas_stay_identical(runs):
    folder, results = runs
    assert all(r["rrclarc_penalty"] > 0 for r in results)
    fc = [load_file(str(folder / f"rrclarc_fc_{rank}.st"))["fc"] for rank in range(WORLD)]
    assert torch.equal(fc[0], fc[1])
    assert not torch.equal(fc[0], fresh_model().fc.weight)  # it trained


@pytest.mark.parametrize("method", ["signal", "svm"])
def test_distributed_cav_equals_the_single_process_cav(runs, method):
    folder, results = runs
    x, _, b = batch()
    single = compute_cav(fresh_model(), "stages.2", (x, (b == 1).long()), method=method, validation_fraction=0,
                         progress=False)
    for rank in range(WORLD):
        vector = load_file(str(folder / f"cav_{method}_{rank}.st"))["cav"]
        assert torch.allclose(vector, single.vector, atol=1e-6)
        assert results[rank][f"cav_{method}_samples"] == BATCH


def test_processes_that_disagree_fail_at_start_up_with_a_clear_message(runs):
    _, results = runs
    for rank_results in results:
        assert "processes disagree on the debias configuration" in rank_results["mismatch"]
        assert "[[0], [1]]" in rank_results["mismatch"]


def trainer_worker(rank: int, port: int, folder: str) -> None:
    """DebiasTrainer as torchrun starts it: the environment names the process; Accelerate sets up gloo."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    import datasets

    from hf_debias.trainer import DebiasTrainer, DebiasTrainingArguments

    x, y, b = batch()
    data = datasets.Dataset.from_dict({"pixel_values": x.numpy(), "labels": y.numpy(),
                                       "bias_labels": b.numpy()}).with_format("torch")
    args = DebiasTrainingArguments(output_dir=str(Path(folder) / "run"), per_device_train_batch_size=4, max_steps=2,
                                   logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
                                   debias="end", disable_tqdm=True, ddp_backend="gloo")
    trainer = DebiasTrainer(model=norm_free_model(), args=args, train_dataset=data)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    # RR-ClArC through the Trainer: the CAV is computed with the data split over both processes.
    cav = compute_cav(norm_free_model(), "3", (x, (b == 1).long()), validation_fraction=0, progress=False)
    if rank == 0:
        cav.save_pretrained(Path(folder) / "cav")
    torch.distributed.barrier()
    rr_args = DebiasTrainingArguments(output_dir=str(Path(folder) / "rr"), per_device_train_batch_size=4,
                                      max_steps=2, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                                      seed=0, debias="rrclarc", cav=str(Path(folder) / "cav"), freeze="none",
                                      rrclarc_lamb=10.0, disable_tqdm=True, ddp_backend="gloo")
    rr_trainer = DebiasTrainer(model=norm_free_model(), args=rr_args, train_dataset=data)
    rr_trainer.train()
    rr_logged = [entry for entry in rr_trainer.state.log_history if "loss" in entry]
    (Path(folder) / f"trainer_{rank}.json").write_text(json.dumps({
        "world_size": args.world_size, "logged": logged, "rr_logged": rr_logged,
        "fc": trainer.model.model[-1].weight.detach().flatten().tolist(),
        "rr_fc": rr_trainer.model.model[-1].weight.detach().flatten().tolist()}))
    # Leave together: a process that exits while its peer is still inside a collective aborts gloo (SIGABRT).
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_debias_trainer_runs_end_and_rrclarc_on_two_processes(tmp_path):
    spawn(trainer_worker, tmp_path)
    results = [json.loads((tmp_path / f"trainer_{rank}.json").read_text()) for rank in range(WORLD)]
    assert all(result["world_size"] == WORLD for result in results)
    assert results[0]["fc"] == results[1]["fc"]  # replicas in sync
    first = results[0]["logged"][0]
    assert {"ce_loss", "end_r_ortho", "end_r_par"} <= set(first) and first["end_r_ortho"] > 0
    assert results[0]["rr_fc"] == results[1]["rr_fc"]
    assert results[0]["rr_logged"][0]["rrclarc_penalty"] > 0
