"""Tensor parallelism: which shard this process builds, the process group, and the collectives."""
from fastdeploy.distributed.communication import (min_over_ranks, tensor_model_parallel_all_gather,
                                                  tensor_model_parallel_all_reduce, tensor_model_parallel_broadcast)
from fastdeploy.distributed.parallel_state import (destroy_process_group, divide, free_port,
                                                   get_tensor_model_parallel_rank,
                                                   get_tensor_model_parallel_world_size, init_process_group,
                                                   require_no_process_group, tensor_parallel)

__all__ = ["destroy_process_group", "divide", "free_port", "get_tensor_model_parallel_rank",
           "get_tensor_model_parallel_world_size", "init_process_group", "min_over_ranks", "require_no_process_group",
           "tensor_model_parallel_all_gather", "tensor_model_parallel_all_reduce", "tensor_model_parallel_broadcast",
           "tensor_parallel"]
