"""FSDP on CPU processes: make accelerate shard when the user asked for FSDP.

accelerate turns a `fsdp_plugin` on only for process groups of accelerator devices (GPU, XPU, NPU, ...); on
CPU processes (`use_cpu=True` under `torchrun`, gloo) it keeps `MULTI_CPU` and silently trains with DDP. FSDP2
(`torch.distributed.fsdp.fully_shard`) itself runs on CPU tensors and gloo, so `SpaceTrainer` builds its
`Accelerator` inside `fsdp_on_cpu`, which lets accelerate take the FSDP branch. Nothing changes for GPU runs,
for runs without FSDP, or for one process. A GPU cluster needs none of this: `accelerate launch --config_file
examples/accelerate/fsdp.yaml ...`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def fsdp_on_cpu(args) -> Iterator[None]:
    """While the Trainer creates its Accelerator: when `args` asks for FSDP on CPU worker processes, present them
    as multi-device ones, so accelerate's state takes its FSDP branch; afterwards the process state reads FSDP, as
    it would on GPUs (accelerate's process and accelerator states share that field)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = PartialState()
    if not (getattr(args, "fsdp", None) and state.distributed_type == DistributedType.MULTI_CPU):
        yield
        return
    logger.info("FSDP on %d CPU processes: accelerate shards with FSDP (gloo) instead of falling back to DDP.",
                state.num_processes)
    state.distributed_type = DistributedType.MULTI_GPU
    try:
        yield
    finally:
        from accelerate.state import AcceleratorState

        sharded = AcceleratorState._shared_state.get("fsdp_plugin") is not None
        state.distributed_type = DistributedType.FSDP if sharded else DistributedType.MULTI_CPU
