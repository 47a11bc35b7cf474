"""EnD under DDP on 2 processes: a training step with the penalty on the gathered global batch vs the
per-process penalty (``EnDConfig(global_batch=False)``), measured side by side in the same processes.

    python benchmarks/end_distributed.py            # 2 CPU processes (gloo), ~1 min
    python benchmarks/end_distributed.py --quick    # smoke run, used by the tests
    python benchmarks/end_distributed.py --device cuda --processes 2   # on a machine with 2 GPUs (nccl)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_arguments, header, write_json  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "end_distributed")
    parser.add_argument("--processes", type=int, default=2, help="number of processes")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (gloo) or cuda (nccl)")
    parser.add_argument("--model", default="resnet18", help="timm model, trained from scratch")
    parser.add_argument("--batch-size", type=int, default=64, help="per-process batch size")
    parser.add_argument("--image-size", type=int, default=64, help="input side")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round and mode")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.batch_size, args.image_size, args.rounds, args.steps = "simple_convnet", 16, 16, 1, 2
    return args


def worker(rank: int, port: int, args: argparse.Namespace, out_file: str) -> None:
    import timm

    from hf_debias import EnDConfig, get_debias_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, args.threads // args.processes))
    backend = "nccl" if args.device == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, rank=rank, world_size=args.processes)
    device = torch.device(f"cuda:{rank}" if args.device == "cuda" else "cpu")
    generator = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=generator).to(device)
    b = torch.randint(0, 10, (args.batch_size,), generator=generator).to(device)
    models = {}
    for mode, global_batch in (("gathered", True), ("per_process", False)):
        torch.manual_seed(0)
        model = get_debias_model(timm.create_model(args.model, num_classes=10),
                                 EnDConfig(alpha=1.0, beta=1.0, global_batch=global_batch)).to(device)
        ddp = torch.nn.parallel.DistributedDataParallel(model.train(), device_ids=[rank] if args.device == "cuda"
                                                        else None)
        models[mode] = (ddp, torch.optim.Adam(ddp.parameters(), lr=1e-4))
    times = {mode: [] for mode in models}
    for round_index in range(args.rounds + 1):
        for mode, (ddp, optimizer) in models.items():
            for _ in range(args.steps):
                if args.device == "cuda":
                    torch.cuda.synchronize()
                torch.distributed.barrier()
                start = time.perf_counter()
                loss = ddp(x, labels=y, bias_labels=b).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if args.device == "cuda":
                    torch.cuda.synchronize()
                if round_index > 0:  # round 0 warms up
                    times[mode].append(time.perf_counter() - start)
    if rank == 0:
        result = {f"{mode}_ms": 1000 * statistics.median(values) for mode, values in times.items()}
        result["ratio"] = result["gathered_ms"] / result["per_process_ms"]
        Path(out_file).write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def main(argv=None) -> dict:
    args = parse_args(argv)
    results = header(args)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out_file = str(args.output.with_suffix(".tmp.json"))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.multiprocessing.spawn(worker, args=(port, args, out_file), nprocs=args.processes, join=True)
    results["step_time"] = json.loads(Path(out_file).read_text())
    Path(out_file).unlink()
    step = results["step_time"]
    print(f"{args.processes} processes on {args.device}, {args.model}, batch {args.batch_size}/process at "
          f"{args.image_size}px: gathered EnD {step['gathered_ms']:.1f} ms vs per-process {step['per_process_ms']:.1f} "
          f"ms per step -> {step['ratio']:.3f}x")
    write_json(args.output, results)
    return results


if __name__ == "__main__":
    main()
