"""This process's place under torchrun, for any program here that can run as several processes.

    process = Distributed.start()   # under `torchrun --nproc_per_node N`: one of N processes; else the only one
    ... process.rank, .local_rank, .world_size, .device, .main, process.barrier() ...
    process.close()

`start` reads torchrun's RANK, LOCAL_RANK and WORLD_SIZE (one process without them), picks the device
(the one given, else this process's GPU, cuda:LOCAL_RANK, when there is one, else the CPU) and, with
more than one process, joins the process group (nccl on CUDA, gloo on the CPU) unless the caller has
already joined it. `close` leaves the group only if `start` joined it, so code that starts within a
started program (eval.run embedding through eval.embed) shares its group and leaves it to the program.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0  # 0 .. world_size - 1, over every machine
    local_rank: int = 0  # on this machine: the GPU index
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owner: bool = False  # `start` joined the process group (and `close` leaves it)

    @classmethod
    def start(cls, device: Optional[Union[str, torch.device]] = None) -> "Distributed":
        """This process under torchrun (or alone), its device chosen and the process group joined."""
        try:
            rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
        except ValueError as e:
            raise ValueError(f"RANK, LOCAL_RANK and WORLD_SIZE must be integers (torchrun sets them): {e}") from None
        if not 0 <= rank < world_size:
            raise ValueError(f"RANK {rank} is not in 0 .. WORLD_SIZE - 1 = {world_size - 1}")
        if device is not None:
            chosen = torch.device(device)
        else:
            chosen = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        joined = world_size > 1 and not dist.is_initialized()
        if joined:
            dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
        return cls(rank, local_rank, world_size, chosen, joined)

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes what all of them computed."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owner and dist.is_initialized():
            dist.destroy_process_group()
